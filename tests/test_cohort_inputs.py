"""The slides of a cohort: what makes predict a cohort run, folders, globs, manifests, slide ids and shards."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from cohort_common import block_slide
from PIL import Image

from probmcl_med.errors import DataError
from probmcl_med.inference.cohort_inputs import CohortSlide, assign_ids, collect_slides, is_cohort, safe_id
from probmcl_med.inference.cohort_state import shard_slides


def touch(path: Path, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def ids_of(paths: list[Path]) -> dict[str, str]:
    slides = assign_ids([CohortSlide("", p) for p in paths])
    return {str(s.path): s.id for s in slides}


def test_ids_are_unique_safe_and_as_short_as_the_cohort_allows(tmp_path):
    paths = [tmp_path / "s1" / "x.tif", tmp_path / "s2" / "x.tif", tmp_path / "s2" / "x.svs",
             tmp_path / "s3" / "y.svs", tmp_path / "s3" / "Y.ndpi", tmp_path / "s4" / "scan (1) ü.svs",
             tmp_path / "s4" / "cohort.csv.svs", tmp_path / "s4" / "..hidden.svs"]  # fmt: skip
    ids = ids_of(paths)
    assert [ids[str(p)] for p in paths] == [
        "s1__x", "s2__x", "x_svs", "y_svs", "Y_ndpi", "scan_1_", "cohort.csv_svs", "hidden"
    ]  # fmt: skip
    assert len({i.lower() for i in ids.values()}) == len(paths)
    # a slide alone keeps its stem; a third namesake in another folder takes the parent too
    assert ids_of([tmp_path / "s1" / "x.tif"]) == {str(tmp_path / "s1" / "x.tif"): "x"}
    deep = ids_of([tmp_path / "p" / "a" / "x.tif", tmp_path / "q" / "a" / "x.tif"])
    assert sorted(deep.values()) == ["p__a__x", "q__a__x"]


def test_safe_id_bounds_the_length_and_keeps_long_names_apart():
    long_a, long_b = "a" * 300 + "1", "a" * 300 + "2"
    assert len(safe_id(long_a)) == 120 and safe_id(long_a) != safe_id(long_b)
    assert safe_id("../../etc") == "etc" and safe_id("") == "slide"


def test_what_makes_a_cohort(tmp_path):
    slides = tmp_path / "slides"
    block_slide(slides / "a.tif", mpp=0.5)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "p.png")
    assert is_cohort([slides]) and not is_cohort([images]) and not is_cohort([slides / "a.tif"])
    assert is_cohort([slides / "a.tif", slides / "a.tif"]) and is_cohort([tmp_path / "m.csv"])
    assert is_cohort([str(slides / "*.tif")]) and not is_cohort([images / "p.png"])
    assert not is_cohort([images / "p.png", images / "p.png"])  # several images: predicted as images
    assert is_cohort([images / "p.png", slides / "a.tif"])  # the image fails as a slide, with its reason


def test_folders_globs_and_duplicates(tmp_path):
    block_slide(tmp_path / "f" / "a.tif", mpp=0.5)
    block_slide(tmp_path / "f" / "sub" / "b.tif", mpp=0.5)
    touch(tmp_path / "f" / "c.svs")  # an unreadable slide is listed; predicting it fails later
    (tmp_path / "f" / "d.mrxs.data").mkdir()  # folders are passed over
    slides = collect_slides([tmp_path / "f", str(tmp_path / "f" / "**" / "*.tif")])
    assert [(s.id, s.path.name) for s in slides] == [("a", "a.tif"), ("c", "c.svs"), ("b", "b.tif")]
    with pytest.raises(DataError, match=r"matches no file"):
        collect_slides([str(tmp_path / "f" / "*.ndpi")])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / "p.png")
    with pytest.raises(DataError, match=r"holds 2 slide\(s\) and 1 other image\(s\)"):
        collect_slides([tmp_path / "f"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no slides"):
        collect_slides([tmp_path / "empty"])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_manifest_columns(tmp_path):
    manifest = write(tmp_path / "m" / "list.csv",
                     "patient,slide,slide_mpp,mask,site\nP1,../s/a.svs,0.25,masks/a.png,x\nP2,/abs/b.svs,,,y\n")  # fmt: skip
    a, b = collect_slides([manifest])
    assert (a.id, a.path, a.slide_mpp, a.mask) == ("a", tmp_path / "m" / ".." / "s" / "a.svs", 0.25,
                                                   tmp_path / "m" / "masks" / "a.png")  # fmt: skip
    assert (b.id, b.path, b.slide_mpp, b.mask) == ("b", Path("/abs/b.svs"), None, None)
    assert a.extra == {"patient": "P1", "site": "x"} and a.source == f"{manifest}, row 0 (line 2)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slide,slide_mmp\na.svs,0.5\n", r"column 'slide_mmp' is not one predict reads; did you mean 'slide_mpp'"),
        ("slide,slide_mpp\na.svs,0.5\nb.svs,-1\n", r"row 1 \(line 3\), column 'slide_mpp': '-1' is not a positive"),
        ("slide,slide_mpp\na.svs,abc\n", r"'abc' is not a positive number"),
        ("slide\na.svs\n./a.svs\n", r"row 1 \(line 3\): slide .*a.svs is already listed in row 0"),
        ("slide\n\n", r"lists no slides"),
        ('slide\n""\n', r"row 0 \(line 2\): the 'slide' cell is empty"),
        ("image,label\na.svs,1\n", r"no slide column"),
        ("slide,id\na.svs,A\nb.svs,a\n", r"the id 'a' is also .*row 0 \(line 2\)'s; make ids unique"),
        ("slide,id\na.svs,../x\n", r"'../x' cannot name a folder"),
        ("slide,id\na.svs,cohort.csv\n", r"'cohort.csv' cannot name a folder"),
    ],
)
def test_manifest_refusals_name_the_file_and_row(tmp_path, text, message):
    manifest = write(tmp_path / "m.csv", text)
    with pytest.raises(DataError, match=message) as info:
        collect_slides([manifest])
    assert str(manifest) in str(info.value) and "\n" not in str(info.value)


def test_given_ids_are_kept_and_made_ids_step_around_them(tmp_path):
    manifest = write(tmp_path / "m.csv", "slide,id\nq/x.svs,x\n")
    slides = collect_slides([manifest, tmp_path / "r" / "x.svs"])
    assert [s.id for s in slides] == ["x", "x_svs"]


def greedy_makespan_bound(sizes: list[int], ranks: int) -> float:
    """Graham's bound for longest-processing-time-first: at most (4/3 - 1/(3m)) of the best split's largest load."""
    best = min(
        max(sum(s for s, r in zip(sizes, owner, strict=True) if r == k) for k in range(ranks))
        for owner in itertools.product(range(ranks), repeat=len(sizes))
    )
    return (4 / 3 - 1 / (3 * ranks)) * best


@pytest.mark.parametrize("ranks", [2, 3])
def test_shards_cover_every_slide_once_in_order_and_balance_bytes(tmp_path, ranks):
    rng = np.random.default_rng(ranks)
    sizes = [int(v) for v in rng.integers(1, 5000, 8)]
    slides = [CohortSlide(f"s{i}", touch(tmp_path / f"s{i}.svs", n)) for i, n in enumerate(sizes)]
    shards = [shard_slides(slides, r, ranks) for r in range(ranks)]
    flat = [s.id for shard in shards for s in shard]
    assert sorted(flat) == sorted(s.id for s in slides)
    for shard in shards:
        assert [s.id for s in shard] == sorted((s.id for s in shard), key=lambda i: int(i[1:]))
    loads = [sum(sizes[int(s.id[1:])] for s in shard) for shard in shards]
    assert max(loads) <= greedy_makespan_bound(sizes, ranks) + 1e-9
    assert shard_slides(slides, 0, 1) == slides


@pytest.mark.parametrize(("cores", "local", "expected"), [(16, "1", 15), (64, "1", 16), (16, "4", 3), (1, "1", 1)])
def test_default_workers_feed_a_gpu_from_every_core_but_one(monkeypatch, cores, local, expected):
    import torch

    import probmcl_med.threads
    from probmcl_med.inference.inputs import default_workers

    monkeypatch.setattr(probmcl_med.threads, "available_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert default_workers(torch.device("cuda", 0)) == expected
    assert default_workers(torch.device("cpu")) == 0


def test_a_dead_background_writer_hands_its_write_back_to_this_process(tmp_path):
    from probmcl_med.inference.cohort import SlideWrite, SlideWriter
    from probmcl_med.inference.predict import Predictions

    def job(name: str) -> SlideWrite:
        predictions = Predictions("images", [{"image": "x.png"}], np.array([[0.25]]), np.array([0.5]), ["c"])
        record = {"summary": {"status": "predicted"}}
        return SlideWrite(CohortSlide(name, tmp_path / f"{name}.svs"), tmp_path / name, predictions, {}, record, 0.0)

    writer = SlideWriter(background=True)
    try:
        assert writer.submit(job("one")) == []  # pending in the spawned process, which is still importing
        for process in list(writer._pool._processes.values()):
            process.kill()
        done = writer.submit(job("two"))  # the dead process's write is done here, and "two" after it
        assert [(j.slide.id, type(seconds)) for j, seconds in done] == [("one", float), ("two", float)]
        assert writer.drain() == [] and writer._pool is None  # the dead pool was let go
    finally:
        writer.close()
    for name in ("one", "two"):
        assert (tmp_path / name / "predictions.csv").read_text() == "image,c\nx.png,0.25\n"
