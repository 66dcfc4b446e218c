"""HTTP API and web page for a trained classifier (FastAPI + uvicorn).

POST /predict   multipart/form-data, field `file` (repeat it for several images) -> top-k per image
POST /explain   one image -> top-k and the attention/saliency overlay as a PNG data URL
GET  /health    GET /labels    GET /  (a page to drop an image on)

Concurrent requests are micro-batched: images wait up to `max_wait_ms` for company and then go
through the model in one forward pass (at most `max_batch` images).
"""

from __future__ import annotations

import asyncio
import base64
import io
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from ..data.images import BadImageError
from ..predict import top_k

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
PAGE = (Path(__file__).parent / "page.html").read_text()


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class MicroBatcher:
    """Collects single images from concurrent requests into batches for one forward pass each."""

    def __init__(self, predict, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batch_sizes: list[int] = []  # observed, for tests and /health
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def submit(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        futures = []
        for img in images:
            future = loop.create_future()
            await self.queue.put((img, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            self.batch_sizes.append(len(items))
            try:
                probs = await loop.run_in_executor(None, self.predict, torch.stack([img for img, _ in items]))
                for (_, future), row in zip(items, probs):
                    if not future.done():
                        future.set_result(row)
            except Exception as e:  # a model failure fails these requests, never the server
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds `limit`, declared or not."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ClientError(413, f"upload is over the limit of {limit:,} bytes")
    return bytes(body)


async def read_images(request: Request, limit: int, preprocessing) -> list[tuple[str, torch.Tensor]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ClientError(
            415, f"send images as multipart/form-data in the field 'file' (got {content_type or 'no content type'})"
        )
    body = await read_body(request, limit)
    if not body:
        raise ClientError(400, "empty request body: attach an image in the field 'file'")
    # Starlette parses the form from the cached body once it is set, so the size check above holds.
    request._body = body
    try:
        form = await request.form(max_part_size=limit)
    except Exception as e:
        raise ClientError(400, f"malformed multipart body ({e})") from None
    uploads = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not uploads:
        raise ClientError(400, "no image in the field 'file'")
    images = []
    for upload in uploads:
        name = upload.filename or "upload"
        part_type = (upload.content_type or "").split(";")[0].strip()
        if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            raise ClientError(415, f"{name}: content type {part_type} is not an image")
        data = await upload.read()
        if not data:
            raise ClientError(400, f"{name}: empty file")
        try:
            images.append((name, preprocessing.load_tensor(io.BytesIO(data), name)))
        except BadImageError as e:
            raise ClientError(415 if e.kind == "unidentified" else 400, str(e)) from None
    return images


def overlay_data_url(classifier, image: torch.Tensor) -> tuple[list[dict], str]:
    from ..viz.explain import explain_tensor, overlay
    from ..viz.report import display_images

    probs, maps = explain_tensor(classifier, image.unsqueeze(0))
    shown = display_images(image.unsqueeze(0), classifier.augment)[0]
    shown = shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown
    heat = next(iter(maps.values()))[0].numpy()
    blended = overlay(shown.permute(1, 2, 0).numpy(), heat)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(blended)).resize((256, 256), Image.Resampling.NEAREST).save(buffer, "PNG")
    return top_k(probs, classifier.class_names, 5)[0], "data:image/png;base64," + base64.b64encode(
        buffer.getvalue()
    ).decode()


def create_app(
    classifier,
    explainer=None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    topk: int = 5,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
) -> FastAPI:
    """`classifier` answers /predict; `explainer` (a PyTorch-backed Classifier, default the same) /explain."""
    explainer = explainer or classifier
    batcher = MicroBatcher(classifier.predict_tensor, max_batch, max_wait_ms)
    explain_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="vitkit", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(ClientError)
    async def client_error(request, exc: ClientError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "backend": classifier.backend,
            "classes": len(classifier.class_names),
            "image_size": classifier.image_size,
            "batches": len(batcher.batch_sizes),
            "max_batch_seen": max(batcher.batch_sizes, default=0),
        }

    @app.get("/labels")
    async def labels():
        return {"labels": classifier.class_names}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.post("/predict")
    async def predict(request: Request):
        images = await read_images(request, max_upload_bytes, classifier.preprocessing)
        probs = await batcher.submit([img for _, img in images])
        preds = top_k(torch.stack(probs), classifier.class_names, topk)
        return [{"path": name, "predictions": p} for (name, _), p in zip(images, preds)]

    @app.post("/explain")
    async def explain(request: Request):
        images = await read_images(request, max_upload_bytes, explainer.preprocessing)
        async with explain_lock:  # gradients and attention capture are not re-entrant
            top, url = await asyncio.get_running_loop().run_in_executor(None, overlay_data_url, explainer, images[0][1])
        return {"path": images[0][0], "predictions": top, "overlay": url}

    return app


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    max_upload_mb: float = 10,
    device: str = "auto",
    precision: str = "fp32",
) -> None:
    import uvicorn

    from ..api import load

    classifier = load(checkpoint, device=device, backend=backend, precision=precision)
    explainer = classifier if classifier.backend == "torch" else load(checkpoint, device=device)
    app = create_app(classifier, explainer, max_upload_bytes=int(max_upload_mb * 1024 * 1024))
    uvicorn.run(app, host=host, port=port, log_level="warning")
