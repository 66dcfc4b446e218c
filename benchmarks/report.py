"""The benchmarks page of the documentation, generated from benchmarks/results/*.json.

python benchmarks/report.py              # print the page (Markdown)
python benchmarks/report.py --out FILE   # write it

The documentation build (docs/hooks.py) calls `page()`, so the site always shows the files as committed.
Every row carries the date it was measured and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml
from common import REPO

RESULTS = REPO / "benchmarks" / "results"
CURVES = "curves"  # where the site serves the time-to-accuracy curves (docs/hooks.py copies them there)


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def machine_name(data: dict) -> str:
    """The machine of a result in a few words: CPU (or GPU), cores, and its fastest matrix instructions
    (AMX where it has them; the Machines table gives the rest)."""
    m = data["machine"]
    if m.get("cuda"):
        return m["cuda"]
    cpu = m["cpu"].replace("(R)", "").replace(" Processor", "").strip()
    if m.get("cpu_family") and not any(ch.isdigit() for ch in cpu):  # a name without a model number
        cpu += f" family {m['cpu_family']}"
    isa = m["cpu_bf16"].upper() if m.get("cpu_bf16") == "amx" else m["cpu_capability"]
    return f"{cpu} {m['cores']}-core {isa}"


def cell(row: dict, key: str, fmt: str, suffix: str = "") -> str:
    """A measured figure, or "-" for a row saved before that figure was measured."""
    return "-" if row.get(key) is None else f"{row[key]:{fmt}}{suffix}"


def result_files(stem: str) -> list[tuple[dict, str]]:
    """Each saved result of a benchmark, newest first, with the flag that names its file (none for the
    current file; those kept from other machines are renamed by date and CPU)."""
    found = [(json.loads(path.read_text()), path.name) for path in RESULTS.glob(f"{stem}*.json")]
    found.sort(key=lambda item: (item[0]["machine"]["date"], item[1] == f"{stem}.json"), reverse=True)
    return [(data, "" if name == f"{stem}.json" else f" --json benchmarks/results/{name}") for data, name in found]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def dated(data: dict) -> list[str]:
    """The first cells of every row: when and where it was measured."""
    return [data["machine"]["date"], machine_name(data)]


def machines() -> list[str]:
    """Every machine named on the page: what it reported, its native bf16 and torch build."""
    seen: dict[str, dict] = {}
    for path in sorted(RESULTS.glob("**/*.json")):
        data = json.loads(path.read_text())
        if "machine" in data:  # a file that records native bf16 wins over older ones that did not
            known = seen.setdefault(machine_name(data), data["machine"])
            if "cpu_bf16" not in known and "cpu_bf16" in data["machine"]:
                seen[machine_name(data)] = data["machine"]
    rows = [
        [
            name,
            m.get("cuda") or m["cpu"],
            str(m["cores"]),
            m["cpu_capability"],
            {"amx": "AMX", "avx512": "AVX512-BF16", None: "no"}[m["cpu_bf16"]] if "cpu_bf16" in m else "not recorded",
            str(m["torch_threads"]),
            m["torch"],
        ]
        for name, m in sorted(seen.items())
    ]
    return table(["machine", "reported as", "cores", "vector ISA", "native bf16", "torch threads", "torch"], rows)


def time_to_accuracy() -> list[str]:
    runs = [json.loads(path.read_text()) | {"stem": path.stem} for path in RESULTS.glob("time_to_accuracy/*.json")]
    out: list[str] = []
    for data_name in sorted({Path(run["data"]).name for run in runs}):
        group = [run for run in runs if Path(run["data"]).name == data_name]
        group.sort(key=lambda run: run["machine"]["date"], reverse=True)
        group.sort(key=lambda run: -run["minutes"])  # longest budget first, newest first within it
        rows, notes = [], []
        for run in group:
            flip_tta = any(r.get("test_top1_flip_tta") is not None for r in run["results"])
            base = (
                f"python benchmarks/time_to_accuracy.py --data {run['data']} --minutes {run['minutes']:g}"
                + " --flip-tta" * flip_tta
            )
            notes.append(
                f"- {run['machine']['date']}, {machine_name(run)}, {run['minutes']:g} minutes: "
                f"{commands(run['results'], base)} ([curve]({CURVES}/{run['stem']}.png))"
            )
            for r in run["results"]:
                rows.append(
                    dated(run)
                    + [
                        f"{run['minutes']:g} min",
                        r["recipe"],
                        f"{r['params_m']:.2f}M",
                        str(r["epochs"]),
                        cell(r, "images_per_s", ".0f"),
                        cell(r, "peak_share", ".2f"),
                        f"{r['best_val_top1']:.3f}",
                        f"{r['test_top1']:.3f}",
                        cell(r, "test_top1_flip_tta", ".3f"),
                        cell(r, "test_top1_multicrop_tta", ".3f"),
                        cell(r, "final_top1", ".3f"),
                        cell(r, "final_top1_flip_tta", ".3f"),
                    ]
                )
        out += ["", f"### {data_name}", ""]
        out += table(
            [
                "date",
                "machine",
                "budget",
                "recipe",
                "params",
                "epochs",
                "img/s",
                "peak share",
                "best val top-1",
                "held-out top-1",
                "flip TTA",
                "multi-crop TTA",
                "final model",
                "final, flip TTA",
            ],
            rows,
        )
        seeded = [(run, summary) for run in group for summary in run.get("seed_summary", [])]
        if seeded:
            out += ["", "Spread over seeds (held-out top-1):", ""]
            out += table(
                [
                    "date",
                    "machine",
                    "budget",
                    "recipe",
                    "seeds",
                    "epochs",
                    "mean",
                    "std",
                    "min",
                    "max",
                    "multi-crop TTA mean",
                ],
                [
                    dated(run)
                    + [
                        f"{run['minutes']:g} min",
                        s["recipe"],
                        str(s["seeds"]),
                        f"{s['epochs_mean']:.1f}",
                        f"{s['test_top1_mean']:.3f}",
                        f"{s['test_top1_std']:.3f}",
                        f"{s['test_top1_min']:.3f}",
                        f"{s['test_top1_max']:.3f}",
                        cell(s, "test_top1_multicrop_tta_mean", ".3f"),
                    ]
                    for run, s in seeded
                ],
            )
        out += ["", "Commands:", ""] + notes
    return out


def throughput() -> list[str]:
    rows, notes = [], []
    for data, where in result_files("throughput"):
        precision = "fp32" if data["amp"] == "off" else "bf16"
        notes.append(
            f"- {data['machine']['date']}, {machine_name(data)}: `python benchmarks/throughput.py --amp {data['amp']}"
            f"{' --compile' if data.get('compile') else ''}{where}` (end-to-end on {Path(data['data']).name})"
        )
        for r in data["rows"]:
            rows.append(
                dated(data)
                + [
                    precision,
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
                    cell(r, "peak_share_pct", ".1f", f"% of {r.get('peak_gflops') or 0:.0f}"),
                ]
            )
    out = table(
        [
            "date",
            "machine",
            "precision",
            "preset",
            "params",
            "batch",
            "px",
            "train img/s (model)",
            "train img/s (end-to-end)",
            "pipeline cost",
            "inference img/s",
            "channels-last gain",
            "train GFLOP/img",
            "share of peak (GFLOP/s)",
        ],
        rows,
    )
    return out + ["", "Commands:", ""] + notes


def vs_keras() -> list[str]:
    rows, notes = [], []
    for data, where in result_files("vs_keras"):
        bf16 = any(r.get("vitkit_bf16") for r in data["rows"])
        notes.append(
            f"- {data['machine']['date']}, {machine_name(data)}: `python benchmarks/vs_keras.py --models vit mixer"
            f"{' --compile' if data.get('compile') else ''}{where}` (vitkit's default there: "
            f"{'bf16 autocast' if bf16 else 'fp32, no native bf16'})"
        )
        for r in data["rows"]:
            rows.append(
                dated(data)
                + [
                    r["preset"],
                    f"{r['keras_ips']:.1f}",
                    f"{r['vitkit_ips']:.1f}",
                    f"{r['speedup']:.1f}x",
                    cell(r, "vitkit_fp32_ips", ".1f"),
                    cell(r, "fp32_speedup", ".1f", "x"),
                    f"{r['vitkit_first_step_s']:.0f}",
                ]
            )
    out = table(
        [
            "date",
            "machine",
            "preset",
            "Keras img/s (fp32)",
            "vitkit img/s (default)",
            "x Keras",
            "vitkit img/s (fp32)",
            "x Keras, fp32 vs fp32",
            "vitkit first step (s)",
        ],
        rows,
    )
    return out + ["", "Commands:", ""] + notes


def dated_table(data: dict, rows: list[dict], columns: dict) -> list[str]:
    """A table of one results file's rows, each dated and naming the machine. `columns`: header ->
    "key", "key:format" or a function of the row."""

    def value(row: dict, spec) -> str:
        if callable(spec):
            return spec(row)
        key, _, fmt = spec.partition(":")
        return "-" if row.get(key) is None else f"{row[key]:{fmt}}"

    return table(["date", "machine", *columns], [dated(data) + [value(r, s) for s in columns.values()] for r in rows])


def vs_transformers() -> list[str]:
    data = load("vs_transformers.json")
    if not data:
        return []
    compiled = f"; torch.compile took {data['compile_s']:.0f} s before the first step (not in the rates)"
    out = [
        f"{data['model']} at {data['image_size']} px, batch {data['batch_size']}; "
        f"`python benchmarks/vs_transformers.py --compile`{compiled * bool(data.get('compile_s'))}.",
        "",
    ]
    columns = {"path": "path", "train img/s": "train_ips:.1f", "x (train)": "train_x:.2f"}
    columns |= {"inference img/s": "infer_ips:.1f", "x (inference)": "infer_x:.2f"}
    return out + dated_table(data, data["rows"], columns)


def inference() -> list[str]:
    data = load("inference.json")
    if not data:
        return []
    on = data.get("agreement_measured_on") or {}
    trained = on.get("checkpoint")
    out = [
        f"Speed: {data['model']} on identical weights, batch {data['batch_size']}. "
        + (
            f"Top-1 agreement with fp32: a trained {trained['model']} on {trained['images']:,} held-out "
            f"{trained['split']} images of {trained['data']}. "
            if trained
            else ""
        )
        + f"The default path (`vitkit.load` with no options) ran {data['default_path']['backend']}, "
        f"{data['default_path']['precision']}: {data['default_path']['precision_reason']}. "
        "`python benchmarks/inference.py --checkpoint RUN`.",
        "",
    ]
    columns = {"path": "path", "img/s": "ips:.1f", "x transformers fp32": "speedup_vs_transformers_fp32:.2f"}
    columns |= {"p50 ms (1 image)": "p50_ms:.1f", "p95 ms (1 image)": "p95_ms:.1f"}
    columns |= {"max abs logit diff": "max_abs_logit_diff:.1e"}
    if trained:
        columns |= {"top-1 agreement": "top1_agreement:.2%", "top-1 change": "top1_delta:+.4f"}
    return out + dated_table(data, data["rows"], columns)


def data_pipeline() -> list[str]:
    data = load("data_pipeline.json")
    if not data:
        return []
    out = ["`python benchmarks/data_pipeline.py`. The pipelines alone:", ""]
    columns = {"data": "data", "px": "size:d", "batch": "batch:d", "pipeline": "pipeline", "img/s": "images_per_s:,.0f"}
    out += dated_table(data, data["pipelines"], columns)
    out += ["", "Training img/s with every batch from each source, against the model alone on one fixed batch:", ""]
    columns = {"data": "data", "px": "size:d", "model": "model", "model alone": "model_only:.1f"}
    columns["streamed (cost)"] = lambda r: f"{r['streamed']:.1f} ({r['streamed_cost']:.1%})"
    columns["in memory (cost)"] = lambda r: f"{r['in_memory']:.1f} ({r['in_memory_cost']:.1%})"
    return out + dated_table(data, data["training"], columns)


def source_cell(source: dict | None) -> str:
    if source is None:
        return "none published"
    return f"{source['name']} {source['top1']:.4f} ({source['epochs']:g} epochs)"


def recipe_parity() -> list[str]:
    found = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("recipe_parity/*.json"))]
    rows = [r for r in found if r.get("ablation") is None]
    ablation = recipe_parity_ablation([r for r in found if r.get("ablation") is not None])
    if not rows:
        return ablation
    rows.sort(key=lambda r: (r["machine"]["date"], r["recipe"], -r["seed"]), reverse=True)
    header = ["date", "machine", "recipe", "data", "epochs", "top-1", "multi-crop TTA", "source (TTA)", "seed"]
    spread = recipe_parity_seeds(rows)
    return (spread + [""] if spread else []) + (ablation + [""] if ablation else []) + table(
        header,
        [
            dated(r)
            + [r["recipe"], r["data"], str(r["epochs"]), f"{r['test_top1']:.4f}", f"{r['tta_top1']:.4f}"]
            + [source_cell(r["source"]), str(r["seed"])]
            for r in rows
        ],
    )


def recipe_parity_seeds(rows: list[dict]) -> list[str]:
    """Runs of the same recipe, data, epochs and machine class under different seeds: their spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["recipe"], r["data"], r["epochs"], machine_name(r), r["machine"].get("flags_class"))
        groups.setdefault(key, []).append(r)
    spread = [(key, runs) for key, runs in groups.items() if len({r["seed"] for r in runs}) > 1]
    if not spread:
        return []
    header = ["machine", "recipe", "epochs", "seeds", "top-1 mean (min-max)", "TTA mean (min-max)", "source (TTA)"]
    out = []
    for (recipe, _, epochs, machine, _), runs in spread:
        cells = []
        for key in ("test_top1", "tta_top1"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.fmean(values):.4f} ({min(values):.4f}-{max(values):.4f})")
        seeds = ", ".join(str(s) for s in sorted(r["seed"] for r in runs))
        out.append([machine, recipe, str(epochs), seeds, *cells, source_cell(runs[0]["source"])])
    return ["The same recipe under different seeds:", ""] + table(header, out)


