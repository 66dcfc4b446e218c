"""The HTTP server as a real uvicorn process on loopback: predictions, concurrency, bad input, web page."""

import asyncio
import io
import json
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from browser import artifacts_dir, headless_chromium
from conftest import run_vitkit, shared_dataset, subprocess_env, vitkit_cmd
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


URL_LINE = re.compile(
    r"^vitkit serve: (\S+) \(([^)]*)\) on (\S+), (\S+), (\S+) \((.*)\) "
    r"at (http://127\.0\.0\.1:(\d+))/ \(Ctrl\+C to stop\)$"
)


@dataclass
class Server:
    base: str  # the address the server printed, without the trailing slash
    port: int
    checkpoint: Path
    output: list[str]  # the process's stdout and stderr lines so far, read as they come


@pytest.fixture(scope="module")
def server(digits_run):
    """`vitkit serve` on a port the system picks: the tests learn the address from the line it prints."""
    out, _ = digits_run
    proc = subprocess.Popen(
        # fp32 on every CPU: the answers are compared with `vitkit predict`'s to 1e-5
        vitkit_cmd("serve", str(out), "--port", "0", "--max-upload-mb", "1", "--precision", "fp32"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []

    def read_output():  # on a thread, so the server never blocks on a full pipe while it logs requests
        for line in proc.stdout:
            output.append(line.rstrip("\n"))

    threading.Thread(target=read_output, daemon=True).start()
    deadline = time.time() + 120
    while not (found := [m for m in map(URL_LINE.match, list(output)) if m]):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("no address line from the server:\n" + "\n".join(output))
        time.sleep(0.1)
    yield Server(found[0][7], int(found[0][8]), out, output)
    proc.terminate()
    proc.wait(timeout=30)


def post(base, files, **kw):
    return httpx.post(base + "/predict", files=files, timeout=60, **kw)


def test_predictions_match_the_cli(server, digit_images):
    base, out = server.base, server.checkpoint
    paths, _ = digit_images
    cli = subprocess.run(
        vitkit_cmd("predict", str(out), *map(str, paths[:4]), "--format", "json", "--precision", "fp32"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=True,
    )
    expected = json.loads(cli.stdout)["results"]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths[:4]]
    response = post(base, files)
    assert response.status_code == 200
    body = response.json()
    assert [r["path"] for r in body] == [p.name for p in paths[:4]]
    for got, want in zip(body, expected):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        for a, b in zip(got["predictions"], want["predictions"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_health_and_labels(server):
    base, port = server.base, server.port
    assert httpx.get(base + "/health").json()["status"] == "ok"
    assert httpx.get(base + "/labels").json()["labels"] == [str(i) for i in range(10)]
    # bound to loopback only: /proc/net/tcp lists the listening socket as 127.0.0.1
    listening = [
        line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[3] == "0A"
    ]
    assert f"0100007F:{port:04X}" in listening
    assert f"00000000:{port:04X}" not in listening


def test_prints_its_address_and_logs_each_request(server, digit_images):
    (line,) = [line for line in server.output if URL_LINE.match(line)]
    name, summary, backend, device, precision, reason = URL_LINE.match(line).group(1, 2, 3, 4, 5, 6)
    assert name == server.checkpoint.name and summary == "vit_micro_patch4_32, vit, 16 px, 10 classes"
    health = httpx.get(server.base + "/health").json()
    assert (device, precision, reason) == (health["device"], "fp32", "fp32 as asked")
    # /health says what answers now: the backend it started on, or the one it has since said it moved to
    moved = f"vitkit serve: /predict now runs on {health['backend']}"
    assert health["backend"] == backend or any(line == moved for line in server.output), (health, server.output)
    path = digit_images[0][0]
    assert httpx.get(server.base + "/labels").status_code == 200
    assert post(server.base, [("file", ("notes.txt", b"hello", "text/plain"))]).status_code == 415
    assert post(server.base, [("file", (path.name, path.read_bytes(), "image/png"))]).status_code == 200
    request_line = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} 127\.0\.0\.1 (GET|POST) (\S+) (\d{3}) \d+\.\d ms$"
    )
    expected = [("GET", "/labels", "200"), ("POST", "/predict", "415"), ("POST", "/predict", "200")]
    deadline = time.time() + 10  # each line is written once its response has gone out
    while True:
        logged = [m.groups() for m in map(request_line.match, list(server.output)) if m]
        if logged[-3:] == expected or time.time() > deadline:
            break
        time.sleep(0.05)
    assert logged[-3:] == expected, "\n".join(server.output[-10:])


@pytest.mark.slow
def test_answers_at_once_with_pytorch_then_hands_predict_to_onnx_runtime(server, digit_images):
    """A first start (nothing exported yet) said nothing for 12-20 s while it exported ONNX: now it says it
    is loading, answers with PyTorch at once, and moves /predict to ONNX Runtime once that is ready."""
    lines = server.output
    assert lines[0] == f"vitkit serve: loading {server.checkpoint}"
    switched = "vitkit serve: /predict now runs on onnxruntime"
    deadline = time.time() + 120
    while switched not in lines and time.time() < deadline:
        time.sleep(0.2)
    ready = next(i for i, line in enumerate(lines) if URL_LINE.match(line))
    assert lines.index(switched) > ready  # the address was printed (and served) before the export ended
    assert httpx.get(server.base + "/health").json()["backend"] == "onnxruntime"
    path = digit_images[0][0]
    assert post(server.base, [("file", (path.name, path.read_bytes(), "image/png"))]).status_code == 200


@pytest.mark.slow
def test_200_concurrent_requests_are_micro_batched(server, digit_images):
    base = server.base
    paths, _ = digit_images
    payloads = [p.read_bytes() for p in paths]

    before = httpx.get(base + "/health").json()["batches"]

    async def run():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as client:
            tasks = [
                client.post(base + "/predict", files=[("file", (f"{i}.png", payloads[i % len(payloads)], "image/png"))])
                for i in range(200)
            ]
            return await asyncio.gather(*tasks)

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    first = {r.json()[0]["path"]: r.json()[0]["predictions"][0]["label"] for r in responses[: len(payloads)]}
    for i, r in enumerate(responses):  # the same image always gets the same answer
        assert r.json()[0]["predictions"][0]["label"] == first[f"{i % len(payloads)}.png"]
    # 200 one-image requests went through fewer than 200 forward passes: images from different
    # requests shared a batch (earlier tests' batches are not counted)
    forward_passes = httpx.get(base + "/health").json()["batches"] - before
    assert 0 < forward_passes < 200, forward_passes


def test_bad_input(server, digit_images, tmp_path):
    base = server.base
    png = digit_images[0][0].read_bytes()
    big = io.BytesIO()
    Image.frombytes("RGB", (800, 800), os.urandom(800 * 800 * 3)).save(big, "PNG")  # ~1.9 MB, over the 1 MB limit
    bomb = io.BytesIO()
    Image.new("1", (9000, 8000)).save(bomb, "PNG")
    cases = [
        (dict(files=[("file", ("notes.txt", b"hello", "text/plain"))]), 415, "not an image"),
        (dict(files=[("file", ("fake.png", b"just text, not pixels", "image/png"))]), 415, "not an image"),
        (dict(content=json.dumps({"image": "x"}), headers={"content-type": "application/json"}), 415, "multipart"),
        (dict(content=b"", headers={"content-type": "multipart/form-data; boundary=x"}), 400, "empty"),
        (dict(files=[("file", ("empty.png", b"", "image/png"))]), 400, "empty file"),
        (dict(files=[("other", ("a.png", png, "image/png"))]), 400, "field 'file'"),
        (dict(files=[("file", ("big.png", big.getvalue(), "image/png"))]), 413, "over the limit"),
        (dict(files=[("file", ("bomb.png", bomb.getvalue(), "image/png"))]), 413, "pixels per request"),
        (dict(files=[("file", ("cut.png", png[: len(png) // 2], "image/png"))]), 400, "cut.png"),
    ]
    for kwargs, status, message in cases:
        response = httpx.post(base + "/predict", timeout=60, **kwargs)
        assert response.status_code == status, (kwargs.get("files", kwargs.get("content")), response.text)
        assert message in response.json()["error"]
    assert httpx.get(base + "/health").status_code == 200  # still alive


def test_explain_endpoint(server, digit_images):
    base = server.base
    path = digit_images[0][0]
    response = httpx.post(base + "/explain", files=[("file", (path.name, path.read_bytes(), "image/png"))], timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert len(body["predictions"]) == 5 and body["overlay"].startswith("data:image/png;base64,")
    # the page says which map it shows: attention rollout, which `vitkit explain` picks for a patch ViT
    assert "<figcaption>where it looked: attention rollout</figcaption>" in httpx.get(base + "/").text


def test_serve_refuses_a_missing_checkpoint(tmp_path):
    proc = run_vitkit("serve", str(tmp_path / "none"), timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_web_page_in_headless_chromium(server):
    """A wide real photo on the page at desktop and phone widths: the model's name, a loading indicator while
    the request is in flight, the photo undistorted with the crop box, the model's view and its overlay the same
    square size, and no horizontal scroll at 420 px. Screenshots go to test-artifacts/ to look at."""
    photo = shared_dataset("flowers-mini") / "train" / "daisy" / "4694730335_2553e77aa5_z.jpg"  # 160x58
    driver = headless_chromium()
    artifacts = artifacts_dir()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.get(server.base + "/")
        assert "vitkit" in driver.title
        assert (
            driver.find_element(By.ID, "model").text
            == f"Model {server.checkpoint.name} (vit_micro_patch4_32, vit, 16 px, 10 classes)"
        )
        # hold the request back for a moment, so the page is seen while it waits
        driver.execute_script(
            "const send = window.fetch;"
            "window.fetch = (...a) => new Promise(r => setTimeout(r, 1000)).then(() => send(...a));"
        )
        driver.find_element(By.ID, "file").send_keys(str(photo))
        assert driver.find_element(By.ID, "status").is_displayed()
        assert driver.find_element(By.ID, "drop").get_attribute("aria-busy") == "true"
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .bar-label")) == 5)
        assert not driver.find_element(By.ID, "status").is_displayed()
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        )
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#bars .bar-label")]
        assert sorted(labels) == sorted(set(labels)) and all(label.isdigit() for label in labels)
        for width in (1280, 420):
            driver.set_window_size(width, 1000)
            assert driver.execute_script("return window.innerWidth") == width
            boxes = driver.execute_script(
                """const box = id => document.getElementById(id).getBoundingClientRect().toJSON();
                return {photo: box("photo"), crop: box("crop"), input: box("input"), overlay: box("overlay"),
                        natural: [photo.naturalWidth, photo.naturalHeight]};"""
            )
            photo_box, crop, shown, overlay = (boxes[k] for k in ("photo", "crop", "input", "overlay"))
            natural_width, natural_height = boxes["natural"]
            # the photo keeps its proportions; the box marks its centre square, as the model crops it
            assert photo_box["width"] / photo_box["height"] == pytest.approx(natural_width / natural_height, rel=0.03)
            assert crop["height"] == pytest.approx(photo_box["height"], abs=1)
            assert crop["width"] == pytest.approx(crop["height"], abs=1)
            centre = photo_box["x"] + photo_box["width"] / 2
            assert crop["x"] + crop["width"] / 2 == pytest.approx(centre, abs=1)
            # the model's view and the overlay on it: the same square, so they line up
            assert shown["width"] == overlay["width"] == shown["height"] == overlay["height"] > 100
            assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            assert driver.save_screenshot(str(artifacts / f"serve-page-{width}px.png"))
    finally:
        driver.quit()
