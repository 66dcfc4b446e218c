"""Bad inputs to the inference commands: every kind of awkward image through predict and the server, bad
arguments and damaged checkpoints, read-only run folders, link loops. Each gets a clean result or a one-line
error, never a traceback or a 5xx."""

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import torch
from conftest import read_only, run_vitkit, subprocess_env, vitkit_cmd, write_class_folders
from corpus import write_corpus
from safetensors.torch import load_file, save_file
from serving import running_server

from vitkit.cli import main
from vitkit.data.pack import pack_folder
from vitkit.errors import VitkitError
from vitkit.fileio import write_json
from vitkit.inference import onnx_cache_path
from vitkit.inference.predict import expand_paths
from vitkit.models import create_model, save_model
from vitkit.pretrained import load_pretrained
from vitkit.serve.server import warn_if_exposed

OLD_RUN = Path(__file__).parent / "fixtures" / "run-v0.1"


def one_line_error(capsys, args: tuple[str, ...], *needles: str) -> None:
    """`vitkit ARGS` run in-process exits 2 with one line on stderr naming each needle."""
    try:
        status = main(list(args))
    except SystemExit as e:  # argparse's refusals
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status == 2, (args, err)
    last = err.splitlines()[-1]
    assert last.startswith(f"vitkit {args[0]}: error: "), (args, err)
    for needle in needles:
        assert needle in last, (needle, err)


def test_every_corpus_kind_through_predict(digits_run, tmp_path):
    out, _ = digits_run
    written = write_corpus(tmp_path / "corpus")
    proc = run_vitkit("predict", str(out), str(tmp_path / "corpus"), "--format", "json", "--backend", "torch")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stderr[-2000:]  # some files are refused, the rest classified
    results = {r["path"]: r for r in json.loads(proc.stdout)["results"]}
    assert set(results) == {str(path) for _, path in written}
    for case, path in written:
        result = results[str(path)]
        if case.ok or (case.ok is None and "error" not in result):
            assert len(result.get("predictions", [])) == 5, (case.kind, result)
        else:
            assert str(path) in result["error"] and "\n" not in result["error"], (case.kind, result)


@pytest.mark.slow
def test_every_corpus_kind_through_the_server(digits_run, tmp_path):
    out, _ = digits_run
    log = tmp_path / "server.log"
    with running_server(out, "--backend", "torch", log=log) as (base, _):
        for case, _ in write_corpus(tmp_path / "corpus"):
            response = httpx.post(
                base + "/predict", files=[("file", (case.filename, case.data, "image/png"))], timeout=60
            )
            if case.ok or (case.ok is None and response.status_code == 200):
                assert response.status_code == 200, (case.kind, response.text)
                assert len(response.json()[0]["predictions"]) == 5
            else:
                assert response.status_code in (400, 413, 415), (case.kind, response.status_code, response.text)
                assert case.filename in response.json()["error"], (case.kind, response.text)
        assert httpx.get(base + "/health").status_code == 200
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_bad_arguments_get_one_line_errors(digits_run, tmp_path, capsys):
    out = str(digits_run[0])
    image = str(tmp_path / "x.png")
    cases = [
        (("predict", out, image, "--topk", "-1"), "--topk"),
        (("predict", out, image, "--batch-size", "0"), "--batch-size"),
        (("predict", out, image, "--threads", "-1"), "--threads"),
        (("serve", out, "--threads", "-1"), "--threads"),
        (("serve", out, "--max-files", "0"), "--max-files"),
        (("serve", out, "--client-timeout", "nan"), "--client-timeout"),
        (("serve", out, "--max-upload-mb", "20", "--max-inflight-mb", "10"), "--max-inflight-mb"),
        (("eval", out, "--batch-size", "0"), "--batch-size"),
        (("explain", out, image, "--out", "x.png", "--topk", "0"), "--topk"),
        (("export", out, "m.onnx", "--opset", "-3"), "--opset"),
    ]
    for args, flag in cases:
        one_line_error(capsys, args, flag)