def recipe_parity_ablation(rows: list[dict]) -> list[str]:
    """Each ablation run (`recipe_parity.py --ablation`): the recipe as it was, each fix alone and all of
    them, with what each buys against the recipe as it was."""
    runs: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["machine"]["date"], machine_name(r), r["preset"], r["data"], r["epochs"], r["seed"])
        runs.setdefault(key, {})[r["ablation"]] = r
    out = []
    for (date, machine, preset, data, epochs, seed), by_fix in sorted(runs.items(), reverse=True):
        before = by_fix.get("before")
        if before is None:
            continue
        out += [
            f"Ablation of `{preset}` ({date}, {machine}, {data}, {epochs} epochs, seed {seed}, "
            f"{before['parameters']:,} parameters): the recipe as it was before it followed its source, with each "
            "fix alone, and with all of them (the preset as it is).",
            "",
        ]
        header = ["run", "top-1", "multi-crop TTA", "top-1 - before", "TTA - before", "train s"]
        order = ["before"] + sorted(set(by_fix) - {"before", "all fixed"}) + ["all fixed"]
        cells = [
            [name, f"{r['test_top1']:.4f}", f"{r['tta_top1']:.4f}", f"{r['test_top1'] - before['test_top1']:+.4f}"]
            + [f"{r['tta_top1'] - before['tta_top1']:+.4f}", f"{r['train_time_s']:.0f}"]
            for name in order
            if (r := by_fix.get(name))
        ]
        out += table(header, cells) + [""]
    return out[:-1]


