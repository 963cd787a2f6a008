"""Which dataset and where it lives: the checks the command line makes before it imports torch, MONAI and timm.

:func:`require_named_data`: outside ``make demo`` a command names its data (``--dataset``, ``--config`` or
``--set dataset.name=``); the demo set is never used silently (issue 23.6).

:func:`check_root` is what the loaders call; :func:`preflight_root` is the same check made by the command line before
it imports torch, MONAI and timm, so ``train --dataset adp`` without ``--root`` is refused in about a second instead
of after the imports (issue 23.7, ``benchmarks/bench_refusal.py``). Both say the same words.
"""

from __future__ import annotations

from pathlib import Path

from probmcl_med.errors import ConfigError, DataError

ADP_RELEASE_FOLDER = "ADP V1.0 Release"
ADP_RELEASE_CSV = "ADP_EncodedLabels_Release1_Flat.csv"
ADP_IMAGES_DIR = "img_res_1um_bicubic"
ADP_ABOUT = (
    "ADP is the Atlas of Digital Pathology (Hosseini et al., CVPR 2019): 17,668 H&E patches from 100 slides with up "
    "to 57 hierarchical tissue types; it is given on request through the form on its project page, "
    "http://www.dsp.utoronto.ca/projects/ADP/ ; unpack it and give --root the folder that holds "
    f"'{ADP_RELEASE_FOLDER}/' ({ADP_RELEASE_CSV} and {ADP_IMAGES_DIR}/; README, 'The datasets')"
)
"""What ADP is, where to request it and what ``--root`` must hold: every "no ADP here" message ends with it."""

NEEDS_ROOT: dict[str, str] = {"csv": "", "adp": ADP_ABOUT, "coco": "", "slides": ""}
"""The built-in datasets that cannot run without a folder, each with what its "no folder" message adds (the demo
set has a default folder; a plugin dataset checks its own)."""


def check_root(root: str | Path | None, dataset: str) -> Path:
    """The dataset folder as a Path; a missing folder is a DataError saying how to set it (and, for ADP, what ADP
    is and where to request it: :data:`ADP_ABOUT`)."""
    about = NEEDS_ROOT.get(dataset, "")
    tail = f". {about}" if about else ""
    if root is None:
        raise DataError(f"dataset '{dataset}' needs a folder: set dataset.root (or --root PATH){tail}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"dataset folder {path} does not exist; set dataset.root (or --root PATH) to the {dataset} folder{tail}"
        )
    return path


def preflight_root(dataset: str, root: str | Path | None) -> None:
    """Refuse a built-in folder-backed ``dataset`` (:data:`NEEDS_ROOT`) whose ``root`` is missing, before any heavy
    import; any other dataset passes (its loader checks it)."""
    if dataset in NEEDS_ROOT:
        check_root(root, dataset)


def require_named_data(command: str, dataset: str | None, config: Path | None, overrides: list[str]) -> None:
    """Refuse ``command`` (``train``, ``data check``) when nothing names the data: no ``--dataset``, no ``--config``
    and no ``--set dataset.name=`` in ``overrides``. The message says how to name it, and how to ask for the demo."""
    if dataset is not None or config is not None:
        return
    if any(item.split("=", 1)[0].strip() == "dataset.name" for item in overrides):
        return
    raise ConfigError(
        f"{command}: name the data with --dataset NAME (demo, csv, adp, coco, slides or a plugin's; with --root "
        f"FOLDER) or --config FILE, e.g. probmcl-med {command} --dataset csv --root ~/patches; "
        f"probmcl-med {command} --dataset demo uses the bundled demo set"
    )
