"""The report of `vitkit check`: check.json (everything), check.html (one self-contained page with a
thumbnail of every image shown, embedded as base64), and CSVs to act on: files.csv, duplicates.csv,
label_errors.csv, and exclude.csv, the images `vitkit train --exclude exclude.csv` leaves out."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from PIL import Image

from ..data.images import open_image
from ..fileio import atomic_path
from .source import Source

THUMB_SIDE = 96
SHOWN = 200  # findings of each section drawn in the page; check.json has them all
KIND_TITLES = {
    "leak": "leak between splits",
    "conflict": "same picture, different labels",
    "duplicate": "duplicate within a class",
}


def _thumbnail(source: Source, index: int) -> str | None:
    """A data: URI of the image, THUMB_SIDE px at most; None for a file that cannot be decoded."""
    entry = source.entries[index]
    try:
        image = open_image(entry.path) if entry.path is not None else Image.fromarray(source.pixels(entry))
    except Exception:  # a broken file is a finding, shown by name only
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if max(image.size) < THUMB_SIDE // 2:  # tiny images (CIFAR) drawn larger, pixels kept sharp
        scale = THUMB_SIDE // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def exclude_rows(report: dict) -> list[dict]:
    """What training should leave out, once each: files it cannot read, every copy of a leak in train (the
    evaluation keeps its copy), the later copies of other duplicates, and likely label errors."""
    rows: dict[str, str] = {}
    for finding in report["files"]:
        if finding["fatal"]:
            rows.setdefault(finding["path"], f"{finding['kind']}: {finding['detail']}")
    for finding in report["duplicates"]:
        a, b = finding["images"]
        if finding["kind"] == "leak":
            drop = a if a["split"] == "train" else b
            keep = b if drop is a else a
        else:
            drop, keep = b, a
        how = "exact" if finding["exact"] else "near"
        rows.setdefault(drop["path"], f"{KIND_TITLES[finding['kind']]} ({how}) of {keep['path']}")
    for finding in report["label_errors"]:
        rows.setdefault(
            finding["path"], f"likely label error: labelled {finding['label']}, looks like {finding['suggested']}"
        )
    return [{"path": path, "reason": reason} for path, reason in rows.items()]


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _figure(source: Source, image: dict, caption: str) -> str:
    uri = _thumbnail(source, image["index"])
    picture = f'<img src="{uri}" alt="">' if uri else '<div class="broken">cannot be shown</div>'
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _esc(value) -> str:
    return html.escape(str(value))


def _section(title: str, count: int, body: str, note: str = "") -> str:
    more = f'<p class="note">{_esc(note)}</p>' if note else ""
    return f'<section><h2>{_esc(title)} <span class="count">{count}</span></h2>{more}{body}</section>'


def render_html(report: dict, source: Source) -> str:
    parts = []
    files = report["files"]
    rows = "".join(
        f"<tr><td>{_esc(f['path'])}</td><td class='{'fatal' if f['fatal'] else ''}'>{_esc(f['kind'])}</td>"
        f"<td>{_esc(f['detail'])}</td><td>{_esc(f['train'])}</td></tr>"
        for f in files[:SHOWN]
    )
    head = "<tr><th>file</th><th>problem</th><th>detail</th><th>what training does</th></tr>"
    body = f"<div class='scroll'><table>{head}{rows}</table></div>"
    parts.append(_section("File problems", len(files), body if files else "<p>none</p>"))
    if report["bad_rows"]:
        items = "".join(f"<li>{_esc(row)}</li>" for row in report["bad_rows"][:SHOWN])
        parts.append(_section("Unusable table rows", len(report["bad_rows"]), f"<ul>{items}</ul>"))

    duplicates = report["duplicates"]
    cards = []
    for finding in duplicates[:SHOWN]:
        how = "exact copy" if finding["exact"] else f"near duplicate (similarity {finding['similarity']:.2f})"
        figures = "".join(
            _figure(source, image, f"{_esc(image['split'])} · {_esc(image['label'])}<br>{_esc(image['path'])}")
            for image in finding["images"]
        )
        cards.append(
            f'<div class="card {finding["kind"]}"><div class="tag">{_esc(KIND_TITLES[finding["kind"]])}: '
            f"{how}</div><div class='pair'>{figures}</div></div>"
        )
    note = f"the first {SHOWN} are shown; check.json lists all" if len(duplicates) > SHOWN else ""
    body = f"<div class='cards'>{''.join(cards)}</div>" if cards else "<p>none</p>"
    parts.append(_section("Duplicates", len(duplicates), body, note))

    bal = report["balance"]
    splits = list(report["splits"])
    head = "".join(f"<th>{_esc(s)}</th>" for s in splits)
    small = {row["label"] for row in bal["too_few_for_validation"]}
    rows = "".join(
        f"<tr class='{'small' if row['label'] in small else ''}'><td>{_esc(row['label'])}</td>"
        + "".join(f"<td>{row.get(s, 0)}</td>" for s in splits)
        + "</tr>"
        for row in bal["counts"]
    )
    few = "".join(f"<li><b>{_esc(r['label'])}</b>: {_esc(r['detail'])}</li>" for r in bal["too_few_for_validation"])
    kind = "label" if report["multi_label"] else "class"
    body = f"<div class='scroll'><table><tr><th>{kind}</th>{head}</tr>{rows}</table></div>"
    if few:
        body = f"<p>Too few for validation:</p><ul>{few}</ul>" + body
    if report["multi_label"]:
        pairs = "".join(
            f"<tr><td>{_esc(' + '.join(p['labels']))}</td><td>{p['images']}</td><td>{p['share_of_rarer']:.0%}</td></tr>"
            for p in bal["co_occurrence"]
        )
        body += (
            "<h3>Labels seen together</h3><div class='scroll'><table><tr><th>labels</th><th>images</th>"
            f"<th>of the rarer</th></tr>{pairs}</table></div>"
        )
    parts.append(_section("Balance", len(bal["too_few_for_validation"]), body))

    errors = report["label_errors"]
    check = report["label_check"] or {}
    if "skipped" in check:
        note = f"not judged: {check['skipped']}"
    elif check:
        accuracy = check.get("out_of_fold_accuracy", check.get("out_of_fold_label_accuracy"))
        note = (
            f"{check['folds']}-fold training, {check['epochs_per_fold']} epochs a fold at {check['image_size']} px; "
            f"out-of-fold accuracy {accuracy:.1%}. Ranked by confident learning (cleanlab), most likely first."
        )
    else:
        note = "not judged (--no-label-errors)"
    figures = "".join(
        _figure(
            source,
            e,
            f"#{e['rank']} labelled <b>{_esc(e['label'])}</b><br>looks like {_esc(e['suggested'])} "
            f"({e['suggested_probability']:.0%})<br>{_esc(e['path'])}",
        )
        for e in errors[:SHOWN]
    )
    parts.append(
        _section("Likely label errors", len(errors), f"<div class='grid'>{figures}</div>" if figures else "", note)
    )
    leaks = sum(d["kind"] == "leak" for d in duplicates)
    summary = (
        f"{report['images']} images ({', '.join(f'{k} {v}' for k, v in report['splits'].items())}), "
        f"{len(report['classes'])} {'labels' if report['multi_label'] else 'classes'}: "
        f"{len(files)} file problem(s), {len(duplicates)} duplicate pair(s) ({leaks} leak(s) between splits), "
        f"{len(errors)} likely label error(s)"
    )
    return PAGE.format(title=_esc(f"vitkit check: {report['data']}"), summary=_esc(summary), body="".join(parts))


def summary_text(report: dict) -> str:
    """What `vitkit check` prints: how many problems of each kind, and where the report is."""
    leaks = sum(d["kind"] == "leak" for d in report["duplicates"])
    fatal = sum(f["fatal"] for f in report["files"])
    return (
        f"{report['images']} images: {len(report['files'])} file problem(s) ({fatal} that stop training), "
        f"{len(report['duplicates'])} duplicate pair(s) ({leaks} leak(s) between splits), "
        f"{len(report['balance']['too_few_for_validation'])} class(es) too small for validation, "
        f"{len(report['label_errors'])} likely label error(s)\n"
        f"-> {report['out']}/check.html (also check.json; exclude.csv for vitkit train --exclude)"
    )


def write_report(report: dict, source: Source, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "check.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(out / "check.html") as tmp:
        tmp.write_text(render_html(report, source), encoding="utf-8")
    _write_csv(out / "files.csv", report["files"], ["path", "kind", "detail", "train"])
    pairs = [
        {
            "kind": d["kind"],
            "exact": d["exact"],
            **{f"{k}_{n}": image[k] for n, image in enumerate(d["images"], 1) for k in ("path", "split", "label")},
        }
        for d in report["duplicates"]
    ]
    columns = ["kind", "exact"] + [f"{k}_{n}" for n in (1, 2) for k in ("path", "split", "label")]
    _write_csv(out / "duplicates.csv", pairs, columns)
    _write_csv(
        out / "label_errors.csv",
        report["label_errors"],
        ["rank", "path", "split", "label", "suggested", "suggested_probability", "label_quality"],
    )
    _write_csv(out / "exclude.csv", exclude_rows(report), ["path", "reason"])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 16px; color: #222; }}
h1 {{ font-size: 22px; margin: 0 0 4px; overflow-wrap: anywhere; }}
h2 {{ font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
.count {{ background: #eee; border-radius: 10px; padding: 0 8px; font-size: 14px; }}
.summary {{ color: #444; }} .scroll {{ overflow-x: auto; }} .note {{ color: #666; }}
table {{ border-collapse: collapse; width: 100%; margin: 8px 0; }}
td, th {{ border: 1px solid #e3e3e3; padding: 3px 6px; text-align: left; vertical-align: top; word-break: break-word; }}
th {{ background: #f6f6f6; }} td.fatal {{ color: #b00020; font-weight: 600; }} tr.small td {{ background: #fff4e0; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: 6px; }}
.card.leak {{ border-color: #b00020; }} .card.conflict {{ border-color: #e08000; }}
.tag {{ font-size: 12px; font-weight: 600; margin-bottom: 4px; overflow-wrap: anywhere; }}
.card {{ max-width: 100%; box-sizing: border-box; }}
.card.leak .tag {{ color: #b00020; }} .card.conflict .tag {{ color: #a05a00; }}
.pair {{ display: flex; gap: 6px; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; width: 120px; font-size: 11px; }}
figure img, .broken {{ width: 96px; height: 96px; object-fit: contain; background: #f3f3f3; display: block; }}
.broken {{ display: flex; align-items: center; justify-content: center; color: #999; }}
figcaption {{ word-break: break-all; }}
</style></head>
<body><h1>{title}</h1><p class="summary">{summary}</p>{body}</body></html>
"""
