"""HTTP API and web page for a trained classifier (FastAPI + uvicorn): the app's routes and `serve`.

POST /predict   multipart/form-data, field `file` (repeat it for several images) -> top-k per image
POST /explain   one image -> top-k as /predict scores it, the image as the model sees it and the overlay of
                the map `vitkit explain` picks for the model (PNG data URLs), and the part of the photo they show
GET  /health    GET /labels    GET /  (a page to drop an image on)

`vitkit serve` prints its address once it accepts connections and logs every request (request_log.py).
Concurrent requests are micro-batched into one forward pass (batching.py). Uploads are read within
`ServeLimits` (uploads.py) and decoded on worker threads, never on the event loop (decoding.py). /explain
draws its maps on a model of its own (explain.py); page.py fills in the web page; server.py is the uvicorn
server, with its deadline for each request's headers.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from contextlib import asynccontextmanager

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from ..inference.predict import classifier_results
from .batching import MicroBatcher
from .decoding import Decoder, image_and_crop_loader, image_loader
from .explain import explanation, own_model
from .limits import ServeLimits, ServeOptions
from .page import render_page
from .request_log import RequestLog, log_requests_to_stderr
from .server import AnnouncingServer, guarded_protocol, warn_if_exposed
from .uploads import Budgets, ClientError, read_images


def create_app(
    classifier,
    explainer=None,
    limits: ServeLimits = ServeLimits(),
    topk: int = 5,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
) -> FastAPI:
    """`classifier` answers /predict; `explainer` (a PyTorch-backed Classifier; default `classifier`) draws
    /explain's maps, on a model of its own."""
    explainer = explainer or classifier
    if explainer.model is classifier.model and isinstance(classifier.model, torch.nn.Module):
        explainer = own_model(classifier)
    batcher = MicroBatcher(classifier.outputs_tensor, max_batch, max_wait_ms)
    budgets = Budgets.within(limits, classifier.preprocessing.square_size)
    decoder = Decoder(limits.decode_threads)
    explain_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown()

    app = FastAPI(title="vitkit", lifespan=lifespan)
    app.state.classifier = classifier

    def answer_with(faster) -> None:
        """Answer /predict with `faster` (the same checkpoint on a faster backend) from the next batch on."""
        batcher.predict, app.state.classifier = faster.outputs_tensor, faster

    app.state.answer_with = answer_with
    app.add_middleware(RequestLog)
    page_html = render_page(classifier, explainer)

    @app.exception_handler(ClientError)
    async def client_error(request, exc: ClientError):
        # A refused upload may not have been read to its end, so the connection cannot carry another request.
        headers = {"Connection": "close", **(exc.headers or {})}
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, exc: ClientDisconnect):
        return Response(status_code=499)  # never delivered: the client hung up; the request log shows it

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": classifier.name,
            **app.state.classifier.runtime,
            "classes": len(classifier.class_names),
            "image_size": classifier.image_size,
            "batches": batcher.batches,
            "max_batch_seen": batcher.largest_batch,
        }

    @app.get("/labels")
    async def labels():
        labels = {"labels": classifier.class_names, "multi_label": classifier.multi_label}
        return {**labels, "thresholds": classifier.thresholds} if classifier.multi_label else labels

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    @app.post("/predict")
    async def predict(request: Request):
        async with read_images(request, limits, image_loader(classifier), decoder, budgets) as images:
            probs = await batcher.submit([img for _, img in images])
        results = classifier_results(classifier, torch.stack(probs), topk)
        return [{"path": name, **result} for (name, _), result in zip(images, results)]

    @app.post("/explain")
    async def explain(request: Request):
        async with read_images(request, limits, image_and_crop_loader(explainer), decoder, budgets) as images:
            name, (image, crop) = images[0]
            # the scores come the way /predict's do (its backend, precision and batches), and the map
            # explains the class they rank first
            (probs,) = await batcher.submit([image])
            async with explain_lock:  # gradients and attention capture are not re-entrant
                pictures = await asyncio.get_running_loop().run_in_executor(
                    None, explanation, explainer, image, int(probs[: len(classifier.class_names)].argmax())
                )
        return {
            "path": name,
            **classifier_results(classifier, probs.unsqueeze(0), 5)[0],
            "multi_label": classifier.multi_label,
            **pictures,
            "crop": dict(zip(("left", "top", "right", "bottom"), crop)),
        }

    return app


def serve(
    checkpoint: str,
    host: str = ServeOptions.host,
    port: int = ServeOptions.port,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    topk: int = ServeOptions.topk,
    limits: ServeLimits = ServeLimits(),
    reject_unknown: bool = False,
    unknown_method: str = "auto",
) -> None:
    from functools import partial

    from ..inference import load as load_checkpoint

    load = partial(load_checkpoint, reject_unknown=reject_unknown, unknown_method=unknown_method)

    # With --backend auto the server answers at once with PyTorch, which loads in a fraction of a second,
    # while the faster backend load() would pick (ONNX Runtime, exported once into the cache: seconds on a
    # first start) gets ready in a thread and takes over /predict when it is.
    print(f"vitkit serve: loading {checkpoint}", file=sys.stderr, flush=True)
    first = "torch" if backend == "auto" else backend
    classifier = load(checkpoint, device=device, backend=first, precision=precision, threads=threads)
    explainer = (
        classifier
        if classifier.backend == "torch"
        else load(checkpoint, device=device, backend="torch", threads=threads)
    )
    app = create_app(classifier, explainer, limits=limits, topk=topk)
    if backend == "auto":

        def upgrade() -> None:
            try:
                faster = load(
                    checkpoint,
                    device=device,
                    backend="auto",
                    precision=precision,
                    threads=threads,
                    notice=lambda line: print(f"vitkit serve: {line}", file=sys.stderr, flush=True),
                )
            except Exception as e:  # the PyTorch model keeps answering
                print(f"vitkit serve: staying on PyTorch: the faster backend failed ({e})", file=sys.stderr)
                return
            if faster.backend != classifier.backend:
                app.state.answer_with(faster)
                print(f"vitkit serve: /predict now runs on {faster.backend}", file=sys.stderr, flush=True)

        threading.Thread(target=upgrade, name="vitkit-backend", daemon=True).start()
    warn_if_exposed(host)
    log_requests_to_stderr()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=guarded_protocol(limits.client_timeout),
        timeout_keep_alive=limits.keep_alive,
        limit_concurrency=limits.max_connections,
    )
    server = AnnouncingServer(config, classifier)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's startup failure status (e.g. the port is taken); it has logged why
