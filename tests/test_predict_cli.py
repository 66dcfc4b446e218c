"""`vitkit predict` end to end (output formats, folders, globs, per-file errors, an exported .onnx file),
`Classifier.predict` from Python against it, `vitkit serve` on both backends, and `vitkit models`."""

import contextlib
import csv
import io
import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import read_only, shared_dataset, subprocess_env, vitkit_cmd
from PIL import Image
from test_serve import free_port

import vitkit
from vitkit.cli import main as cli_main
from vitkit.models import PRESETS, list_models


def vitkit_main(*args) -> tuple[int, str, str]:
    """`vitkit ARGS` through the command's own entry point in this process (no interpreter start-up):
    exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def predict(*args) -> tuple[int, str, str]:
    """`vitkit predict` in fp32, whatever the CPU: the answers are compared with fp32 references."""
    return vitkit_main("predict", *args, "--precision", "fp32")


def predict_results(stdout: str) -> list[dict]:
    return json.loads(stdout)["results"]


@pytest.fixture(scope="module")
def torch_predictions(digits_run, digit_images):
    """The PyTorch backend's answers for the digit images: what every other path must reproduce."""
    out, _ = digits_run
    paths, _ = digit_images
    code, stdout, stderr = predict(out, *paths, "--format", "json", "--backend", "torch")
    assert code == 0, stderr
    return {r["path"]: r["predictions"] for r in predict_results(stdout)}


def assert_same_predictions(got: list[dict], expected: dict, tolerance=1e-4):
    for result in got:
        want = expected[result["path"]]
        assert [p["label"] for p in result["predictions"]] == [p["label"] for p in want], result["path"]
        for a, b in zip(result["predictions"], want):
            assert a["score"] == pytest.approx(b["score"], abs=tolerance)