def vs_airbench() -> list[str]:
    runs = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("vs_airbench/*.json"))]
    header = ["date", "machine", "widths", "epochs", "held out", "transcription: top-1", "TTA"]
    header += ["cifar-fast: top-1", "TTA", "cifar-fast - transcription (TTA)"]
    rows = [
        dated(r)
        + ["-".join(map(str, r["widths"])), str(r["epochs"]), f"{r['held_out_images']:,}"]
        + [f"{r['transcription']['test_top1']:.4f}", f"{r['transcription']['tta_top1']:.4f}"]
        + [f"{r['vitkit']['test_top1']:.4f}", f"{r['vitkit']['tta_top1']:.4f}", f"{r['gap_tta_top1']:+.4f}"]
        for r in runs
    ]
    if not rows:
        return []
    intro = (
        "The same split and epochs for vitkit's `cifar-fast` and an independent transcription of airbench94's "
        "method in plain PyTorch (`python benchmarks/vs_airbench.py`): what vitkit's recipe gives against "
        "what the source's method gives on these images."
    )
    return [intro, ""] + table(header, rows)


def jpeg_cost() -> list[str]:
    runs = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("jpeg_cost/*.json"))]
    header = ["date", "machine", "recipe", "epochs", "PNG: top-1", "TTA", "JPEG 75: top-1", "TTA", "cost (TTA)"]
    rows = []
    for r in runs:
        png, jpeg = r["rows"]["png"], r["rows"]["jpeg75"]
        extra = "".join(f" {k}={v}" for k, v in r["overrides"].items())
        rows.append(
            dated(r)
            + [r["recipe"] + extra, str(r["epochs"]), f"{png['test_top1']:.4f}", f"{png['tta_top1']:.4f}"]
            + [f"{jpeg['test_top1']:.4f}", f"{jpeg['tta_top1']:.4f}", f"{r['cost_tta_top1']:+.4f}"]
        )
    if not rows:
        return []
    intro = (
        "The CIFAR-10 copy here is JPEG (quality 75, 4:2:0 chroma). What that costs a recipe, measured on "
        "CIFAR-100 (the only lossless CIFAR here) written out both ways (`python benchmarks/jpeg_cost.py`):"
    )
    return [intro, ""] + table(header, rows)


