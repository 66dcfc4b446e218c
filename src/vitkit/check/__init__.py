"""`vitkit check`: what is wrong with a dataset before it is trained on (files, duplicates and leaks,
balance, likely label errors), as one report (check.html, check.json and CSVs to feed back to training).

files.py inspects files, duplicates.py finds exact and near duplicates, labels.py the balance and the
label errors, report.py writes the report; `train_check` is the cheap part `vitkit train` runs at start."""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..data.prepare import DataOptions
from ..errors import VitkitError
from ..options import option
from .duplicates import SIGNATURE_SIDE, exact_groups, near_pairs, pair_kind
from .files import FactsCache, file_findings, inspect_files
from .labels import MIN_TRAIN_SECONDS, balance, likely_label_errors, out_of_fold_probabilities
from .source import Source, open_source

_check = partial(option, group="check", commands=("check",))
REPORT_SECONDS = 15  # kept back from the time budget for the report


@dataclass
class CheckOptions(DataOptions):
    out: str = _check("check", "the report's folder: check.html, check.json and CSVs")
    time_budget: float = _check(
        10.0, "minutes for the whole check; the label-error training gets what is left", above=0
    )
    folds: int = _check(
        4,
        "folds of the out-of-fold training that judges the labels: each model learns from the other folds "
        "(more folds: more images each, and a shorter training under the time budget, which learns fewer "
        "wrong labels by heart)",
        at_least=2,
    )
    image_size: int = _check(32, "side of the images the label-judging model sees", at_least=8)
    label_errors: bool = _check(True, "judge the labels with a quick k-fold training (--no-label-errors: skip it)")


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"vitkit check: {text}", file=sys.stderr, flush=True)


def duplicate_findings(
    source: Source, digests: list[str], hashes, signatures, usable: list[int], sides: list[int]
) -> list[dict]:
    """Exact groups, then near-duplicate pairs among one image of each exact group and every other usable
    image at least SIGNATURE_SIDE pixels on its shorter side (smaller ones, 8x8 digits say, are too alike
    for their thumbnails to tell a copy from a neighbour); each with its kind (leak, conflict, duplicate)."""
    entries = source.entries
    findings = []
    represented = {i for i in usable if sides[i] >= SIGNATURE_SIDE}
    for group in exact_groups(digests):
        first = group[0]
        for other in group[1:]:
            represented.discard(other)
            a, b = entries[first], entries[other]
            findings.append(
                {
                    "kind": pair_kind(a.split, b.split, a.label, b.label),
                    "exact": True,
                    "images": [_described(source, first), _described(source, other)],
                }
            )
    pool = sorted(represented)
    if pool:
        hash_array = np.array([int(hashes[i], 16) for i in pool], np.uint64)
        signature_array = np.stack([np.frombuffer(bytes.fromhex(signatures[i]), np.uint8) for i in pool])
        for i, j, distance, correlation in near_pairs(hash_array, signature_array):
            a, b = pool[i], pool[j]
            if digests[a] and digests[a] == digests[b]:
                continue
            findings.append(
                {
                    "kind": pair_kind(entries[a].split, entries[b].split, entries[a].label, entries[b].label),
                    "exact": False,
                    "hash_distance": distance,
                    "similarity": round(correlation, 4),
                    "images": [_described(source, a), _described(source, b)],
                }
            )
    order = {"leak": 0, "conflict": 1, "duplicate": 2}
    findings.sort(key=lambda f: (order[f["kind"]], not f["exact"]))
    return findings


def _described(source: Source, i: int) -> dict:
    entry = source.entries[i]
    return {"index": i, "path": source.display(entry), "split": entry.split, "label": source.label_names(entry)}