def copy_checkpoint(digits_run, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(digits_run[0] / "best", checkpoint)
    return checkpoint


def test_a_bug_keeps_its_traceback_while_a_mistake_is_one_line(monkeypatch, tmp_path, capsys):
    """Only VitkitError (the user's mistake) becomes exit 2 and one line; a ValueError from inside vitkit
    is a bug and reaches the caller with its traceback."""
    import traceback

    import vitkit.training.resolve as resolve

    assert main(["train", "--lr", "-1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "vitkit train: error: --lr must be positive, got -1.0" and "Traceback" not in err

    def broken(data):
        raise ValueError("internal: a dataset default went missing")

    monkeypatch.setattr(resolve, "dataset_defaults", broken)
    with pytest.raises(ValueError, match="internal: a dataset default") as caught:
        main(["train", "--out", str(tmp_path / "run")])
    assert not isinstance(caught.value, VitkitError)
    frames = [frame.name for frame in traceback.extract_tb(caught.tb)]
    assert frames.index("main") < frames.index("make_config") and frames[-1] == "broken"
    assert "error:" not in capsys.readouterr().err


def test_damaged_checkpoints_get_one_line_errors(digits_run, digit_images, tmp_path, capsys):
    image = str(digit_images[0][0])
    empty_config = copy_checkpoint(digits_run, tmp_path / "a")
    (empty_config / "config.json").write_text("{}")
    one_line_error(capsys, ("predict", str(empty_config), image), "config.json", "not a vitkit model config")

    wrong_shape = copy_checkpoint(digits_run, tmp_path / "b")
    state = load_file(str(wrong_shape / "model.safetensors"))
    widest = max(state, key=lambda k: state[k].dim())
    state[widest] = torch.zeros(state[widest].shape[0] + 1, *state[widest].shape[1:])
    save_file(state, str(wrong_shape / "model.safetensors"))
    one_line_error(capsys, ("predict", str(wrong_shape), image), "model.safetensors", "wrong shape", widest)

    renamed = copy_checkpoint(digits_run, tmp_path / "c")
    meta = json.loads((renamed / "config.json").read_text())
    meta["class_names"] = meta["class_names"][:3]
    (renamed / "config.json").write_text(json.dumps(meta))
    for command in (("predict", str(renamed), image), ("export", str(renamed), str(tmp_path / "m.onnx"))):
        one_line_error(capsys, command, "3 class names", "10 outputs")


@pytest.mark.parametrize("start", [b"", b"\x80\x02"], ids=["noise", "noise-after-a-pickle-header"])
def test_random_bytes_are_not_called_a_pickle(tmp_path, start):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(start + os.urandom(4096).replace(b"\x80", b"\x81"))  # only `start` may look like a pickle
    with pytest.raises(ValueError) as error:
        load_pretrained(noise)
    message = str(error.value)
    assert "not a PyTorch or safetensors weights file" in message
    assert "weights_only" not in message and "needs code" not in message


def test_non_loopback_hosts_are_warned_about(digits_run, tmp_path, capsys):
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        warn_if_exposed(host)
        assert capsys.readouterr().err == "", host
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        warn_if_exposed(host)
        assert "no authentication" in capsys.readouterr().err, host
    # end to end: 192.0.2.1 (TEST-NET-1) is no address of this machine, so binding fails after the warning
    proc = run_vitkit("serve", str(digits_run[0]), "--host", "192.0.2.1", "--backend", "torch", timeout=120)
    assert "warning: listening on 192.0.2.1" in proc.stderr and "no authentication" in proc.stderr


@pytest.mark.slow
def test_predict_writes_nothing_into_the_run_folder(digits_run, digit_images, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for first in (True, False):
        proc = run_vitkit("predict", str(run), str(digit_images[0][0]), "--backend", "onnxruntime")
        assert proc.returncode == 0, proc.stderr[-2000:]
        # the pause of the one-time export is announced, the cached export is not
        announced = f"vitkit predict: exporting {run / 'best'} to ONNX for ONNX Runtime, once per checkpoint"
        assert (announced in proc.stderr) == first, proc.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    exported = list((cache / "vitkit" / "onnx").glob("*.onnx"))
    assert len(exported) == 1  # exported once, reused by the second call

    # the cache is keyed by content: retrained weights never reuse a stale export
    key = onnx_cache_path(run / "best")
    weights = run / "best" / "model.safetensors"
    state = load_file(str(weights))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] * 1.01
    save_file(state, str(weights))
    assert onnx_cache_path(run / "best") != key


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
        save_model(create_model("vit_tiny_patch4_32", depth=1), tmp_path / "ckpt")
    finally:
        os.umask(previous)
    for path in (tmp_path / "r.json", tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path, oct(path.stat().st_mode))


def test_globs_and_folders_survive_link_loops(tmp_path):
    photos = tmp_path / "photos"
    (photos / "cats" / "inner").mkdir(parents=True)
    for name in ("cats/a.jpg", "cats/inner/b.jpg", "c.jpg"):
        (photos / name).write_bytes(b"")
    (photos / "cats" / "inner" / "up").symlink_to("../..")  # a loop
    (photos / "cats" / "inner" / "top").symlink_to(photos)  # another, by absolute path
    (photos / "cats" / "inner" / "dangling").symlink_to(tmp_path / "missing")
    expected = {photos / name for name in ("c.jpg", "cats/a.jpg", "cats/inner/b.jpg")}
    for pattern in (str(photos / "**" / "*.jpg"), str(photos)):
        found = []
        # on a thread, so that a walk that never ends fails the test instead of hanging it
        walker = threading.Thread(target=lambda: found.extend(expand_paths([pattern])), daemon=True)
        walker.start()
        walker.join(timeout=30)
        assert not walker.is_alive(), f"{pattern}: still walking after 30 s"
        assert set(found) == expected and len(found) == len(expected), (pattern, found)


def test_bad_files_are_named_by_their_path(digits_run, tmp_path):
    for folder in ("cats", "dogs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img_001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    proc = run_vitkit("predict", str(digits_run[0]), str(tmp_path), "--format", "json", "--backend", "torch")
    errors = [r["error"] for r in json.loads(proc.stdout)["results"]]
    assert any(str(tmp_path / "cats" / "img_001.jpg") in e for e in errors), errors
    assert any(str(tmp_path / "dogs" / "img_001.jpg") in e for e in errors), errors


# ----------------------------------------------------------------------------- configuration files

ALIAS_BOMB = "mean: [&a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "text, message",
    [
        (ALIAS_BOMB + "]\n", "anchor or alias"),  # 9**9 values once expanded
        ("".join(f"k{i}: {i}\n" for i in range(300_000)), "bytes, over the 1,048,576"),
        ("".join(f"k{i}: {i}\n" for i in range(12_000)), "more than 10,000 values"),
        (
            "".join(f"k{i}: {i}\n" for i in range(4_000)),
            "unknown option(s) k0, k1, k10, k100, k1000, k1001, k1002, k1003 and 3992 more",
        ),
        ("epochs: two\n", "epochs: expected a whole number, got 'two'"),
        ("epochs: 1.7\n", "epochs: expected a whole number, got 1.7"),
        ("epochs: true\n", "epochs: expected a whole number, got true"),
        ("lr: [1, 2]\n", "lr: expected a finite number, got [1, 2]"),
        ("lr: null\n", "lr: expected a finite number, got null"),
        ("lr: .nan\n", "lr: expected a finite number, got nan"),
        ("mean: 5\n", "mean: expected a list of values, got 5"),
        ("hflip: 1\n", "hflip: expected true or false, got 1"),
    ],
    ids=[
        "alias-bomb",
        "oversize",
        "too-many-keys",
        "unknown-keys",
        "word",
        "fraction",
        "bool",
        "list",
        "null",
        "nan",
        "scalar-mean",
        "int-bool",
    ],
)
def test_config_files_are_checked_before_any_work(tmp_path, capsys, text, message):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    one_line_error(capsys, ("train", "--config", str(config), "--out", str(tmp_path / "run")), str(config), message)
    assert not (tmp_path / "run").exists()


def test_a_saved_args_yaml_is_read_as_safely(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    (run / "args.yaml").write_text(ALIAS_BOMB + "]\n")
    one_line_error(capsys, ("train", "--out", str(run), "--resume"), "args.yaml", "anchor or alias")
    (run / "args.yaml").write_text((OLD_RUN / "args.yaml").read_text().replace("epochs: 2", "epochs: 2.5"))
    one_line_error(capsys, ("train", "--out", str(run), "--resume"), "args.yaml", "epochs: expected a whole number")


def test_whole_floats_are_taken_and_model_args_are_typed(tmp_path, capsys):
    from vitkit.training.resolve import make_config

    assert make_config(epochs=2.0).epochs == 2 and isinstance(make_config(epochs=2.0).epochs, int)
    out = str(tmp_path / "run")
    one_line_error(capsys, ("train", "--model-arg", "depth=1.5", "--out", out), "model option depth: expected a whole")
    one_line_error(capsys, ("train", "--model-arg", "depth=&a 2", "--out", out), "depth", "anchor or alias")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checkpoint configs


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["preprocessing"].update(std=[0]), "preprocessing std must hold positive finite numbers"),
        (lambda m: m["preprocessing"].update(std=[float("nan")]), "preprocessing std must hold positive finite"),
        (
            lambda m: m["preprocessing"].update(mean=[0.1, 0.2]),
            "preprocessing mean must list one number, or one per channel",
        ),
        (lambda m: m["config"].update(embed_dim=1_000_000, depth=1000), "GiB of weights), more than this machine"),
        (lambda m: m["config"].update(depth=10**9), "depth 1000000000 is out of range"),
        (lambda m: m["config"].update(patch_size=0), "patch_size must be at least 1"),
        (lambda m: m["config"].update(depth="4"), "model option depth: expected a whole number, got '4'"),
        (lambda m: m["config"].update(qkv_bias=1), "model option qkv_bias: expected true or false"),
    ],
    ids=["std-zero", "std-nan", "mean-length", "12-TB", "depth-range", "patch-zero", "depth-text", "bias-int"],
)
def test_checkpoint_configs_are_checked_before_allocation(digits_run, digit_images, tmp_path, capsys, edit, message):
    checkpoint = copy_checkpoint(digits_run, tmp_path)
    meta = json.loads((checkpoint / "config.json").read_text())
    edit(meta)
    (checkpoint / "config.json").write_text(json.dumps(meta))
    one_line_error(capsys, ("predict", str(checkpoint), str(digit_images[0][0])), "config.json", message)


def test_onnx_metadata_is_checked_like_a_checkpoint_config(digits_run, digit_images, tmp_path, capsys):
    import onnx

    import vitkit

    vitkit.load(digits_run[0], backend="onnxruntime")  # the export vitkit made of the checkpoint, with its metadata
    exported = tmp_path / "model.onnx"
    shutil.copy(onnx_cache_path(digits_run[0] / "best"), exported)
    proto = onnx.load(str(exported))
    entry = next(p for p in proto.metadata_props if p.key == "vitkit")
    meta = json.loads(entry.value)
    meta["preprocessing"]["std"] = [0]
    entry.value = json.dumps(meta)
    onnx.save_model(proto, str(exported))
    one_line_error(capsys, ("predict", str(exported), str(digit_images[0][0])), "model.onnx", "std must hold positive")


# ----------------------------------------------------------------------------- datasets


def write_parquet_shards(root: Path, labels_per_shard: list[list[int]]) -> list[Path]:
    """Parquet shards in the hub layout with real PNG images and a two-class ClassLabel; labels as given,
    even outside the ClassLabel (which `datasets` does not check when writing)."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rng = np.random.default_rng(0)
    shards = []
    for i, labels in enumerate(labels_per_shard):
        images = []
        for _ in labels:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        table = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        table = table.cast_column("label", datasets.ClassLabel(names=["cat", "dog"]))
        shard = root / "data" / f"train-{i:05d}-of-{len(labels_per_shard):05d}.parquet"
        table.to_parquet(str(shard))
        shards.append(shard)
    return shards


@pytest.mark.parametrize("bad", [7, -1])
def test_parquet_labels_outside_the_class_label_are_refused_at_preparation(tmp_path, capsys, bad):
    data = tmp_path / "parquet"
    write_parquet_shards(data, [[0, 1, 0, 1, 0, 1, bad, 0]])
    one_line_error(
        capsys,
        ("train", "--data", str(data), "--out", str(tmp_path / "run"), "--threads", "1"),
        f"holds {bad} at row 6",
        "outside its ClassLabel's 2 classes",
    )


def test_a_truncated_parquet_shard_is_named(tmp_path, capsys):
    data = tmp_path / "parquet"
    _, second = write_parquet_shards(data, [[0, 1] * 4, [1, 0] * 4])
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    one_line_error(
        capsys,
        ("train", "--data", str(data), "--out", str(tmp_path / "run"), "--threads", "1"),
        str(second),
        "truncated or damaged",
    )


# ----------------------------------------------------------------------------- outputs and the network


def test_push_to_an_unreachable_hub_is_one_line_without_the_token(digits_run, capsys, monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_push_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    one_line_error(
        capsys, ("push", str(digits_run[0]), "acme/digits"), f"cannot reach the hub at http://127.0.0.1:{port}"
    )
    assert "hf_secret_push_token" not in capsys.readouterr().err


def test_out_is_refused_for_the_right_reason(tmp_path, capsys, monkeypatch):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    one_line_error(capsys, ("train", "--out", str(taken)), f"--out {taken} is a file")
    assert taken.read_text() == "mine"
    photos = write_class_folders(tmp_path / "photos", per_class=2)
    one_line_error(
        capsys, ("train", "--data", str(photos), "--out", str(tmp_path)), "holds files that are not a vitkit run"
    )
    # a run folder inside the data would be read back as images of a class by the next run
    for out in (photos, photos / "runs" / "first"):
        one_line_error(capsys, ("train", "--data", str(photos), "--out", str(out)), "is inside --data")
    monkeypatch.chdir(photos)  # the default runs/ folder under the working directory
    one_line_error(capsys, ("train", "--data", "."), "the default run folder", f"is inside --data {photos}")
    assert sorted(p.name for p in photos.iterdir()) == ["cat", "dog", "fox"]


def test_export_into_a_read_only_run_folder_is_one_line(digits_run, tmp_path):
    """A run folder that cannot be written gets export's own message."""
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    command = read_only(run, vitkit_cmd("export", str(run), str(run / "model.onnx")))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    finally:
        run.chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"vitkit export: error: cannot write {run / 'model.onnx'}: {run} is read-only; write the file somewhere else"
    )
    assert not (run / "model.onnx").exists()


