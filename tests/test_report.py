"""Report folder, score/target file loading, terminal rendering and `evaluate --scores/--targets`."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from sklearn.metrics import average_precision_score, precision_score, recall_score

from probmcl_med.cli.evaluate_files import evaluate_files
from probmcl_med.errors import DataError
from probmcl_med.evaluation import (
    load_scores_targets,
    multilabel_metrics,
    render_per_class_table,
    render_summary,
    write_report,
)
from probmcl_med.evaluation import plots as plots_module
from probmcl_med.evaluation import report as report_module

NAMES = ["epithelium", "stroma", "lymphocytes", "necrosis", "adipose", "muscle"]
FILES = (
    "metrics.json",
    "per_class.csv",
    "scores.npz",
    "report.md",
    "report.html",
    *(f for f, _ in report_module.FIGURES),
)


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(NAMES))) < 0.25).astype(np.float64)
    targets[:, 3] = 0  # necrosis: no positive in this split
    strength = np.array([0.5, 0.1, 0.45, 0.3, 0.05, 0.35])  # stroma and adipose come out under an 0.8 recall floor
    scores = np.clip(rng.random(targets.shape) * 0.6 + targets * strength, 0, 1)
    return scores, targets


@pytest.fixture
def fast_plots(monkeypatch):
    """Replace the three figures by a tiny valid PNG (for tests about files, not pictures)."""

    def tiny_png(*args, **kwargs) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (4, 3), "red").save(buf, format="PNG")
        return buf.getvalue()

    for name in (
        "recall_precision_bars",
        "precision_recall_grid",
        "reliability_diagram",
        "training_curves",
        "cooccurrence_heatmaps",
    ):
        monkeypatch.setattr(plots_module, name, tiny_png)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.floor_rows: list[list[str]] = []
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._floor = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "tr":
            self._row, self._floor = [], "floor" in (a.get("class") or "").split()
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            if self._floor:
                self.floor_rows.append(self._row)
            self._row = None


def _sklearn_recall(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return 100 * recall_score(targets, scores >= 0.5, average=None, zero_division=0)


def test_report_folder_complete_and_consistent(tmp_path):
    scores, targets = _data()
    metrics = multilabel_metrics(scores, targets, class_names=NAMES)
    meta = {"checkpoint": "runs/adp/stage2.pt", "dataset": "adp", "split": "test", "date": "2026-01-02"}
    out = write_report(tmp_path / "rep", metrics, scores, targets, NAMES, meta, recall_floor=0.8)
    for name in FILES:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary folder left beside it

    page = (out / "report.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert len(parser.images) == len(report_module.FIGURES)  # no training log, no gallery
    for src in parser.images:
        if src.startswith("data:"):
            header, data = src.split(",", 1)
            assert header == "data:image/png;base64"
            image = Image.open(io.BytesIO(base64.b64decode(data)))
            image.verify()
            assert image.format == "PNG"
        else:
            assert (out / src).is_file()
    for href in parser.links:
        assert (out / href).is_file()
    for png in (f for f, _ in report_module.FIGURES):
        assert Image.open(out / png).format == "PNG"
    for needle in ("runs/adp/stage2.pt", "adp", "test", "2026-01-02", "score &gt;= threshold"):
        assert needle in page

    # the classes marked under the floor are exactly those whose sklearn recall is under 80 %
    recall = _sklearn_recall(scores, targets)
    expected_under = {NAMES[c] for c in range(len(NAMES)) if targets[:, c].sum() > 0 and recall[c] < 80}
    assert expected_under == {"stroma", "adipose"}
    assert {row[1] for row in parser.floor_rows} == expected_under
    table = [row for row in parser.rows if len(row) == len(report_module.PER_CLASS_COLUMNS) and row[1] in NAMES]
    assert len(table) == len(NAMES)
    shown = [float(row[2].split()[0]) for row in table if row[2] != "n/a"]
    assert shown == sorted(shown) and table[-1][1] == "necrosis"  # recall ascending, the class without positives last

    document = json.loads((out / "metrics.json").read_text())
    plain = json.loads(json.dumps(metrics))
    assert {k: document[k] for k in metrics if k not in ("per_class", "summary")} == {
        k: v for k, v in plain.items() if k not in ("per_class", "summary")
    }
    for written, computed in zip(document["per_class"], plain["per_class"], strict=True):
        assert {k: written[k] for k in computed} == computed
    assert {k: document["summary"][k] for k in plain["summary"]} == plain["summary"]
    assert document["meta"] == meta and document["recall_floor"] == 0.8
    evaluated = [c for c in range(len(NAMES)) if targets[:, c].sum() > 0]
    ap = [average_precision_score(targets[:, c], scores[:, c]) for c in evaluated]
    assert document["summary"]["mAP"] == pytest.approx(100 * np.mean(ap), abs=1e-10)

    with (out / "per_class.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == NAMES
    for c, row in enumerate(rows):
        if c == 3:
            assert row["recall"] == "" and row["ap"] == ""
        else:
            assert float(row["recall"]) == pytest.approx(recall[c], abs=1e-9)
        assert int(row["below_floor"]) == (NAMES[c] in expected_under)
    precision = 100 * precision_score(targets, scores >= 0.5, average=None, zero_division=0)
    np.testing.assert_allclose([float(r["precision"]) for r in rows], precision, atol=1e-9)

    with np.load(out / "scores.npz") as npz:
        np.testing.assert_array_equal(npz["scores"], scores)
        np.testing.assert_array_equal(npz["targets"], targets)
        assert npz["class_names"].tolist() == NAMES

    md = (out / "report.md").read_text()
    assert "**stroma**" in md and "**adipose**" in md and "runs/adp/stage2.pt" in md
    for png in (f for f, _ in report_module.FIGURES):
        assert f"]({png})" in md


def test_plot_failure_leaves_no_folder_and_keeps_old_report(tmp_path, monkeypatch, fast_plots):
    scores, targets = _data()
    metrics = multilabel_metrics(scores, targets, class_names=NAMES)

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots_module, "cooccurrence_heatmaps", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {})
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(plots_module, "cooccurrence_heatmaps", plots_module.recall_precision_bars)  # the tiny PNG
    old = write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {"split": "old"}, recall_floor=0.5)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(plots_module, "precision_recall_grid", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {"split": "new"})
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_failure_while_writing_keeps_old_report(tmp_path, monkeypatch, fast_plots):
    scores, targets = _data()
    metrics = multilabel_metrics(scores, targets, class_names=NAMES)
    old = write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {"split": "old"})
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "to_html", boom)  # fails after metrics.json, csv, npz, PNGs, md are written
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {"split": "new"})
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_replaces_earlier_report_but_not_other_folders(tmp_path, fast_plots):
    scores, targets = _data()
    metrics = multilabel_metrics(scores, targets, class_names=NAMES)
    write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {"split": "first"})
    write_report(tmp_path / "rep", metrics, scores, targets, NAMES, {"split": "second"})
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["meta"]["split"] == "second"

    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("do not delete")
    with pytest.raises(DataError, match="did not write there") as err:
        write_report(precious, metrics, scores, targets, NAMES, {})
    assert str(precious) in str(err.value)
    assert (precious / "chapter1.tex").read_text() == "do not delete"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_report(a_file, metrics, scores, targets, NAMES, {})
    with pytest.raises(DataError, match="fraction"):
        write_report(tmp_path / "r2", metrics, scores, targets, NAMES, {}, recall_floor=80)


def test_render_sorted_by_recall_with_floor_in_red():
    scores, targets = _data()
    metrics = multilabel_metrics(scores, targets, class_names=NAMES)
    console = Console(record=True, width=200, force_terminal=True, color_system="standard")
    render_summary(metrics, 0.8, console)
    render_per_class_table(metrics, 0.8, console)
    plain = console.export_text(styles=False, clear=False)
    styled = console.export_text(styles=True)
    recall = _sklearn_recall(scores, targets)
    order = [NAMES[c] for c in np.argsort(recall) if targets[:, c].sum() > 0] + ["necrosis"]
    positions = [plain.rindex(f"│ {name}") for name in order]
    assert positions == sorted(positions)
    assert "Under the recall floor of 80 %" in plain and "necrosis" in plain
    pairs = list(zip(plain.splitlines(), styled.splitlines(), strict=True))
    table_lines = [(p, s) for p, s in pairs if "│" in p and any(f"│ {n} " in p for n in NAMES)]
    assert len(table_lines) == len(NAMES)
    for line, styled_line in table_lines:
        is_red = "\x1b[1;31m" in styled_line
        assert is_red == any(f"│ {n} " in line for n in ("stroma", "adipose")), line


# ---------------------------------------------------------------------------------------------------------- io


def _write_csv(path: Path, header: list[str] | None, rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def test_load_csv_with_id_column_and_npy(tmp_path):
    scores, targets = _data(n=20)
    ids = [f"patch_{i}.png" for i in range(20)]
    s = _write_csv(tmp_path / "s.csv", ["image", *NAMES], [[i, *r] for i, r in zip(ids, scores.tolist(), strict=True)])
    t = _write_csv(
        tmp_path / "t.csv", ["image", *NAMES], [[i, *r] for i, r in zip(ids, targets.astype(int), strict=True)]
    )
    got_s, got_t, names = load_scores_targets(s, t)
    np.testing.assert_array_equal(got_s, scores)  # csv writes repr(float): exact round trip
    np.testing.assert_array_equal(got_t, targets)
    assert names == NAMES

    np.save(tmp_path / "t.npy", targets.astype(np.uint8))
    got_s, got_t, names = load_scores_targets(s, tmp_path / "t.npy")
    np.testing.assert_array_equal(got_t, targets)
    assert names == NAMES
    np.save(tmp_path / "s.npy", scores.astype(np.float32))
    got_s, _, names = load_scores_targets(tmp_path / "s.npy", tmp_path / "t.npy")
    np.testing.assert_array_equal(got_s, scores.astype(np.float32).astype(np.float64))
    assert names == [f"class_{i}" for i in range(len(NAMES))]
    headerless = _write_csv(tmp_path / "h.csv", None, scores.tolist())
    assert load_scores_targets(headerless, tmp_path / "t.npy")[2] == names


def _bad_case(tmp_path: Path, case: str) -> tuple[Path, Path, Path, str]:
    """Build one bad input; return (scores file, targets file, the file the error must name, a regex it must hold)."""
    scores, targets = _data(n=5)
    names = NAMES
    good_s = _write_csv(tmp_path / "scores.csv", names, scores.tolist())
    good_t = _write_csv(tmp_path / "targets.csv", names, targets.astype(int).tolist())
    if case == "missing":
        return tmp_path / "nope.csv", good_t, tmp_path / "nope.csv", "not found"
    if case == "extension":
        bad = tmp_path / "scores.txt"
        bad.write_text("a,b\n")
        return bad, good_t, bad, "unsupported extension"
    if case == "nan":
        rows = scores.tolist()
        rows[2][4] = float("nan")
        bad = _write_csv(tmp_path / "nan.csv", names, rows)
        return bad, good_t, bad, "line 4, column 'adipose'.*finite"
    if case == "inf":
        rows = scores.tolist()
        rows[0][1] = "inf"
        bad = _write_csv(tmp_path / "inf.csv", names, rows)
        return bad, good_t, bad, "line 2, column 'stroma'"
    if case == "logits":
        rows = scores.tolist()
        rows[1][0] = -2.5
        bad = _write_csv(tmp_path / "logits.csv", names, rows)
        return bad, good_t, bad, "line 3, column 'epithelium'.*sigmoid"
    if case == "target_value":
        rows = targets.astype(int).tolist()
        rows[3][2] = -1
        bad = _write_csv(tmp_path / "bad_t.csv", names, rows)
        return good_s, bad, bad, "-1 at line 5, column 'lymphocytes'.*0 or 1"
    if case == "target_npy":
        arr = targets.copy()
        arr[1, 5] = 0.5
        np.save(tmp_path / "t.npy", arr)
        return good_s, tmp_path / "t.npy", tmp_path / "t.npy", "0.5 at row 1, column 5"
    if case == "text_cell":
        rows = scores.tolist()
        rows[0][0] = "high"
        bad = _write_csv(tmp_path / "text.csv", names, rows)
        return bad, good_t, bad, "'high' at line 2, column 'epithelium' is not a number"
    if case == "ragged":
        rows = scores.tolist()
        rows[2] = rows[2][:3]
        bad = _write_csv(tmp_path / "ragged.csv", names, rows)
        return bad, good_t, bad, "line 4 has 3 cells"
    if case == "headers":
        bad = _write_csv(tmp_path / "other.csv", [*names[:2], "fat", *names[3:]], targets.astype(int).tolist())
        return good_s, bad, bad, "'lymphocytes' vs 'fat'"
    if case == "shapes":
        bad = _write_csv(tmp_path / "short.csv", names, targets[:4].astype(int).tolist())
        return good_s, bad, bad, r"shape \(5, 6\).*shape \(4, 6\)"
    if case == "one_d":
        np.save(tmp_path / "flat.npy", scores[:, 0])
        return tmp_path / "flat.npy", good_t, tmp_path / "flat.npy", "2-D"
    if case == "ids":
        s = _write_csv(tmp_path / "s_id.csv", ["id", *names], [[f"p{i}", *r] for i, r in enumerate(scores.tolist())])
        order = [0, 1, 3, 2, 4]
        rows = [[f"p{i}", *targets[i].astype(int).tolist()] for i in order]
        t = _write_csv(tmp_path / "t_id.csv", ["id", *names], rows)
        return s, t, t, "data row 3 \\('p2' vs 'p3'\\)"
    if case == "empty":
        bad = tmp_path / "empty.csv"
        bad.write_text("")
        return bad, good_t, bad, "empty"
    if case == "header_only":
        bad = _write_csv(tmp_path / "head.csv", names, [])
        return bad, good_t, bad, "no data rows"
    if case == "pickle":
        np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return tmp_path / "obj.npy", good_t, tmp_path / "obj.npy", "cannot be read"
    raise AssertionError(case)


BAD_CASES = [
    "missing",
    "extension",
    "nan",
    "inf",
    "logits",
    "target_value",
    "target_npy",
    "text_cell",
    "ragged",
    "headers",
    "shapes",
    "one_d",
    "ids",
    "empty",
    "header_only",
    "pickle",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_raise_one_line_data_error_naming_the_file(tmp_path, case):
    scores_path, targets_path, culprit, pattern = _bad_case(tmp_path, case)
    with pytest.raises(DataError, match=pattern) as err:
        load_scores_targets(scores_path, targets_path)
    message = str(err.value)
    assert str(culprit) in message
    assert "\n" not in message


def test_evaluate_files_json_and_report(tmp_path, capsys, fast_plots):
    scores, targets = _data(n=50)
    s = _write_csv(tmp_path / "s.csv", ["path", *NAMES], [[f"x{i}", *r] for i, r in enumerate(scores.tolist())])
    t = _write_csv(tmp_path / "t.csv", NAMES, targets.astype(int).tolist())
    code = evaluate_files(s, t, tmp_path / "rep", threshold=0.4, recall_floor=0.7, json_out=True)
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    p = 100 * precision_score(targets, scores >= 0.4, average=None, zero_division=0)
    np.testing.assert_allclose([r["precision"] for r in document["per_class"]], p, atol=1e-9)
    assert document["threshold"] == 0.4 and document["report"] == str(tmp_path / "rep")
    assert (tmp_path / "rep" / "report.html").is_file()

    console = Console(record=True, width=160)
    assert evaluate_files(s, t, None, threshold=0.5, recall_floor=0.8, json_out=False, console=console) == 0
    text = console.export_text()
    assert "mAP" in text and "epithelium" in text
    with pytest.raises(DataError, match=r"t\.csv"):
        evaluate_files(s, tmp_path / "t.csv.missing", None, 0.5, 0.8, False)


def test_cooccurrence_against_explicit_loop():
    rng = np.random.default_rng(29)
    labels = (rng.random((40, 5)) < 0.4).astype(int)
    labels[:, 2] = 0
    got = plots_module.cooccurrence(labels)
    for i in range(5):
        for j in range(5):
            both = sum(1 for row in labels if row[i] and row[j])
            alone = sum(1 for row in labels if row[i])
            assert got[i, j] == pytest.approx(both / alone if alone else 0.0)


@pytest.mark.parametrize("case", ["one_class", "no_positives_at_all", "one_sample"])
def test_report_edge_cases_with_real_plots(tmp_path, case):
    rng = np.random.default_rng(31)
    if case == "one_class":
        scores, targets = rng.random((20, 1)), (rng.random((20, 1)) < 0.5).astype(float)
    elif case == "no_positives_at_all":
        scores, targets = rng.random((20, 3)), np.zeros((20, 3))
    else:
        scores, targets = np.array([[0.3, 0.7]]), np.array([[1.0, 0.0]])
    names = [f"k{i}" for i in range(scores.shape[1])]
    metrics = multilabel_metrics(scores, targets, class_names=names)
    out = write_report(tmp_path / "rep", metrics, scores, targets, names, {})
    for name in FILES:
        assert (out / name).is_file(), name
    json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN or Infinity
