"""Write a generated multi-label dataset as a folder the ``csv`` dataset reads: ``images/<split>/*.png``,
``labels.csv`` (image, one 0/1 column per class, split) and ``meta.json``, atomically (temporary folder, rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

Split = tuple[np.ndarray, np.ndarray]
"""(count, S, S, 3) uint8 images and (count, C) 0/1 labels."""


def ensure_csv_folder(
    folder: Path, class_names: list[str], make_split: Callable[[str, int], Split], sizes: dict[str, int], meta: dict
) -> Path:
    """``folder`` with every split that ``make_split(split, count)`` draws, written once; returns ``folder``.

    ``meta.json`` gets ``meta`` plus, per split, the number of images, the labels per image and the positives per
    class. A folder that already holds ``labels.csv`` is returned as it is.
    """
    if (folder / "labels.csv").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        lines = ["image," + ",".join(class_names) + ",split"]
        stats = {}
        for split, count in sizes.items():
            images, labels = make_split(split, count)
            (tmp / "images" / split).mkdir(parents=True)
            for i in range(count):
                rel = f"images/{split}/{i:05d}.png"
                Image.fromarray(images[i]).save(tmp / rel)
                lines.append(f"{rel}," + ",".join(str(int(v)) for v in labels[i]) + f",{split}")
            stats[split] = {
                "images": count,
                "labels_per_image": float(labels.sum(1).mean()),
                "positives": dict(zip(class_names, labels.sum(0).astype(int).tolist(), strict=True)),
            }
        (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
        (tmp / "meta.json").write_text(json.dumps({**meta, "splits": stats}, indent=2) + "\n")
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "labels.csv").is_file():  # not "another process finished first"
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