def test_a_folder_the_file_system_refuses_is_one_line(tmp_path):
    """No dedicated check stands before `data pack`'s writes: the file system's refusal itself (read-only
    as root, permission denied otherwise) becomes the one-line error naming the file."""
    photos = write_class_folders(tmp_path / "photos", per_class=2)
    locked = tmp_path / "locked"
    locked.mkdir()
    command = read_only(locked, vitkit_cmd("data", "pack", str(photos), str(locked / "packed")))
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    reason = "read-only file system" if os.geteuid() == 0 else "permission denied"
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"vitkit data: error: {locked / 'packed'}") and reason in line, line
    assert not any(locked.iterdir())


def test_csv_cells_that_would_start_a_formula_are_escaped(digits_run, digit_images, tmp_path, capsys):
    import csv
    import io

    checkpoint = copy_checkpoint(digits_run, tmp_path)
    meta = json.loads((checkpoint / "config.json").read_text())
    formulas = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\ry", '=HYPERLINK("x")', "ok", "7", "nine"]
    meta["class_names"] = formulas
    (checkpoint / "config.json").write_text(json.dumps(meta))
    image = tmp_path / "=cmd()+.png"
    shutil.copy(digit_images[0][0], image)
    assert main(["predict", str(checkpoint), str(image), "--format", "csv", "--topk", "10", "--backend", "torch"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    labels = sorted(row[2] for row in rows[1:])
    assert labels == sorted(("'" + name) if name[0] in "=+-@\t\r" else name for name in formulas)
    assert {row[0] for row in rows[1:]} == {str(image)}  # an absolute path starts with /: kept as it is


@pytest.mark.parametrize(
    "args, message",
    [
        (("--quality", "500"), "500 is above the maximum of 100"),
        (("--quality", "0"), "0 is below the minimum of 1"),
        (("--size", "0"), "0 is below the minimum of 1"),
        (("--shard-mb", "0"), "must be a positive number"),
    ],
)
def test_data_pack_bounds(tmp_path, capsys, args, message):
    photos = write_class_folders(tmp_path / "photos", per_class=2)
    with pytest.raises(SystemExit) as refused:
        main(["data", "pack", str(photos), str(tmp_path / "packed"), *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert refused.value.code == 2 and err.startswith(f"vitkit data pack: error: argument {args[0]}: "), err
    assert message in err and not (tmp_path / "packed").exists()
    with pytest.raises(ValueError, match=args[0]):
        pack_folder(photos, tmp_path / "packed", **{args[0][2:].replace("-", "_"): int(args[1])})
