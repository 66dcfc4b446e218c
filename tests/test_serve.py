"""The HTTP server as a real uvicorn process on loopback: predictions, concurrency, bad input, web page."""

import asyncio
import io
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, run_vitkit, subprocess_env, vitkit_cmd
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(digits_run):
    out, _ = digits_run
    port = free_port()
    proc = subprocess.Popen(
        vitkit_cmd("serve", str(out), "--port", str(port), "--max-upload-mb", "1"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
    yield base, port, out
    proc.terminate()
    proc.wait(timeout=30)


def post(base, files, **kw):
    return httpx.post(base + "/predict", files=files, timeout=60, **kw)


def test_predictions_match_the_cli(server, digit_images):
    base, _, out = server
    paths, _ = digit_images
    cli = subprocess.run(
        vitkit_cmd("predict", str(out), *map(str, paths[:4]), "--format", "json"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=True,
    )
    expected = json.loads(cli.stdout)
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
    base, port, _ = server
    assert httpx.get(base + "/health").json()["status"] == "ok"
    assert httpx.get(base + "/labels").json()["labels"] == [str(i) for i in range(10)]
    # bound to loopback only: /proc/net/tcp lists the listening socket as 127.0.0.1
    listening = [
        line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[3] == "0A"
    ]
    assert f"0100007F:{port:04X}" in listening
    assert f"00000000:{port:04X}" not in listening


def test_200_concurrent_requests_are_micro_batched(server, digit_images):
    base, _, _ = server
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
    base, _, _ = server
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
    base, _, _ = server
    path = digit_images[0][0]
    response = httpx.post(base + "/explain", files=[("file", (path.name, path.read_bytes(), "image/png"))], timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert len(body["predictions"]) == 5 and body["overlay"].startswith("data:image/png;base64,")


def test_serve_refuses_a_missing_checkpoint(tmp_path):
    proc = run_vitkit("serve", str(tmp_path / "none"), timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_web_page_in_headless_chromium(server, digit_images):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Debian chromium and chromium-driver are not installed")
    base, _, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(base + "/")
        assert "vitkit" in driver.title
        driver.find_element(By.ID, "file").send_keys(str(digit_images[0][0]))
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .bar-row")) == 5)
        overlay = driver.find_element(By.ID, "overlay")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script(
                "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth > 0"
            )
        )
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#bars .bar-label")]
        assert sorted(labels) == sorted(set(labels)) and all(label.isdigit() for label in labels)
        artifacts = Path(os.environ.get("VITKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(artifacts / "serve-page.png"))
    finally:
        driver.quit()
