"""Table-labelled images: a folder of images and a table (CSV, TSV, JSON lines or parquet) with a row per
image naming its file and its label or labels (`--data FOLDER --labels TABLE`).

The image column holds paths relative to the folder, with or without their extension, or bare names (an
id `tt0091203` finds `Images/tt0091203.jpg` when no other file has that name). The labels are one column
(a class; a list such as `['Comedy', 'Drama']`, read with `ast.literal_eval`, never `eval`; or names
joined by `--label-separator`), or a set of 0/1 columns, one per label. Data with several labels per image,
or 0/1 columns, is multi-label. A `split` column (train/val/test) assigns rows to splits.

Rows whose image is missing, which have no label, whose label a spreadsheet would read as a formula
(a cell starting with = + - @ that is not a number, such as `=HYPERLINK(...)`), or which list an image
again are bad inputs: the run stops naming the table, the row and the image, or with --skip-bad-images
leaves them out and lists them, as it does unreadable images. An image listed again with the same labels
and split keeps its first row; listed with other labels or another split, every row of it is bad.

CSV and TSV files are UTF-8, or UTF-16/UTF-32 with their byte-order mark (as Excel's "Unicode text"
writes them); a UTF-8 byte-order mark is skipped.
"""

from __future__ import annotations

import ast
import codecs
import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import MissingFile, VitkitError
from .folder import SPLIT_ALIASES, _fingerprint, load_listed
from .images import is_image_file
from .preprocess import Preprocessing
from .splits import Dataset

TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "image_id", "img", "id", "name")
LABEL_COLUMNS = ("labels", "label", "tags", "classes", "class", "categories", "category", "genres", "genre", "target")
SPLIT_COLUMN = "split"
BINARY_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
# byte-order marks and the encodings they start (UTF-32's before UTF-16's, whose mark begins it)
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# how a spreadsheet starts a formula (OWASP's CSV injection list, less tab and CR, which cells strip)
FORMULA_STARTS = ("=", "+", "-", "@")


class BadRowError(VitkitError):
    """A row of a label table that cannot be used: its image is missing, or it has no label."""


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of a CSV/TSV (values as text), JSON lines or parquet table (values as stored)."""
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise VitkitError(f"--labels {path}: not a table vitkit reads; use .csv, .tsv, .jsonl or .parquet")
    if not path.is_file():
        raise MissingFile(f"--labels {path}: no such file")
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise VitkitError(f"--labels {path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises its own error types for damaged files
            raise VitkitError(f"--labels {path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
        return list(table.column_names), table.to_pylist()
    text = read_text(path)
    if kind == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise VitkitError(
                    f"--labels {path} line {number}: not JSON ({e.msg}); one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise VitkitError(f"--labels {path} line {number}: a JSON {type(row).__name__}, expected an object")
            rows.append(row)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return columns, rows
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if kind == "tsv" else ",")
    rows = [row for row in reader if any((value or "").strip() for value in row.values() if isinstance(value, str))]
    return list(reader.fieldnames or []), rows


def read_text(path: Path) -> str:
    """A text table's content: UTF-8, or the encoding its byte-order mark names."""
    data = path.read_bytes()
    encoding = next((name for mark, name in BYTE_ORDER_MARKS if data.startswith(mark)), "utf-8")
    save_as = "save it as UTF-8 (Excel: CSV UTF-8), or as UTF-16 with its byte-order mark"
    if encoding == "utf-8" and b"\x00" in data:
        raise VitkitError(f"--labels {path}: holds NUL bytes, as UTF-16 without a byte-order mark does; {save_as}")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        shown, line = encoding.removesuffix("-sig").upper(), data[: e.start].count(b"\n") + 1
        problem = f"not {shown} text (line {line} has byte {data[e.start]:#04x})"
        raise VitkitError(f"--labels {path}: {problem}; {save_as}") from None


def _formula(name: str) -> bool:
    """Whether a spreadsheet reads `name` as a formula: it starts as one and is not a number (-1, +2.5)."""
    if not name.startswith(FORMULA_STARTS):
        return False
    try:
        float(name)
    except ValueError:
        return True
    return False


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _binary(value: Any) -> int | None:
    """0 or 1 when `value` reads as one (1, "1", True, "true", 1.0), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    return BINARY_VALUES.get(value.strip().lower()) if isinstance(value, str) else None


def _find_column(columns: list[str], wanted: str | None, names: tuple[str, ...], flag: str, table: Path) -> str | None:
    if wanted:
        if wanted not in columns:
            raise VitkitError(f"{flag} {wanted}: --labels {table} has columns {', '.join(columns)}")
        return wanted
    lowered = {c.lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


class ImageIndex:
    """The image files under a folder, found by relative path, by that path without its extension, or by
    their name or stem alone when no other file shares it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.exact: dict[str, Path] = {}
        self.by_name: dict[str, list[Path]] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)):
            relative = path.relative_to(folder).as_posix()
            self.exact[relative] = path
            self.exact.setdefault(relative.rsplit(".", 1)[0], path)
            for key in {path.name, path.stem}:
                self.by_name.setdefault(key, []).append(path)

    def find(self, value: Any) -> Path | None:
        text = str(value).strip().replace("\\", "/")
        if os.path.isabs(text):
            return Path(text) if Path(text).is_file() else None
        text = text.removeprefix("./")
        if text in self.exact:
            return self.exact[text]
        named = self.by_name.get(text, [])
        return named[0] if len(named) == 1 else None


