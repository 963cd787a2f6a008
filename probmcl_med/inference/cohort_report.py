"""A cohort's summaries: ``cohort.csv`` (one row per slide), ``failed.csv`` and ``cohort.html``, each written whole.

Built from the slide folders' records (:data:`~probmcl_med.inference.cohort.RECORD_FILE`), so the slides predicted
in an earlier run and those predicted by other ranks are summarised the same way as this process's own.

``cohort.csv`` columns: ``id``, ``path``, ``status`` (``predicted``, ``no tissue`` or ``failed``), ``mpp`` (microns
per pixel of the patches as read; empty when the slide's resolution is unknown), ``level`` (the pyramid level read),
``tissue_mm2`` (the area of the tissue mask), ``patches`` (tissue patches predicted), ``ood_share`` (the share of
those patches far from the training images, 0-1) and ``out_of_distribution`` (``yes`` when that share reaches the
slide rule of :mod:`probmcl_med.core.ood`; both empty when the model keeps no statistics), per class ``called_<class>``
(the share of the slide's tissue patches in which the class reaches its threshold, 0-1) and ``mean_p_<class>`` (its
mean probability over them), ``thresholds`` (where the thresholds came from), ``seconds`` (the time the slide took
when it was predicted, writing included), ``note`` (why a slide failed; "no tissue found"), then the manifest's
other columns. A failed slide's row keeps id, path, status and note.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from probmcl_med.fileio import atomic_write_text
from probmcl_med.inference.cohort import FAILED, NO_TISSUE, SlideResult
from probmcl_med.inference.cohort_inputs import CohortSlide
from probmcl_med.inference.cohort_state import read_record
from probmcl_med.inference.writers import safe_filename

COHORT_CSV, FAILED_CSV, COHORT_HTML = "cohort.csv", "failed.csv", "cohort.html"


def _cell(value: Any, digits: str = ".6f") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, digits)
    return str(value)


def cohort_rows(
    slides: Sequence[CohortSlide], results: dict[str, SlideResult], out: Path, class_names: Sequence[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and one row per slide (in the slides' order) of ``cohort.csv``, values as Python objects.

    Each row also carries ``"_record"`` (the slide's record, or None) for the HTML page.
    """
    extra: list[str] = []
    for slide in slides:
        extra += [c for c in slide.extra if c not in extra]
    header = ["id", "path", "status", "mpp", "level", "tissue_mm2", "patches", "ood_share", "out_of_distribution"]
    header += [f"called_{c}" for c in class_names] + [f"mean_p_{c}" for c in class_names]
    header += ["thresholds", "seconds", "note", *extra]
    rows = []
    for slide in slides:
        result = results.get(slide.id)
        record = read_record(out / slide.id) if result is None or result.status != FAILED else None
        row: dict[str, Any] = {"id": slide.id, "path": str(slide.path), **slide.extra, "_record": record}
        if record is None:
            reason = result.reason if result is not None else "no outputs found (the slide was not predicted)"
            row.update(status=FAILED, note=reason)
            rows.append(row)
            continue
        summary = record["summary"]
        row.update(
            status=summary["status"],
            mpp=summary["mpp"],
            level=summary["level"],
            tissue_mm2=summary["tissue_mm2"],
            patches=summary["patches"],
            thresholds=record.get("thresholds_source", ""),
            seconds=record.get("seconds"),
            note="no tissue found" if summary["status"] == NO_TISSUE else "",
        )
        ood = summary.get("ood")
        if ood is not None:
            row.update(ood_share=ood["share"], out_of_distribution="yes" if ood["slide_out_of_distribution"] else "no")
        for c in class_names:
            row[f"called_{c}"] = summary["called"].get(c)
            row[f"mean_p_{c}"] = summary["mean_probability"].get(c)
        rows.append(row)
    return header, rows


