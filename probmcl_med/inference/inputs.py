"""What a model is run on: input kinds (a folder of images, an image, a whole slide), the items and their loader.

A file is a slide when OpenSlide recognises its format (``openslide.OpenSlide.detect_format``, which tells a tiled
pyramidal TIFF from a plain TIFF image) or when its extension only ever names a slide (``.svs``, ``.ndpi``,
``.mrxs``, ...: then OpenSlide is asked to open it and a file it cannot read is a one-line :class:`DataError`).
A plain TIFF above ``--tile-above`` megapixels is a slide too (read piece by piece). Every input goes through the
bundle's deterministic eval transform: its stain reference, image size and stored mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openslide
import torch
from torch.utils.data import DataLoader, Dataset

from probmcl_med.bundle import ModelBundle
from probmcl_med.data.base import find_data_error, make_loader
from probmcl_med.data.imageio import IMAGE_SUFFIXES, image_files, tiff_levels
from probmcl_med.data.plaintiff import image_dimensions
from probmcl_med.data.transforms import build_eval_transform
from probmcl_med.errors import DataError
from probmcl_med.threads import auto_threads, configure_threads

LARGE_IMAGE_PIXELS = 25_000_000
"""A plain image above this many pixels (5000 x 5000) is predicted like a slide, tiled on tissue (``--tile-above``)."""

SLIDE_ONLY_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".svslide", ".bif")
"""Extensions that only ever name whole slides (a ``.tif`` may be either; OpenSlide's format detection decides)."""


def is_slide(path: str | Path) -> bool:
    """True when ``path`` is a whole slide: OpenSlide detects its format, its extension only names slides, or it is a
    TIFF pyramid of several levels (SubIFDs, OME-TIFF)."""
    path = Path(path)
    if path.suffix.lower() in SLIDE_ONLY_SUFFIXES:
        return True
    try:
        if openslide.OpenSlide.detect_format(str(path)) is not None:
            return True
    except Exception:  # an unreadable file is not a slide; the image reader reports it
        return False
    return path.suffix.lower() in (".tif", ".tiff") and tiff_levels(path) > 1  # a stripped SubIFD/OME pyramid


def input_kind(path: str | Path, large_pixels: int = LARGE_IMAGE_PIXELS) -> str:
    """``"folder"``, ``"slide"`` or ``"image"`` for an existing input path.

    A plain TIFF image larger than ``large_pixels`` (a region exported at full resolution) is a ``"slide"``: it is
    tiled on tissue and read strip by strip (:class:`~probmcl_med.data.plaintiff.PlainTiff`), never decoded whole.

    Raises:
        DataError: the path does not exist, or it is a non-TIFF image above ``large_pixels`` (it would be decoded
            whole).
    """
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise DataError(f"input {path} does not exist; give an image, a folder of images or a whole slide")
    if is_slide(path):
        return "slide"
    size = image_dimensions(path)
    if size is not None and size[0] * size[1] > large_pixels:
        if path.suffix.lower() in (".tif", ".tiff"):
            return "slide"
        raise DataError(
            f"image {path} is {size[0]}x{size[1]} pixels, more than predict decodes at once "
            f"({large_pixels / 1e6:g} Mpx); save it as a TIFF, which is tiled and read piece by piece like a slide"
        )
    return "image"


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (not its subfolders), sorted by name.

    Raises:
        DataError: the folder holds no file with an image extension (:data:`IMAGE_SUFFIXES`).
    """
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise DataError(
            f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images, one image "
            "or a slide"
        )
    return files


class ItemDataset(Dataset):
    """Items ``{"image": path | slide location}`` through a transform; each output also carries its ``index``.

    With ``skip_bad`` an item that cannot be read is returned as None (the loader's collate drops it, so its index
    is missing from the outputs; :meth:`error_of` says why) instead of raising its one-line :class:`DataError`.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        skip_bad: bool = False,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> dict[str, Any]:
        try:
            return dict(self.transform(dict(self.items[index])))
        except Exception as exc:  # MONAI's Compose re-raises a reader's DataError as a RuntimeError
            err = find_data_error(exc)
            if err is None:
                raise
            raise DataError(str(err)) from None

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            out = self._load(index)
        except DataError as err:
            if self.skip_bad:
                return None
            raise DataError(f"{err}; pass --skip-bad to predict the others") from None
        out["index"] = index
        return out

    def error_of(self, index: int) -> str:
        """Why item ``index`` cannot be read (read again here, in this process: a worker's message stays there)."""
        try:
            self._load(index)
        except DataError as err:
            return str(err)
        return "unreadable when it was predicted, readable now"


def eval_transform(bundle: ModelBundle) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The deterministic transform the bundle's model expects: its stain reference, image size and mean/std."""
    return build_eval_transform(bundle.image_size, bundle.mean, bundle.std, bundle.stain_reference)


MAX_DEFAULT_WORKERS = 16


def default_workers(device: torch.device) -> int:
    """Loader workers when none are asked for: 0 on the CPU, where the model needs the cores the readers would take;
    on a GPU this process's share of the cores but one (at most :data:`MAX_DEFAULT_WORKERS`), because a GPU runs
    the model far faster than one process reads and resizes patches (README, "Cohorts of slides": the arithmetic)."""
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_DEFAULT_WORKERS, auto_threads(0, capped=False) - 1))


def prediction_batches(dataset: Dataset, batch_size: int, workers: int | None, device: torch.device) -> DataLoader:
    """The data layer's loader over ``dataset``, in order, for a prediction in this process, with ``workers`` loader
    processes (None: :func:`default_workers`); on the CPU, torch's threads sized to the cores the ``workers`` leave
    free first (:mod:`probmcl_med.threads`)."""
    if workers is None:
        workers = default_workers(device)
    if device.type == "cpu":
        configure_threads(None, workers)
    return make_loader(dataset, batch_size, workers=workers, device=device)