def _parse_label_cell(value: Any, separator: str | None) -> list[str]:
    """The labels of one cell: a list (stored as one, or written as a Python/JSON list), names joined by
    `separator`, or a single name."""
    if _missing(value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if not _missing(v)]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)  # literals only: a table can never run code
        except (ValueError, SyntaxError):
            raise VitkitError(f"{text!r} looks like a list but is not a valid one") from None
        if not isinstance(parsed, (list, tuple)) or any(isinstance(v, (list, tuple, dict, set)) for v in parsed):
            raise VitkitError(f"{text!r} is not a flat list of labels")
        return [str(v).strip() for v in parsed if not _missing(v)]
    if separator:
        return [part.strip() for part in text.split(separator) if part.strip()]
    if isinstance(value, float) and value.is_integer():
        return [str(int(value))]
    return [text]


def _label_columns(columns, rows, image_column, label_column, table) -> tuple[str | None, list[str]]:
    """(the one label column, or None; the 0/1 label columns, or [])."""
    others = [c for c in columns if c not in (image_column, SPLIT_COLUMN)]
    if label_column:
        if label_column in columns:
            return label_column, []
        parts = [part.strip() for part in label_column.split(",")]
        unknown = [p for p in parts if p not in columns]
        if len(parts) < 2 or unknown:
            raise VitkitError(f"--label-column {label_column}: --labels {table} has columns {', '.join(columns)}")
        return None, parts
    binary = [c for c in others if all(_binary(row.get(c)) is not None for row in rows)]
    if len(binary) >= 2:
        return None, binary
    named = _find_column(others, None, LABEL_COLUMNS, "--label-column", table)
    if named:
        return named, []
    if len(others) == 1:
        return others[0], []
    raise VitkitError(
        f"--labels {table}: cannot tell which column holds the labels ({', '.join(columns)}): pass --label-column "
        "(one column, or comma-separated 0/1 columns)"
    )


def _one_row_per_image(usable: list, reject) -> list[tuple[str, Path, list[str]]]:
    """(split, image, labels) once per image, in table order. A later row that repeats an image's labels
    and split is rejected as a repeat; an image listed with other labels or in another split has every
    one of its rows rejected, each naming the others."""
    by_image: dict[Path, list] = {}
    for entry in usable:
        by_image.setdefault(entry[3].resolve(), []).append(entry)
    kept = []
    for entries in by_image.values():
        first_number, _, split, path, names = entries[0]
        if all((e[2], set(e[4])) == (split, set(names)) for e in entries):
            kept.append((split, path, names))
            for number, row, *_ in entries[1:]:
                reject(number, row, f"repeats row {first_number} (the same image, labels and split)")
            continue
        for number, row, *_ in entries:
            others = "; ".join(f"row {n}: {', '.join(labels)} ({where})" for n, _, where, _, labels in entries)
            reject(number, row, f"the image is listed more than once with different labels or splits ({others})")
    return kept


def _sort_names(names: set[str]) -> list[str]:
    return sorted(names, key=lambda n: (0, int(n), "") if n.lstrip("-").isdigit() else (1, 0, n))


class TableListing(NamedTuple):
    """What a label table says, before any image is decoded."""

    listed: dict[str, list[tuple[Path, Any]]]  # {split: [(image file, class index or 0/1 vector)]}
    class_names: list[str]
    multi_label: bool
    bad: list[str]  # the rows `skip_bad` left out
    key: str  # what besides the files decides the labels (the table's content, the columns), for cache keys