def dataset_check() -> list[str]:
    rows = [
        dated(data)
        + [
            f"`{data['data']}`",
            f"{data['images']:,}",
            f"{data['minutes']:g} min ({data['check_seconds']:.0f} s)",
            f"{data['label_error_recall']:.2f} / {data['label_error_precision']:.2f}",
            f"{data['planted_pairs_found']} of {data['planted_pairs']}",
            f"{data['pairs_not_planted_false']} ({data['pairs_not_planted_in_source']})",
            f"{data['broken_found']} of {data['broken_planted']}",
        ]
        for data, _ in result_files("check")
    ]
    if not rows:
        return []
    header = ["date", "machine", "data", "images", "budget (used)", "label errors: recall / precision"]
    header += ["planted duplicates found", "false pairs (pairs in the source)", "broken files found"]
    return ["`python benchmarks/check.py --data ../shared/data/cifar10-train --minutes 15`", ""] + table(header, rows)


def serving() -> list[str]:
    data = load("serve_load.json")
    out: list[str] = []
    if data:
        out += [
            f"A real `vitkit serve` process (backend {data['backend']}) on loopback, the load generator on the same "
            "machine; `python benchmarks/serve_load.py --checkpoint RUN --label LABEL --abuse heavy,huge,many,thin`. "
            "Rows are labelled by the build measured.",
            "",
        ]
        columns = {"label": "label", "clients": "clients:d", "requests/s": "req_per_s:.1f"}
        columns |= {"p50 ms": "p50_ms:.1f", "p95 ms": "p95_ms:.1f", "failures": "failures:d"}
        out += dated_table(data, data["load"], columns)
        out += ["", "Under abusive requests: the server's memory and a small request's latency meanwhile:", ""]
        columns = {"label": "label", "abuse": "kind"}
        columns["status"] = lambda r: ", ".join(map(str, sorted(set(r["abusive_status"]))))
        columns |= {"idle RSS MiB": "idle_rss_mib:.0f", "peak RSS MiB": "peak_rss_mib:.0f"}
        columns["small request p50 / max ms"] = lambda r: f"{r['small_p50_ms']:.0f} / {r['small_max_ms']:.0f}"
        out += dated_table(data, data["abuse"], columns)
    if pool := load("decode_pool.json"):
        out += ["", "Decoding uploads on threads against processes (`python benchmarks/decode_pool.py`):", ""]
        columns = {"pool": "pool", "img/s": "images_per_s:.0f", "longest event-loop stall ms": "max_stall_ms:.1f"}
        out += dated_table(pool, pool["rows"], columns)
    return out