def run_check(options: CheckOptions, *, started: float | None = None, quiet: bool = False) -> dict:
    """Check `options.data` and write the report to `options.out`; returns the report (as check.json)."""
    from .report import write_report

    started = time.monotonic() if started is None else started
    budget_s = options.time_budget * 60
    out = Path(options.out)
    source = open_source(
        options.data,
        options.labels,
        image_column=options.image_column,
        label_column=options.label_column,
        label_separator=options.label_separator,
        multi_label=options.multi_label,
        data_dir=options.data_dir,
        seed=options.seed,
        image_size=options.image_size,
    )
    if source.root is not None and out.resolve().is_relative_to(source.root.resolve()):
        raise VitkitError(f"--out {out} is inside the data folder {source.root}: write the report somewhere else")
    entries = source.entries
    _say(quiet, f"{len(entries)} images, {len(source.class_names)} classes in {options.data}")
    size = options.image_size
    if source.root is not None:
        cache = FactsCache(source.root, options.data_dir)
        paths = [e.path for e in entries]
        _say(quiet, "reading every file (hashes, headers, pixels)")
        facts, pixels = inspect_files(
            paths,
            cache,
            decode=True,
            train_size=size,
            progress=lambda n: _say(quiet, f"  {n} of {len(paths)} files read"),
        )
        files = file_findings([source.display(e) for e in entries], facts)
        usable = [i for i, f in enumerate(facts) if not f.fatal]
        digests = [f.digest for f in facts]
        hashes, signatures = [f.phash for f in facts], [f.signature for f in facts]
        sides = [min(f.width, f.height) for f in facts]
    else:
        from PIL import Image, ImageOps

        from .duplicates import perceptual_hash, thumbnail_signature

        files, usable, digests, hashes, signatures, pixels = [], list(range(len(entries))), [], [], [], []
        sides = []
        for entry in entries:
            array = np.ascontiguousarray(source.pixels(entry))
            sides.append(min(array.shape[:2]))
            image = Image.fromarray(array)
            digests.append(hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest())
            hashes.append(f"{perceptual_hash(image):016x}")
            signatures.append(thumbnail_signature(image).tobytes().hex())
            pixels.append(np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)))
    _say(quiet, f"{len(files)} file problem(s); looking for duplicates")
    duplicates = duplicate_findings(source, digests, hashes, signatures, usable, sides)
    report = {
        "data": options.data,
        "labels": options.labels,
        "images": len(entries),
        "splits": {s: sum(e.split == s for e in entries) for s in dict.fromkeys(e.split for e in entries)},
        "classes": source.class_names,
        "multi_label": source.multi_label,
        "bad_rows": source.bad_rows,
        "files": files,
        "duplicates": duplicates,
        "balance": balance(entries, source.class_names, source.multi_label, options.val_split, source.splits_given),
        "label_errors": [],
        "label_check": None,
    }
    if options.label_errors:
        left = budget_s - (time.monotonic() - started) - REPORT_SECONDS
        if left < MIN_TRAIN_SECONDS:
            report["label_check"] = {"skipped": f"the time budget left {max(left, 0):.0f} s for the label training"}
        else:
            _say(quiet, f"judging labels: {options.folds}-fold training in {left:.0f} s")
            labels = [entries[i].label for i in usable]
            stacked = np.stack([pixels[i] for i in usable])
            probabilities, how = out_of_fold_probabilities(
                stacked,
                labels,
                len(source.class_names),
                source.multi_label,
                left,
                folds=options.folds,
                seed=options.seed,
                progress=lambda done, total: _say(quiet, f"  fold {done} of {total} done"),
            )
            report["label_check"] = how
            found = [] if probabilities is None else likely_label_errors(labels, probabilities, source.multi_label)
            for rank, (k, quality) in enumerate(found):
                i = usable[k]
                predicted = probabilities[k]
                if source.multi_label:
                    suggested = ", ".join(source.class_names[c] for c in np.flatnonzero(predicted > 0.5))
                else:
                    suggested = source.class_names[int(predicted.argmax())]
                report["label_errors"].append(
                    {
                        **_described(source, i),
                        "rank": rank + 1,
                        "label_quality": round(quality, 4),
                        "suggested": suggested,
                        "suggested_probability": round(float(predicted.max()), 4),
                    }
                )
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(report, source, out)
    report["out"] = str(out)
    return report


def train_check(data, dataset_paths: dict, data_dir=None) -> list[str]:
    """The cheap checks `vitkit train` runs at start over the files it is about to train on (headers and
    hashes, cached by path, size and time; no decoding): file problems, exact duplicates, and exact copies
    shared between its given splits. `dataset_paths`: {split: [Path]}. Returns lines for the start-up
    summary."""
    from .files import FATAL

    listed = [(split, path) for split, paths in dataset_paths.items() for path in paths]
    if not listed:
        return []
    cache = FactsCache(Path(data), data_dir)
    facts, _ = inspect_files([p for _, p in listed], cache, decode=False)
    kinds: dict[str, int] = {}
    for f in facts:
        for kind, _ in f.problems or []:
            if kind not in FATAL:
                kinds[kind] = kinds.get(kind, 0) + 1
    copies = leaks = 0
    for group in exact_groups([f.digest for f in facts]):
        copies += len(group) - 1
        leaks += len({listed[i][0] for i in group}) > 1
    found = []
    if kinds:
        found.append(", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))
    if copies:
        found.append(f"{copies} exact duplicate file(s)")
    if leaks:
        found.append(f"{leaks} image(s) shared between splits (the evaluation sees training images)")
    if not found:
        return ["check    no file problems, exact duplicates or leaks between splits"]
    return [f"check    {'; '.join(found)}: `vitkit check {data}` reports them"]


__all__ = ["CheckOptions", "run_check", "train_check"]
