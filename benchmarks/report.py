"""Regenerate the README's benchmark section from benchmarks/results/*.json.

python benchmarks/report.py          # rewrites the part of README.md between the markers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from common import REPO

RESULTS = REPO / "benchmarks" / "results"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def machine_line(data: dict) -> str:
    m = data["machine"]
    bf16 = f", bf16 on {m['cpu_bf16'].upper()}" if m.get("cpu_bf16") else ""
    where = m["cuda"] or f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} threads ({m['cpu_capability']}{bf16})"
    return f"{m['date']}, {where}, torch {m['torch']}"


def cell(row: dict, key: str, fmt: str, suffix: str = "") -> str:
    """A measured figure, or "-" for a row saved before that figure was measured."""
    return "-" if row.get(key) is None else f"{row[key]:{fmt}}{suffix}"


def result_files(results: Path, stem: str) -> list[tuple[dict, str]]:
    """Each saved result of a benchmark with the flag that names its file: the current file first, then
    those kept from other machines (renamed by date and CPU)."""
    paths = sorted(results.glob(f"{stem}*.json"), key=lambda p: p.name != f"{stem}.json")
    return [
        (json.loads(path.read_text()), "" if path.name == f"{stem}.json" else f" --json benchmarks/results/{path.name}")
        for path in paths
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def section(results: Path) -> list[str]:
    out: list[str] = []
    for data, where in result_files(results, "vs_keras"):
        bf16 = any(r.get("vitkit_bf16") for r in data["rows"])
        default = "bf16 autocast on this CPU" if bf16 else "fp32 on this CPU, which has no native bf16"
        out += [
            "",
            f"**Seed presets against the Keras 3 + JAX reference** ({machine_line(data)}; "
            f"`python benchmarks/vs_keras.py --models vit mixer{' --compile' if data.get('compile') else ''}{where}`, "
            "batch 256, real CIFAR images, training img/s after compilation; the first step includes compilation "
            f"and is not in the rate). Keras trains in fp32; vitkit is measured with its defaults ({default}) "
            "and in fp32, so the second ratio is the implementation's alone:",
            "",
        ]
        out += table(
            [
                "preset",
                "Keras img/s (fp32)",
                "vitkit img/s (default)",
                "x Keras",
                "vitkit img/s (fp32)",
                "x Keras, fp32 vs fp32",
                "vitkit first step (s)",
            ],
            [
                [
                    r["preset"],
                    cell(r, "keras_ips", ".1f"),
                    f"{r['vitkit_ips']:.1f}",
                    cell(r, "speedup", ".1f", "x"),
                    cell(r, "vitkit_fp32_ips", ".1f"),
                    cell(r, "fp32_speedup", ".1f", "x"),
                    f"{r['vitkit_first_step_s']:.0f}",
                ]
                for r in data["rows"]
            ],
        )
    if data := load(results, "vs_transformers.json"):
        out += [
            "",
            f"**vitkit ViT against transformers' ViTForImageClassification**, identical config and weights "
            f"({data['model']} @ {data['image_size']} px, batch {data['batch_size']}; {machine_line(data)}; "
            "`python benchmarks/vs_transformers.py --compile`):",
            "",
        ]
        out += table(
            ["path", "train img/s", "x", "inference img/s", "x"],
            [
                [
                    r["path"],
                    f"{r['train_ips']:.1f}",
                    f"{r['train_x']:.2f}",
                    f"{r['infer_ips']:.1f}",
                    f"{r['infer_x']:.2f}",
                ]
                for r in data["rows"]
            ],
        )
        if data.get("compile_s"):
            out += ["", f"torch.compile took {data['compile_s']:.0f} s before the first step (not in the rates)."]
    if data := load(results, "inference.json"):
        out += [
            "",
            f"**Inference** ({data['model']}, batch {data['batch_size']}; {machine_line(data)}; "
            "`python benchmarks/inference.py`):",
            "",
        ]
        out += table(
            ["path", "img/s", "x transformers", "p50 ms (1 image)", "p95 ms (1 image)", "max abs logit diff"],
            [
                [
                    r["path"],
                    f"{r['ips']:.1f}",
                    f"{r['speedup_vs_transformers']:.2f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p95_ms']:.1f}",
                    f"{r['max_abs_diff_vs_transformers']:.1e}",
                ]
                for r in data["rows"]
            ],
        )
    for data, where in result_files(results, "throughput"):
        out += [
            "",
            f"**Throughput per preset** ({machine_line(data)}; `python benchmarks/throughput.py "
            f"--amp {data['amp']}{' --compile' if data.get('compile') else ''}{where}`; "
            f"end-to-end = in-memory loader + on-device augmentation + step, on {Path(data['data']).name}; "
            "share of peak = model-only rate x training GFLOP per image (matmuls and convolutions, forward and "
            f"backward) over a {data['amp'] == 'off' and 'fp32' or 'bf16'} 2048x2048 matrix product's rate):",
            "",
        ]
        out += table(
            [
                "preset",
                "params",
                "batch",
                "px",
                "train img/s (model)",
                "train img/s (end-to-end)",
                "pipeline cost",
                "inference img/s",
                "channels-last gain (model)",
                "train GFLOP/img",
                "share of peak",
            ],
            [
                [
                    r["name"] + (" (later run)" if r.get("remeasured") else ""),
                    f"{r['params_m']:.2f}M",
                    str(r["batch"]),
                    str(r["image_size"]),
                    f"{r['train_model_ips']:.1f}",
                    f"{r['train_e2e_ips']:.1f}",
                    f"{r['pipeline_overhead_pct']:.1f}%",
                    f"{r['infer_ips']:.1f}",
                    cell(r, "channels_last_gain", ".2f", "x"),
                    cell(r, "train_gflop_per_image", ".3f"),
                    cell(r, "peak_share_pct", ".1f", f"% of {r.get('peak_gflops') or 0:.0f} GFLOP/s"),
                ]
                for r in data["rows"]
            ],
        )
    for name in sorted(results.glob("time_to_accuracy/*.json")):
        data = json.loads(name.read_text())
        flip_tta = any(r.get("test_top1_flip_tta") is not None for r in data["results"])
        final = any(r.get("final_top1") is not None for r in data["results"])
        base = (
            f"python benchmarks/time_to_accuracy.py --data {data['data']} --minutes {data['minutes']:g}"
            + " --flip-tta" * flip_tta
        )
        out += [
            "",
            f"**Equal wall clock: {data['minutes']:g} minutes on {Path(data['data']).name}** "
            f"({machine_line(data)}; {commands(data['results'], base)}; "
            f"curve: `benchmarks/results/time_to_accuracy/{name.stem}.png`):",
            "",
        ]
        out += table(
            ["recipe", "params", "epochs", "best val top-1", "test top-1"]
            + ["test top-1, flip TTA"] * flip_tta
            + ["final model top-1", "final, flip TTA"][: final + (final and flip_tta)],
            [
                [
                    r["recipe"],
                    f"{r['params_m']:.2f}M",
                    str(r["epochs"]),
                    f"{r['best_val_top1']:.3f}",
                    f"{r['test_top1']:.3f}",
                ]
                + [cell(r, "test_top1_flip_tta", ".3f")] * flip_tta
                + [cell(r, "final_top1", ".3f"), cell(r, "final_top1_flip_tta", ".3f")][: final + (final and flip_tta)]
                for r in data["results"]
            ],
        )
    return out


def preset_of(row: dict) -> str:
    """The preset a time_to_accuracy row trained (rows saved before it was recorded: its label's first word)."""
    return row.get("preset") or row["recipe"].split()[0]


def yaml_value(value) -> str:
    """A --set value as time_to_accuracy reads it back (YAML flow style, one line)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def row_flags(row: dict) -> str:
    """The flags beyond --recipes that reproduce a time_to_accuracy row ("" for a preset as it is)."""
    overrides = dict(row.get("overrides") or {})
    limit = overrides.pop("train_limit", None)
    sets = [f"{k}={yaml_value(v)}" for k, v in overrides.items()]
    flags = f" --train-limit {limit}" * bool(limit) + (" --set " + " ".join(f"'{s}'" for s in sets)) * bool(sets)
    if row["recipe"] != " ".join([preset_of(row)] + sets):
        flags += f' --label "{row["recipe"]}"'
    return flags


def commands(results: list[dict], base: str) -> str:
    """Markdown: the command of the rows trained as their presets are, then one `--merge` command per
    group of rows trained with the same changes."""
    groups: dict[str, list[str]] = {}
    for row in results:
        groups.setdefault(row_flags(row), []).append(preset_of(row))
    first = groups.pop("", None)
    parts = [f"`{base} --recipes {' '.join(dict.fromkeys(first))}`"] if first else []
    for flags, presets in groups.items():
        parts.append(f"`{base} --recipes {' '.join(dict.fromkeys(presets))}{flags}{' --merge' * bool(parts)}`")
    return ", then ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmarks' JSON files")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="file whose section is rewritten")
    args = parser.parse_args()
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    lines = section(args.results)
    args.readme.write_text(head + START + "\n" + "\n".join(lines).strip("\n") + "\n" + END + tail)
    print(f"{args.readme.name} benchmark section regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