def ood() -> list[str]:
    data = load("ood.json")
    if not data:
        return []
    percent = lambda value: "-" if value is None else f"{value:.3f}"  # noqa: E731
    rows = [
        dated(data) + [r["model"], r["ood"], r["method"], f"{r['auroc']:.3f}", f"{r['fpr95']:.3f}"]
        + [percent(r["openood_auroc"]), percent(r["openood_fpr95"])]
        for r in data["rows"]
    ]
    header = ["date", "machine", "model", "OOD", "method", "AUROC", "FPR@95", "OpenOOD v1.5 AUROC", "OpenOOD FPR@95"]
    out = [f"`{data['command']}`", ""] + table(header, rows) + [""]
    calibration = [
        dated(data) + [name, c["split"], f"{c['top1']:.4f}", f"{c['temperature']:.3f}"]
        + [f"{c['before'][k]:.4f} -> {c['after'][k]:.4f}" for k in ("ece", "nll", "brier")]
        for name, c in data["calibration"].items()
    ]
    out += table(["date", "machine", "model", "split", "top-1", "T", "ECE", "NLL", "Brier"], calibration)
    reject = data["reject_unknown"]
    out += [
        "",
        f"`--reject-unknown` with the flowers model: {reject['posters_rejected']:.1%} of {reject['posters']} movie "
        f"posters rejected ({reject.get('method', 'recorded')} score), {reject['validation_kept']:.1%} of its "
        f"{reject['validation_photos']} validation photos kept.",
    ]
    if parity := data.get("hf_pipeline_parity"):
        out += [
            "",
            f"transformers' pipeline on the calibrated ViT's Hugging Face export (T = {parity['temperature']:.3f}) "
            f"against vitkit: largest score difference {parity['max_abs_score_diff']:.1e} over {parity['images']} "
            "images.",
        ]
    return out


