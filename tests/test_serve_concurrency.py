"""/predict and /explain at once on a PyTorch-backed server (real process, loopback): the maps /explain draws
while /predict runs are the maps of each image explained alone, /predict's answers are its answers alone, and
/explain's scores are /predict's."""

import threading

import httpx
import pytest
from serving import running_server

THREADS, EACH = 8, 200


def upload(path) -> list:
    return [("file", (path.name, path.read_bytes(), "image/png"))]


@pytest.mark.slow  # a server process and 400 requests
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_interleaved_explains_draw_the_maps_drawn_alone(digits_run, digit_images, precision, tmp_path):
    paths = digit_images[0]
    log = tmp_path / "server.log"
    with running_server(digits_run[0], "--backend", "torch", "--precision", precision, log=log) as (base, _):
        assert httpx.get(base + "/health").json()["precision"] == precision
        alone, predicted = {}, {}
        with httpx.Client(base_url=base, timeout=60) as client:
            for path in paths:
                explained = client.post("/explain", files=upload(path)).json()
                alone[path.name] = explained["overlay"]
                (predicted[path.name],) = client.post("/predict", files=upload(path)).json()
                # the page's scores are /predict's: the same backend and precision, not a separate fp32 pass
                assert explained["predictions"] == predicted[path.name]["predictions"]

        requests = [("/explain" if i % 2 else "/predict", paths[i // 2 % len(paths)]) for i in range(2 * EACH)]
        answers: list[tuple[str, str, int, dict]] = []

        def client_thread(index: int) -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                for route, path in requests[index::THREADS]:
                    response = client.post(route, files=upload(path))
                    body = response.json() if response.status_code < 500 else {}
                    answers.append((route, path.name, response.status_code, body))

        threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(answers) == 2 * EACH
    assert all(status == 200 for _, _, status, _ in answers), sorted({status for _, _, status, _ in answers})
    explained = [(name, body) for route, name, _, body in answers if route == "/explain"]
    changed = [name for name, body in explained if body["overlay"] != alone[name]]
    assert not changed, f"{len(changed)} of {len(explained)} overlays differ from the image explained alone"
    # and /predict, batched with other clients' images while maps are drawn, answers as it did alone
    # (within rounding: a batch of other sizes sums in another order)
    tolerance = 2e-2 if precision == "bf16" else 1e-5
    for name, (body,) in ((name, body) for route, name, _, body in answers if route == "/predict"):
        first, alone_first = body["predictions"][0], predicted[name]["predictions"][0]
        assert first["label"] == alone_first["label"], name
        assert first["score"] == pytest.approx(alone_first["score"], abs=tolerance), name
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
