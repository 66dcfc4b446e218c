"""Gather the parts of `benchmarks/gpu.sh` into one JSON file (benchmarks/results/gpu.json) and print a
summary: each part's status and seconds, the CUDA test counts, the throughput rows (and the models that
the time did not reach), and the speedrun's wall time and time to the target top-1."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from common import machine, print_table, write_json

from vitkit.models.presets import RECIPES

VIT = "vit_small_patch16_224"


def read_parts(work: Path) -> dict[str, dict]:
    parts = {}
    path = work / "parts.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, seconds, note = (line.split("\t") + [""] * 4)[:4]
        parts[name] = {"status": status, "seconds": int(seconds), **({"note": note} if note else {})}
    return parts


def read_tests(work: Path, part: dict | None) -> dict:
    out = dict(part or {"status": "skipped"})
    xml = work / "tests.xml"
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] = sum(int(s.get(key, 0)) for s in suites)
        out["failed"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in root.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    return out


def read_throughput(work: Path, parts: dict) -> dict:
    rows, meta = [], {}
    for name in ("throughput-vit", "throughput-recipes"):
        path = work / f"{name}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            rows += saved["rows"]
            meta = {k: saved[k] for k in ("data", "amp", "compile", "device") if k in saved}
    wanted = [VIT] + [p.name for p in RECIPES]
    measured = {r["name"] for r in rows}
    return {
        **meta,
        "parts": {k: v for k, v in parts.items() if k.startswith("throughput")},
        "rows": rows,
        "not_measured": [n for n in wanted if n not in measured],
    }


def read_speedrun(work: Path, parts: dict, target: float) -> dict:
    ran = [k for k in ("speedrun", "speedrun-eager") if k in parts]
    out = {"parts": {k: parts[k] for k in ran}, "target_val_top1": target}
    if not ran:
        return {**out, "status": "skipped"}
    out["status"] = parts[ran[-1]]["status"]
    out["wall_s"] = parts[ran[-1]]["seconds"]  # the whole command: start-up, decoding, training, final evaluation
    files = sorted((work / "speedrun").glob("*.json"))
    if not files:
        return out
    saved = json.loads(files[0].read_text())
    recipes = [speedrun_row(result, saved, target) for result in saved["results"]]
    # the best recipe's fields at the top level (results are saved best first), every recipe's under "recipes"
    return {**out, **recipes[0], "recipes": recipes, "peak_gflops": saved.get("peak_gflops")}


def speedrun_row(result: dict, saved: dict, target: float) -> dict:
    curve = result["curve"]
    reached = next((t for t, v in curve if v >= target), None)
    return {
        "recipe": result["recipe"],
        "overrides": result["overrides"],
        "minutes": saved["minutes"],
        "data": Path(saved["data"]).name,
        "params_m": result["params_m"],
        "epochs": result["epochs"],
        "train_time_s": result["train_time_s"],  # the training clock: compilation included, data loading not
        "best_val_top1": result["best_val_top1"],
        "best_checkpoint_val_top1": result["test_top1"],  # no test split here: the held-out split again
        "multicrop_tta_val_top1": result.get("test_top1_multicrop_tta"),
        "images_per_s": result.get("images_per_s"),
        "peak_share": result.get("peak_share"),
        "time_to_target_s": reached,
        "target_reached": reached is not None,
        "curve": curve,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="gpu.sh's working folder")
    parser.add_argument("--target", type=float, default=0.94)
    parser.add_argument("--json", default="benchmarks/results/gpu.json")
    parser.add_argument("--elapsed", type=int, default=None, help="seconds the whole script took")
    parser.add_argument("--deadline", type=int, default=None)
    args = parser.parse_args()
    parts = read_parts(args.work)
    payload = {
        "machine": machine(),
        "command": "bash benchmarks/gpu.sh",
        "elapsed_s": args.elapsed,
        "deadline_s": args.deadline,
        "data": {k: v for k, v in parts.items() if k.startswith("data")},
        "tests": read_tests(args.work, parts.get("tests")),
        "speedrun": read_speedrun(args.work, parts, args.target),
        "throughput": read_throughput(args.work, parts),
    }
    print()
    for name, part in parts.items():
        print(f"{name:20s} {part['status']:8s} {part['seconds']:5d} s  {part.get('note', '')}")
    tests = payload["tests"]
    if "tests" in tests:
        failed = tests["failures"] + tests["errors"]
        print(f"\ntests: {tests['tests']} run, {failed} failed, {tests['skipped']} skipped")
    for speed in payload["speedrun"].get("recipes", []):
        when = f"{speed['time_to_target_s']:.0f} s" if speed["target_reached"] else "not reached"
        print(
            f"\nspeedrun {speed['recipe']}: {speed['epochs']} epochs in {speed['train_time_s']} s of training, "
            f"best held-out top-1 {speed['best_val_top1']:.4f}; top-1 >= {args.target}: {when}"
        )
    rows = payload["throughput"]["rows"]
    if rows:
        print()
        print_table(
            rows,
            [
                ("name", "model", "s"),
                ("batch", "batch", "d"),
                ("image_size", "px", "d"),
                ("train_model_ips", "train img/s (model)", ".0f"),
                ("train_e2e_ips", "train img/s (end-to-end)", ".0f"),
                ("infer_ips", "infer img/s", ".0f"),
                ("first_step_s", "first step (s)", ".1f"),
            ],
        )
    if payload["throughput"]["not_measured"]:
        print("not measured (time ran out or the part failed):", " ".join(payload["throughput"]["not_measured"]))
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