INTRO = """---
hide:
  - navigation
---

# Benchmarks

Generated from `benchmarks/results/*.json` by `python benchmarks/report.py`: every row is dated and names
the machine it ran on. The scripts in `benchmarks/` print a table and write those files. Compare figures
measured side by side in one run; absolute rates drift on shared machines.

| script | measures |
|---|---|
| `time_to_accuracy.py` | recipes side by side at equal wall clock (CSV and a PNG curve) |
| `recipe_parity.py` | a recipe for fixed epochs, beside its published source if any, and which fix buys what |
| `vs_airbench.py` | cifar-fast beside an independent transcription of airbench94's method, same split |
| `jpeg_cost.py` | what JPEG quality 75 costs a recipe at 32 px (CIFAR-100 as PNG and as JPEG) |
| `throughput.py` | training (model alone, and end to end on real images) and inference images/s per preset |
| `vs_keras.py` | the seed presets against the Keras 3 + JAX reference |
| `vs_transformers.py` | vitkit's ViT against transformers' on identical configuration and weights |
| `inference.py` | every inference path (fp32, bf16, INT8, OpenVINO) against transformers, with agreement |
| `data_pipeline.py` | decoding and streaming rates, and what they cost a training step |
| `serve_load.py` | a real `vitkit serve` under load and under abusive requests |
| `decode_pool.py` | decoding uploads on threads against processes |
| `ood.py` | calibration (ECE before and after) and unknown-input rejection (AUROC, FPR@95) per method |
| `gpu.sh` | a GPU run: fast tests, a CIFAR-10 speedrun and throughput, each under its own timeout |
"""