def csv_text(header: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of ``rows`` under ``header`` (numbers: 6 decimals; mpp, area and seconds: 6 significant digits)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    general = {"mpp", "tissue_mm2", "seconds"}
    for row in rows:
        writer.writerow([_cell(row.get(h), ".6g" if h in general else ".6f") for h in header])
    return buffer.getvalue()


def write_failed_csv(out: Path, slides: Sequence[CohortSlide], results: dict[str, SlideResult]) -> Path:
    """``failed.csv``: ``id, path, reason`` of every slide that failed in this run (a header alone when none did)."""
    rows = [{"id": s.id, "path": str(s.path), "reason": results[s.id].reason}
            for s in slides if s.id in results and results[s.id].status == FAILED]  # fmt: skip
    return atomic_write_text(out / FAILED_CSV, csv_text(["id", "path", "reason"], rows))


def heatmap_file(class_name: str, class_names: Sequence[str]) -> str:
    """The slide folder's heat map of ``class_name``, relative to the folder (the one-slide writer's file names).

    The one function the cohort page takes heat maps through (so a new heat-map renderer changes only this).
    """
    taken: set[str] = set()
    names = {c: safe_filename(c, taken) for c in class_names}
    return f"heatmaps/{names[class_name]}.png"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px} p{margin:4px 0 12px;color:#444}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left;
vertical-align:top} th{background:#f4f4f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums} img{max-width:200px;max-height:200px;display:block}
td.classes{white-space:nowrap} tr.failed td{background:#fdecec} tr.notissue td{background:#f6f6f6;color:#666} .small{font-size:12px;color:#555}
"""


def top_classes(row: dict[str, Any], class_names: Sequence[str], k: int = 3) -> str:
    """The ``k`` classes called in most of a ``cohort.csv`` row's patches, as ``class share%`` lines joined by
    ``<br>``: by share, ties by the higher mean probability (the rule that picks the slide's top class for its heat
    map), then by class order."""
    shares = [(row[f"called_{c}"], row.get(f"mean_p_{c}") or 0.0, c) for c in class_names
              if row.get(f"called_{c}") is not None]  # fmt: skip
    shares.sort(key=lambda t: (-t[0], -t[1]))
    return "<br>".join(f"{html.escape(c)} {100 * v:.0f}%" for v, _, c in shares[:k])


def cohort_html(
    header: Sequence[str], rows: Sequence[dict[str, Any]], class_names: Sequence[str], title: dict[str, str]
) -> str:
    """A self-contained page: what was run, then per slide its id, path and manifest columns, status, thumbnail, the
    top class's heat map, the classes called in most patches, tissue, patches, resolution and time. Images are the slide folders' own files,
    linked relatively (the page is meant to stay in ``OUT``)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    said = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Cohort predictions</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Cohort: {len(rows)} slides ({html.escape(said)})</h1>",
        *(f"<p><b>{html.escape(k)}:</b> {html.escape(v)}</p>" for k, v in title.items()),
        "<p class='small'>Called: the share of a slide's tissue patches in which the class reaches its threshold. "
        "The heat map is the top class's probability per patch. Full numbers in cohort.csv.</p>",
        "<table><tr><th>slide</th><th>status</th><th>thumbnail</th><th>top class heat map</th>"
        "<th>called in most patches</th><th>patches</th><th>tissue mm²</th><th>um/px (level)</th><th>seconds</th>"
        "</tr>",
    ]
    known = {"id", "path", "status", "mpp", "level", "tissue_mm2", "patches", "thresholds", "seconds", "note"}
    known |= {"ood_share", "out_of_distribution"}
    extra_columns = [h for h in header if h not in known and not h.startswith(("called_", "mean_p_"))]
    for row in rows:
        record = row.get("_record")
        slide_id = html.escape(row["id"])
        css = {"failed": "failed", "no tissue": "notissue"}.get(row["status"], "")
        thumb = heat = ""
        if record is not None:
            thumb = f"<img loading='lazy' src='{slide_id}/thumbnail.png' alt='thumbnail of {slide_id}'>"
            top = record["summary"].get("top_class")
            if top is not None:
                src = f"{slide_id}/{html.escape(heatmap_file(top, class_names))}"
                heat = f"<a href='{src}'><img loading='lazy' src='{src}' alt='{html.escape(top)}'></a>"
                heat += f"<span class='small'>{html.escape(top)}</span>"
        status = html.escape(row["status"]) + (f"<br><span class='small'>{html.escape(row['note'])}</span>"
                                               if row.get("note") else "")  # fmt: skip
        if row.get("out_of_distribution") == "yes":
            status += f"<br><span class='small'>far from the training images: {100 * row['ood_share']:.0f} % of patches</span>"
        mpp = "" if row.get("mpp") is None else f"{row['mpp']:.3g} ({row.get('level')})"
        area = "" if row.get("tissue_mm2") is None else f"{row['tissue_mm2']:.2f}"
        seconds = "" if row.get("seconds") is None else f"{row['seconds']:.1f}"
        extra = "".join(f"<br>{html.escape(k)}: {html.escape(str(v))}" for k, v in row.items() if k in extra_columns)
        lines.append(
            f"<tr class='{css}'><td>{slide_id}<br><span class='small'>{html.escape(row['path'])}{extra}</span></td>"
            f"<td>{status}</td><td>{thumb}</td><td>{heat}</td><td class='classes'>{top_classes(row, class_names)}</td>"
            f"<td class='num'>{_cell(row.get('patches'))}</td><td class='num'>{area}</td><td class='num'>{mpp}</td>"
            f"<td class='num'>{seconds}</td></tr>"
        )
    lines.append("</table></body></html>\n")
    return "\n".join(lines)


def write_cohort_summary(
    out: Path,
    slides: Sequence[CohortSlide],
    results: dict[str, SlideResult],
    class_names: Sequence[str],
    title: dict[str, str],
) -> list[dict[str, Any]]:
    """Write ``failed.csv``, ``cohort.csv`` and ``cohort.html`` (each atomically); returns the rows.

    Args:
        out: the cohort folder.
        slides: every slide of the cohort, in order.
        results: this run's result per slide id (slides absent were neither predicted nor skipped: failed).
        class_names: the model's classes.
        title: what the page says first (model, thresholds, ...), in order.
    """
    header, rows = cohort_rows(slides, results, out, class_names)
    write_failed_csv(out, slides, results)
    atomic_write_text(out / COHORT_CSV, csv_text(header, rows))
    stamp = {"written": datetime.now(timezone.utc).isoformat(timespec="seconds"), **title}
    atomic_write_text(out / COHORT_HTML, cohort_html(header, rows, class_names, stamp))
    return rows