def list_table(
    folder: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    label_separator: str | None = None,
    multi_label: bool | None = None,
    skip_bad: bool = False,
    exclude: set[Path] | None = None,
    for_training: bool = True,
) -> TableListing:
    """The images of `folder` the table `labels` names, with their labels: single-label (class indices) or
    multi-label (0/1 vectors; `multi_label` None decides from the table). Rows whose image is in `exclude`
    (resolved paths) are left out. Without `for_training` a table need not have train rows (one to
    evaluate on)."""
    folder, table = Path(folder), Path(labels)
    if not folder.is_dir():
        raise VitkitError(f"--data {folder}: with --labels, --data is the folder the table's image paths are under")
    columns, rows = read_table(table)
    if not rows:
        raise VitkitError(f"--labels {table} has no rows")
    images = ImageIndex(folder)
    image_column = _find_column(columns, image_column, IMAGE_COLUMNS, "--image-column", table)
    if image_column is None:  # the first column whose first value names an image under the folder
        image_column = next((c for c in columns if images.find(rows[0].get(c, "")) is not None), None)
    if image_column is None:
        raise VitkitError(
            f"--labels {table}: cannot tell which column names the images ({', '.join(columns)}): pass --image-column"
        )
    single_column, binary_columns = _label_columns(columns, rows, image_column, label_column, table)
    split_column = next((c for c in columns if c.lower() == SPLIT_COLUMN), None)

    bad: list[str] = []

    def reject(number: int, row: dict, problem: str) -> None:
        message = f"{table} row {number} ({image_column} {row.get(image_column)!r}): {problem}"
        if not skip_bad:
            raise BadRowError(f"{message}. Fix the row or remove it, or pass --skip-bad-images")
        bad.append(message)

    usable: list[tuple[int, dict, str, Path, list[str]]] = []  # row number, row, split, image, labels
    for number, row in enumerate(rows, 1):
        value = row.get(image_column)
        path = None if _missing(value) else images.find(value)
        if path is None:
            reject(number, row, f"no image under {folder} by that path or name (with or without extension)")
            continue
        if binary_columns:
            flags = [_binary(row.get(c)) for c in binary_columns]
            if None in flags:
                column = binary_columns[flags.index(None)]
                reject(number, row, f"column {column!r} holds {row.get(column)!r}, expected 0 or 1")
                continue
            names = [c for c, flag in zip(binary_columns, flags) if flag]
        else:
            try:
                names = _parse_label_cell(row.get(single_column), label_separator)
            except ValueError as e:
                reject(number, row, f"column {single_column!r}: {e}")
                continue
        if not names:
            reject(number, row, "no label")
            continue
        formula = next((name for name in names if _formula(name)), None)
        if formula is not None:
            reject(number, row, f"label {formula!r} is a spreadsheet formula, not a class name")
            continue
        split = SPLIT_ALIASES.get(str(row.get(split_column, "")).strip().lower(), None) if split_column else "train"
        if split is None:
            reject(number, row, f"{split_column} {row.get(split_column)!r} is not train, val or test")
            continue
        usable.append((number, row, split, path, list(dict.fromkeys(names))))
    parsed = _one_row_per_image(usable, reject)
    if not parsed:
        raise VitkitError(f"--labels {table}: no usable rows")

    several = any(len(names) > 1 for _, _, names in parsed)
    if multi_label is False and (several or binary_columns):
        example = next((n, p) for _, p, n in parsed if len(n) > 1) if several else None
        what = f"{example[1].name} has {', '.join(example[0])}" if example else "its labels are 0/1 columns"
        raise VitkitError(f"--no-multi-label: --labels {table} is multi-label ({what}); drop --no-multi-label")
    multi = bool(multi_label or several or binary_columns)
    class_names = binary_columns or _sort_names({n for _, _, names in parsed for n in names})
    index = {name: i for i, name in enumerate(class_names)}

    def target(names: list[str]):
        if not multi:
            return index[names[0]]
        vector = [0.0] * len(class_names)
        for name in names:
            vector[index[name]] = 1.0
        return vector

    listed: dict[str, list[tuple[Path, Any]]] = {"train": []}
    for split, path, names in parsed:
        if exclude and path.resolve() in exclude:
            continue
        listed.setdefault(split, []).append((path, target(names)))
    if for_training and not listed["train"]:
        raise VitkitError(f"--labels {table}: no row is in the train split")
    digest = hashlib.sha256(table.read_bytes()).hexdigest()
    key = f" table={digest} {image_column} {single_column} {binary_columns} {label_separator} multi={multi}"
    return TableListing(listed, class_names, multi, bad, key)


def load_table(
    folder: str | os.PathLike,
    labels: str | os.PathLike,
    preprocessing: Preprocessing,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    label_separator: str | None = None,
    multi_label: bool | None = None,
    skip_bad: bool = False,
    exclude: set[Path] | None = None,
    cache: bool = True,
    data_dir: str | os.PathLike | None = None,
    memory_limit_gb: float | None = None,
    for_training: bool = True,
) -> tuple[Dataset, list[str]]:
    """The images of `folder` labelled by the table `labels` (see `list_table`), decoded or streamed. Returns
    the dataset and the bad rows and images that `skip_bad` left out."""
    listing = list_table(
        folder,
        labels,
        image_column=image_column,
        label_column=label_column,
        label_separator=label_separator,
        multi_label=multi_label,
        skip_bad=skip_bad,
        exclude=exclude,
        for_training=for_training,
    )
    files = {split: {"": [p for p, _ in items]} for split, items in listing.listed.items()}
    fingerprint = _fingerprint(files, preprocessing, skip_bad, listing.key)
    where = dict(cache=cache, data_dir=data_dir, memory_limit_gb=memory_limit_gb, for_training=for_training)
    name = Path(folder).resolve().name
    dataset, unreadable = load_listed(
        listing.listed,
        listing.class_names,
        name,
        fingerprint,
        preprocessing,
        skip_bad=skip_bad,
        multi_label=listing.multi_label,
        **where,
    )
    return dataset, listing.bad + unreadable