def page() -> str:
    sections = [
        (
            "Time to accuracy",
            "Top-1 on held-out images after training each recipe for the same wall-clock budget "
            "(`--time-budget`): the test split, or where the data has none the validation split, which then "
            "also chose the best checkpoint; the final model's columns are the last weights, which nothing "
            "selected.",
            time_to_accuracy(),
        ),
        (
            "Throughput per preset",
            "Training images/s of the model alone on one batch and end to end (in-memory "
            "loader, on-device augmentation, step); the share of peak is the model-only rate times the training "
            "GFLOP per image (matrix products and convolutions, forward and backward) over a 2048x2048 matrix "
            "product's rate in the same precision.",
            throughput(),
        ),
        (
            "Seed presets against Keras",
            "Batch 256, real CIFAR images, training images/s after compilation. Keras "
            "trains in fp32; vitkit with its defaults and in fp32, so the second ratio is the implementation's "
            "alone.",
            vs_keras(),
        ),
        (
            "Recipe parity",
            "A recipe trained a fixed number of epochs beside the published number of the method it follows "
            "(where there is one): its last epoch's weights on the held-out split, as they are and with "
            "multi-crop TTA "
            "(`python benchmarks/recipe_parity.py`).",
            recipe_parity() + [""] + vs_airbench() + [""] + jpeg_cost(),
        ),
        (
            "Calibration and unknown inputs",
            "Post-hoc unknown-input scores of a CIFAR-10 and a flowers model (`python benchmarks/ood.py`): AUROC "
            "and FPR at 95% TPR against near-OOD (CIFAR-100) and far-OOD sets, beside OpenOOD v1.5's published "
            "ResNet-18 CIFAR-10 numbers (another model and other OOD sets: a reference point, not a like-for-like "
            "comparison); the temperature's effect on the reported split. See [Scores you can trust](scores.md).",
            ood(),
        ),
        ("ViT against transformers", "", vs_transformers()),
        ("Inference", "", inference()),
        ("Data pipeline", "", data_pipeline()),
        ("Serving", "", serving()),
        (
            "Dataset check",
            "`vitkit check` on a planted copy (5% of labels flipped, 50 resized and re-encoded test images copied "
            "into train, five broken files): label errors flagged by confident learning on out-of-fold "
            "predictions within the budget; false pairs are found pairs involving a planted file that were not "
            "planted, and in brackets the pairs of two unchanged source images (CIFAR-10's own near-duplicates).",
            dataset_check(),
        ),
    ]
    out = [INTRO, "## Machines", ""] + machines()
    for title, text, body in sections:
        if body:
            out += ["", f"## {title}", ""] + ([text, ""] if text else []) + body
    return "\n".join(out).rstrip("\n") + "\n"


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Markdown file to write (default: print the page)")
    args = parser.parse_args()
    text = page()
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.out}: the benchmarks page, from {RESULTS.relative_to(REPO)}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