def test_every_output_format_reports_the_same_answers_and_the_bad_file(digits_run, digit_images, tmp_path):
    out, _ = digits_run
    paths = [str(p) for p in digit_images[0][:3]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(digit_images[0][3].read_bytes()[:60])  # a cut-off PNG
    args = [out, paths[0], broken, *paths[1:], "--topk", "3", "--backend", "torch"]
    outputs = {}
    for fmt in ("json", "csv", "table"):
        code, outputs[fmt], stderr = predict(*args, "--format", fmt)
        assert code == 1, (fmt, stderr)  # some file failed, the rest were answered
    results = predict_results(outputs["json"])
    assert [r["path"] for r in results] == [paths[0], str(broken), *paths[1:]]  # the order given
    assert "predictions" not in results[1] and "broken.png" in results[1]["error"]
    good = [r for r in results if "predictions" in r]
    assert len(good) == 3 and all(len(r["predictions"]) == 3 for r in good)

    rows = list(csv.reader(io.StringIO(outputs["csv"])))
    assert rows[0] == ["path", "rank", "label", "score"]
    expected_rows = []
    for r in results:
        if "error" in r:
            expected_rows.append([r["path"], "", "ERROR", r["error"]])
        else:
            ranked = enumerate(r["predictions"], 1)
            expected_rows += [[r["path"], str(i), p["label"], str(p["score"])] for i, p in ranked]
    assert rows[1:] == expected_rows

    lines = outputs["table"].splitlines()
    assert len(lines) == 4
    for line, r in zip(lines, results):
        path, rest = line.split(": ", 1)
        assert path == r["path"]
        if "error" in r:
            assert rest.startswith("ERROR ") and "broken.png" in rest
        else:
            shown = rest.split()
            assert shown[0::2] == [p["label"] for p in r["predictions"]]
            assert [float(s) for s in shown[1::2]] == pytest.approx([p["score"] for p in r["predictions"]], abs=5e-4)


def test_folders_are_searched_recursively_and_globs_expanded(digits_run, digit_images, torch_predictions, tmp_path):
    out, _ = digits_run
    paths = digit_images[0]
    folder = tmp_path / "album"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(paths[0], folder / "b.png")
    shutil.copy(paths[1], folder / "nested" / "a.png")
    (folder / "notes.txt").write_text("not an image")
    loose = tmp_path / "loose"
    loose.mkdir()
    for i in (2, 3, 4):
        shutil.copy(paths[i], loose / f"shot{i}.png")
    shutil.copy(paths[5], loose / "other.png")
    code, stdout, stderr = predict(out, folder, loose / "shot*.png", "--format", "json", "--backend", "torch")
    assert code == 0, stderr
    results = predict_results(stdout)
    expected_paths = [folder / "b.png", folder / "nested" / "a.png", *(loose / f"shot{i}.png" for i in (2, 3, 4))]
    assert [r["path"] for r in results] == list(map(str, expected_paths))
    # the copies get the originals' answers
    originals = {str(folder / "b.png"): paths[0], str(folder / "nested" / "a.png"): paths[1]}
    originals.update({str(loose / f"shot{i}.png"): paths[i] for i in (2, 3, 4)})
    # the same model on the same pixels: equal up to the printed 6 decimals, where a batch of another
    # size may round the last digit the other way
    assert_same_predictions(
        [{**r, "path": str(originals[r["path"]])} for r in results], torch_predictions, tolerance=2e-6
    )
    code, _, stderr = predict(out, loose / "nothing*.png")
    assert code == 2 and "no such file, folder or matching glob" in stderr


def test_an_exported_onnx_file_predicts_like_the_checkpoint(digits_run, digit_images, torch_predictions, tmp_path):
    pytest.importorskip("onnxruntime")
    out, _ = digits_run
    onnx_path = tmp_path / "digits.onnx"
    code, stdout, stderr = vitkit_main("export", out, onnx_path)
    assert code == 0, stderr
    report = json.loads(stdout)["max_abs_logit_diff"]
    assert set(report) == {"batch_1", "batch_7"} and max(report.values()) < 1e-4
    code, stdout, stderr = predict(onnx_path, *digit_images[0], "--format", "json")
    assert code == 0, stderr
    assert_same_predictions(predict_results(stdout), torch_predictions)


def test_predict_runs_from_a_read_only_run_folder(digits_run, digit_images, torch_predictions, tmp_path):
    """predict writes nothing into a run folder: its ONNX export goes to the user cache, so a read-only run
    (an archive, a shared mount) predicts as a writable one, on either backend."""
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    env = {**subprocess_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    images = list(map(str, digit_images[0]))
    try:
        for backend in ("onnxruntime", "torch"):
            args = ("predict", str(run), *images, "--format", "json", "--precision", "fp32", "--backend", backend)
            proc = subprocess.run(read_only(run, vitkit_cmd(*args)), capture_output=True, text=True, env=env)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert_same_predictions(predict_results(proc.stdout), torch_predictions)
    finally:
        run.chmod(0o755)
    assert any((tmp_path / "cache").rglob("*.onnx"))


def test_a_failed_first_onnx_export_leaves_auto_on_pytorch(digits_run, digit_images, tmp_path, monkeypatch):
    """The first predict of a checkpoint exports it to ONNX in the user cache: with that cache read-only,
    --backend auto predicts on PyTorch and says why; --backend onnxruntime, asked for, is a one-line error
    when the cache cannot be written. An exporter error falls back the same way from Python, as a warning."""
    from vitkit.inference import default_backend

    if default_backend() != "onnxruntime":
        pytest.skip("--backend auto takes PyTorch here (a GPU, or no ONNX Runtime): nothing is exported")
    run, image = digits_run[0], str(digit_images[0][0])
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**subprocess_env(), "XDG_CACHE_HOME": str(cache)}
    command = read_only(cache, vitkit_cmd("predict", str(run), image, "--format", "json", "--precision", "fp32"))
    try:
        auto = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    finally:
        cache.chmod(0o755)
    advice = "): point XDG_CACHE_HOME at a writable folder, or use --backend torch"
    assert auto.returncode == 0 and "Traceback" not in auto.stderr, auto.stderr[-2000:]
    assert predict_results(auto.stdout)[0]["predictions"] and json.loads(auto.stdout)["backend"] == "torch"
    fell_back = next(line for line in auto.stderr.splitlines() if "on PyTorch" in line)
    assert fell_back.startswith(
        "vitkit predict: running run on PyTorch: the ONNX export for ONNX Runtime failed (cannot write the ONNX "
        f"export of {run / 'best'} into {cache / 'vitkit' / 'onnx'} ("
    ) and fell_back.endswith(advice + ")"), fell_back
    assert not any(cache.rglob("*.onnx"))

    not_a_folder = tmp_path / "not-a-folder"  # a cache this process cannot write, as root can write read-only folders
    not_a_folder.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    code, _, stderr = predict(run, image, "--backend", "onnxruntime")
    onnx_cache = not_a_folder / "vitkit" / "onnx"
    assert code == 2 and stderr.strip() == (
        f"vitkit predict: exporting {run / 'best'} to ONNX for ONNX Runtime, once per checkpoint (cached in "
        f"{onnx_cache}; --backend torch runs without it)\n"
        f"vitkit predict: error: cannot write the ONNX export of {run / 'best'} into {onnx_cache} (Not a directory"
        + advice
    ), stderr

    import vitkit.export.onnx

    def exporter_error(*args, **kwargs):
        raise RuntimeError("the exporter met an operator it cannot write")

    monkeypatch.setattr(vitkit.export.onnx, "export_onnx", exporter_error)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with pytest.warns(UserWarning, match=r"running run on PyTorch: .*failed \(the exporter met an operator"):
        assert vitkit.load(run, precision="fp32").backend == "torch"
    with pytest.raises(RuntimeError, match="the exporter met an operator"):
        vitkit.load(run, backend="onnxruntime")


def test_python_predict_gives_the_cli_answers_for_files_and_images_in_memory(digits_run, digit_images):
    """A wide real photo and a grey digit, given as a path, a PIL image, a numpy array and a uint8 tensor: the
    same objects as `vitkit predict --format json`, so in-memory images are resized and cropped as files are."""
    out, _ = digits_run
    photo = shared_dataset("flowers-mini") / "train" / "daisy" / "4694730335_2553e77aa5_z.jpg"  # 160x58
    digit = digit_images[0][0]
    code, stdout, stderr = predict(out, photo, digit, "--format", "json", "--topk", "3", "--backend", "torch")
    assert code == 0, stderr
    cli_photo, cli_digit = predict_results(stdout)
    clf = vitkit.load(out, device="cpu", precision="fp32")

    assert clf.predict(str(photo), topk=3) == cli_photo
    assert clf(photo, topk=3) == cli_photo
    in_memory = {"predictions": cli_photo["predictions"]}
    pixels = np.array(Image.open(photo))
    assert pixels.shape == (58, 160, 3)
    assert clf.predict(Image.open(photo), topk=3) == {"input": 0, **in_memory}
    assert clf.predict(pixels, topk=3) == {"input": 0, **in_memory}
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    grey = np.asarray(Image.open(digit))
    assert grey.ndim == 2
    mixed = clf.predict([chw, str(digit), grey, chw.unsqueeze(0).repeat(2, 1, 1, 1)], topk=3)
    digit_answer = {"predictions": cli_digit["predictions"]}
    assert mixed == [
        {"input": 0, **in_memory},
        cli_digit,
        {"input": 2, **digit_answer},
        {"input": 3, **in_memory},
        {"input": 4, **in_memory},
    ]
    assert clf.predict([str(digit)], topk=3) == [cli_digit]  # a list gives a list, even of one

    with pytest.raises(ValueError, match=r"inputs\[1\]: pixels of dtype float32; pass uint8"):
        clf.predict([pixels, pixels.astype(np.float32)])
    with pytest.raises(TypeError, match="inputs is a dict"):
        clf.predict({"image": str(photo)})
    with pytest.raises(ValueError, match="pass photos of any size to predict"):
        clf.predict_tensor(chw.unsqueeze(0))  # a raw photo would be squashed, not cropped


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_serve_on_each_backend_answers_like_predict(digits_run, digit_images, torch_predictions, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    out, _ = digits_run
    port = free_port()
    proc = subprocess.Popen(
        vitkit_cmd("serve", str(out), "--port", str(port), "--backend", backend, "--precision", "fp32"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the server did not start"
            try:
                health = httpx.get(base + "/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health["backend"] == backend
        paths = digit_images[0][:4]
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        response = httpx.post(base + "/predict", files=files, timeout=60)
        assert response.status_code == 200, response.text
        assert [r["path"] for r in response.json()] == [p.name for p in paths]
        assert_same_predictions(response.json(), {p.name: torch_predictions[str(p)] for p in paths})
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_models_lists_every_model_and_preset_with_published_sizes():
    """Parameter counts of the architectures with published checkpoints are the published ones
    (timm's model cards: ViT-Ti/S/B 16, Mixer-S/B 16, gMLP-S 16; ResNet-18 for CIFAR)."""
    code, stdout, _ = vitkit_main("models")
    assert code == 0
    header, *lines = stdout.splitlines()
    assert header.split()[:4] == ["name", "family", "params", "size"]
    rows = [line.split() for line in lines if not line.startswith(" ")]
    # a preset with sizes for --time-budget lists them indented under it, each with the epochs it needs
    sized = lines[lines.index(next(line for line in lines if line.startswith("cifar-hybrid "))) + 1 :][:3]
    assert sized[0].split()[:2] == ["3.41M", "with"] and "trains it 12+ epochs here:" in sized[0]
    assert sized[1].split()[:2] == ["3.11M", "with"] and "trains it 15+ epochs here:" in sized[1]
    assert "stem_token_stride=2" in sized[1] and not sized[2].startswith(" ")  # two sizes beside the preset's own
    names = [row[0] for row in rows]
    assert names == list_models() and len(set(names)) == len(names)
    kinds = {row[0]: row[1] for row in rows}
    assert {name for name, kind in kinds.items() if kind == "preset"} == set(PRESETS)
    sizes = {row[0]: row[2] for row in rows}
    published = {
        "vit_tiny_patch16_224": "5.72M",
        "vit_small_patch16_224": "22.05M",
        "vit_base_patch16_224": "86.57M",
        "mixer_s16_224": "18.53M",
        "mixer_b16_224": "59.88M",
        "gmlp_s16_224": "19.42M",
        "resnet18_cifar": "11.17M",
    }
    assert {name: sizes[name] for name in published} == published
    assert all(row[3].endswith("px") for row in rows)
    code, stdout, _ = vitkit_main("models", "--presets")
    assert code == 0
    assert [line.split()[0] for line in stdout.splitlines()[1:] if not line.startswith(" ")] == sorted(PRESETS)


def test_threshold_is_for_multi_label_checkpoints_and_refused_in_one_line(digits_run, digit_images):
    out, _ = digits_run
    code, _, stderr = predict(out, str(digit_images[0][0]), "--threshold", "0.5", "--backend", "torch")
    assert code == 2 and "is single-label; --topk picks its labels" in stderr and len(stderr.splitlines()) == 1
