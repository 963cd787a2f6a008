"""The grid of a sweep: ``KEY=V1,V2`` options, their Cartesian product, and one run per point and seed.

:func:`parse_grid` reads ``KEY=V1,V2,...`` (commas inside ``[...]``/``{...}`` do not split: ``[32,16]`` is one value);
:func:`grid_points` takes the Cartesian product (first ``--grid`` outermost) and :func:`expand_grid` every point with
every seed (innermost). A grid point is an ordered tuple of ``(key, value)`` overrides; any list of points works too
(``benchmarks/evidence`` passes hand-made arms).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from probmcl_med.errors import ConfigError

Point = tuple[tuple[str, str], ...]
PointSets = Callable[[Point], list[str]]


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: a grid point and a seed."""

    point: Point
    seed: int

    @property
    def point_name(self) -> str:
        """``key=value+key=value`` with characters unsafe in file names replaced by ``_`` (``base`` when empty)."""
        if not self.point:
            return "base"
        return "+".join(f"{k}={safe_name(v)}" for k, v in self.point)

    @property
    def name(self) -> str:
        """The run folder's name: ``<point name>__seed<S>``."""
        return f"{self.point_name}__seed{self.seed}"

    def overrides(self, output_dir: Path, point_sets: PointSets | None = None) -> list[str]:
        """``--set`` strings of this run: the point's overrides (or ``point_sets(point)``), the seed, the folder."""
        sets = point_sets(self.point) if point_sets is not None else [f"{k}={v}" for k, v in self.point]
        return [*sets, f"seed={self.seed}", f"output_dir={output_dir}"]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._,=-]", "_", str(text)).strip("_") or "_"


def split_values(text: str) -> list[str]:
    """``a,b,[1,2]`` -> ``["a", "b", "[1,2]"]``: commas split only outside brackets and braces."""
    values, depth, current = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    values.append("".join(current).strip())
    return values


def parse_grid(texts: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["contrastive.tau=0.1,0.2", ...]`` -> ``[("contrastive.tau", ["0.1", "0.2"]), ...]`` (order kept).

    Raises:
        ConfigError: no ``=``, an empty key or value, a key given twice.
    """
    grid: list[tuple[str, list[str]]] = []
    for text in texts:
        if "=" not in text:
            raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid contrastive.tau=0.1,0.2,0.5")
        key, raw = (part.strip() for part in text.split("=", 1))
        values = split_values(raw)
        if not key or any(not v for v in values):
            raise ConfigError(f"--grid {text!r}: empty key or value; write e.g. contrastive.tau=0.1,0.2,0.5")
        if key in [k for k, _ in grid]:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {text!r}: a value is repeated; list each value once")
        grid.append((key, values))
    return grid


def grid_points(grid: Sequence[tuple[str, Sequence[str]]]) -> list[Point]:
    """The Cartesian product of the grid, first key outermost; ``[()]`` for an empty grid (one point, no override)."""
    keys = [k for k, _ in grid]
    return [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))]


def expand_grid(points: Sequence[Point], seeds: int | Sequence[int]) -> list[SweepRun]:
    """Every point x every seed (seeds innermost); ``seeds`` an int ``n`` means seeds ``0 .. n-1``."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("--seeds must be at least 1")
    return [SweepRun(tuple(point), seed) for point in points for seed in seed_list]


def swept_keys(points: Sequence[Point]) -> list[str]:
    """The keys the points set, in first-seen order."""
    keys: list[str] = []
    for point in points:
        keys.extend(k for k, _ in point if k not in keys)
    return keys
