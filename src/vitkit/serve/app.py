"""HTTP API and web page for a trained classifier (FastAPI + uvicorn).

POST /predict   multipart/form-data, field `file` (repeat it for several images) -> top-k per image
POST /explain   one image -> top-k as /predict scores it, the image as the model sees it and the overlay of
                the map `vitkit explain` picks for the model (PNG data URLs), and the part of the photo they show
GET  /health    GET /labels    GET /  (a page to drop an image on)

`vitkit serve` prints its address once it accepts connections and logs every request (client, method,
path, status, milliseconds) at info level on the `vitkit.serve` logger.

Concurrent requests are micro-batched: images wait up to `max_wait_ms` for company and then go
through the model in one forward pass (at most `max_batch` images). Uploads stream to the form parser
and are decoded on worker threads, never on the event loop; `ServeLimits` bounds what one request (size,
images, pixels, time) and all of them together (bytes in flight, decoded images waiting, connections)
may cost.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import html
import io
import ipaddress
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..data.images import BadImageError
from ..errors import VitkitError
from ..inference.predict import classifier_results
from ..runtime import available_cores
from .limits import MIB, ServeLimits

PAGE = (Path(__file__).parent / "page.html").read_text()
request_log = logging.getLogger("vitkit.serve")


# Decoding more than this many pixels takes ~0.1 s and ~40 MB or more; such images take turns on one thread
# of their own so that small requests never wait behind them and at most one is decoded at a time.
HEAVY_PIXELS = 4_000_000


class ClientError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


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


class Decoder:
    """Image decoding off the event loop: a thread per core for ordinary images (Pillow and NumPy release
    the GIL while they work) and one thread that takes heavy images in turn."""

    def __init__(self, threads: int = 0):
        threads = threads or available_cores()
        self.light = ThreadPoolExecutor(threads, thread_name_prefix="vitkit-decode")
        self.heavy = ThreadPoolExecutor(1, thread_name_prefix="vitkit-decode-heavy")

    async def pixels(self, file) -> int:
        """The pixel count in the image's header (nothing is decoded); 0 when Pillow cannot tell, in
        which case decoding names what is wrong."""
        return await asyncio.get_running_loop().run_in_executor(self.light, header_pixels, file)

    async def decode(self, load, file, name: str, pixels: int):
        pool = self.heavy if pixels > HEAVY_PIXELS else self.light
        return await asyncio.get_running_loop().run_in_executor(pool, load, file, name)

    def shutdown(self) -> None:
        self.light.shutdown(wait=False, cancel_futures=True)
        self.heavy.shutdown(wait=False, cancel_futures=True)


def header_pixels(file) -> int:
    try:
        with Image.open(file) as img:
            return img.width * img.height
    except Exception:  # unreadable headers are reported by the decoder with the file's name
        return 0
    finally:
        file.seek(0)


class ByteBudget:
    """A budget of bytes held at once across all requests; a request that would go past it gets 503 and
    Retry-After, saying `busy`."""

    def __init__(self, limit: int, busy: str):
        self.limit, self.busy, self.used = limit, busy, 0

    @asynccontextmanager
    async def reserve(self, size: int):
        if self.used + size > self.limit:
            raise ClientError(503, f"{self.busy}; retry in a moment", {"Retry-After": "1"})
        self.used += size
        try:
            yield
        finally:
            self.used -= size


def limited_receive(receive, limit: int, timeout: float):
    """The ASGI receive channel of one request, cut off (413) past `limit` body bytes and (408) when the
    whole body has not arrived within `timeout` seconds, so a huge or slow upload holds nothing for long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received = 0

    async def receive_within_limits():
        nonlocal received
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            raise ClientError(408, f"the upload did not arrive within {timeout:g} s; send it faster") from None
        received += len(message.get("body", b""))
        if received > limit:
            raise ClientError(413, f"upload is over the limit of {limit:,} bytes")
        return message

    return receive_within_limits


@asynccontextmanager
async def read_images(request: Request, limits: ServeLimits, load, decoder: Decoder, budgets: "Budgets"):
    """The request's images as `load(file, name)` decodes them, after checking them against `limits`; their
    decoded bytes stay reserved in `budgets.decoded` until the block that uses them ends."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ClientError(
            415, f"send images as multipart/form-data in the field 'file' (got {content_type or 'no content type'})"
        )
    limit = limits.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    if declared == "0":
        raise ClientError(400, "empty request body: attach an image in the field 'file'")
    async with AsyncExitStack() as decoded_held:
        # Bodies stream into the form parser, which keeps at most 1 MB of each file in memory (the rest in a
        # temporary file), so an upload costs the server little memory while it is received and decoded.
        async with budgets.inflight.reserve(int(declared) if declared and declared.isdigit() else limit):
            body = Request(request.scope, limited_receive(request.receive, limit, limits.client_timeout))
            try:
                form = await body.form(
                    max_files=limits.max_files, max_fields=limits.max_files, max_part_size=64 * 1024
                )
            except HTTPException as e:  # Starlette's own refusals of a multipart body
                if "Too many files" in str(e.detail):
                    raise ClientError(
                        413, f"too many images in one request: send at most {limits.max_files} per request"
                    ) from None
                raise ClientError(400, f"malformed multipart body ({e.detail})") from None
            try:
                named, pixels = await checked_uploads(form, limits, decoder)
                # the decoded images outlive their upload's bytes: they wait for the model, so they are
                # reserved before they are decoded and held until the request is answered
                await decoded_held.enter_async_context(budgets.decoded.reserve(len(named) * budgets.image_bytes))
                images = await decode_uploads(named, pixels, load, decoder)
            finally:
                await form.close()
        yield images


async def checked_uploads(form, limits: ServeLimits, decoder: Decoder) -> tuple[list[tuple[str, Any]], list[int]]:
    """(name, file) of each image in the form and its pixel count, refused when over `limits`."""
    uploads = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not uploads:
        raise ClientError(400, "no image in the field 'file'")
    named = []
    for upload in uploads:
        name = upload.filename or "upload"
        part_type = (upload.content_type or "").split(";")[0].strip()
        if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            raise ClientError(415, f"{name}: content type {part_type} is not an image")
        if not upload.size:
            raise ClientError(400, f"{name}: empty file")
        named.append((name, upload.file))
    pixels = await asyncio.gather(*(decoder.pixels(file) for _, file in named))
    total = 0
    for (name, _), count in zip(named, pixels):
        total += count
        if total > limits.max_pixels:
            raise ClientError(
                413,
                f"{name}: its {count:,} pixels bring the request to {total:,}, over the limit of "
                f"{limits.max_pixels:,} pixels per request; send fewer or smaller images",
            )
    return named, pixels


async def decode_uploads(named, pixels: list[int], load, decoder: Decoder) -> list[tuple[str, Any]]:
    decoded = await asyncio.gather(
        *(decoder.decode(load, file, name, count) for (name, file), count in zip(named, pixels)),
        return_exceptions=True,
    )
    for result in decoded:
        if isinstance(result, BadImageError):
            raise ClientError(415 if result.kind == "unidentified" else 400, str(result))
        if isinstance(result, BaseException):
            raise result
    return [(name, image) for (name, _), image in zip(named, decoded)]


@dataclass
class Budgets:
    """What all requests together may hold: upload bytes being received or decoded (`inflight`) and
    decoded images waiting for the model (`decoded`, `image_bytes` each)."""

    inflight: ByteBudget
    decoded: ByteBudget
    image_bytes: int


def png_data_url(pixels: np.ndarray, side: int = 256) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).resize((side, side), Image.Resampling.NEAREST).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def explanation(explainer, image: torch.Tensor, target: int) -> dict:
    """The image as the model sees it (the centre crop at its input size) and the overlay of the map
    `explain_tensor` picks for the model, explaining class `target`, on those same pixels: PNG data URLs of
    one size, so that they line up."""
    from ..viz.explain import explain_tensor, overlay
    from ..viz.report import display_images

    _, maps = explain_tensor(explainer, image.unsqueeze(0), target=torch.tensor([target]))
    shown = display_images(image.unsqueeze(0), explainer.input_transform)[0]
    shown = (shown.expand(3, -1, -1) if shown.shape[0] == 1 else shown).permute(1, 2, 0).numpy()
    heat = next(iter(maps.values()))[0].numpy()
    return {"input": png_data_url(shown), "overlay": png_data_url(overlay(shown, heat))}


# what the overlay shows, by the map `explain_tensor` picks for the model (viz.explain.choose_method)
MAP_CAPTIONS = {
    "rollout": "where it looked: attention rollout",
    "gradcam": "what raised its top class: Grad-CAM on the token grid",
    "saliency": "the pixels that move its top class most: gradient saliency",
}


def map_caption(explainer) -> str:
    from ..viz.explain import choose_method

    if not isinstance(explainer.model, torch.nn.Module):
        return "no map: explanations need the PyTorch model"
    return MAP_CAPTIONS[choose_method(explainer.model)]


class RequestLog:
    """ASGI middleware: one info line per request, once its response has gone out (or failed)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 0

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = (scope.get("client") or ("-",))[0]
            path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]  # as sent: no decoded newlines
            elapsed = (time.perf_counter() - start) * 1000
            request_log.info("%s %s %s %d %.1f ms", client, scope["method"], path, status, elapsed)


def image_loader(classifier):
    """file object, name -> the uint8 tensor the classifier's preprocessing makes of it."""
    return classifier.preprocessing.load_tensor


def explain_loader(classifier):
    """file object, name -> (the uint8 tensor image_loader makes of it, the part of the photo it shows)."""
    preprocessing = classifier.preprocessing

    def load(file, name: str) -> tuple[torch.Tensor, tuple[float, ...]]:
        photo = preprocessing.decode(file, name)
        return preprocessing.fitted_tensor(photo, name), preprocessing.crop_box(*photo.size)

    return load


def own_model(classifier):
    """The classifier with a PyTorch model of its own (fp32), for /explain: rollout switches attention
    capture on the model's modules and Grad-CAM hooks them, which would change /predict's forward passes
    running on the same modules at the same time (and theirs its maps). A copy rather than one lock around
    both: /predict then keeps answering while a map is drawn, for one more model's weights in memory
    (benchmarks/results/serve_isolation.json)."""
    from ..inference import Classifier

    return Classifier(
        copy.deepcopy(classifier.model), classifier.meta, str(classifier.device), name=classifier.name
    )


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
    decoder = Decoder(limits.decode_threads)
    # files decode to RGB squares of the preprocessing's side, one byte a channel
    image_bytes = 3 * classifier.preprocessing.square_size**2
    if limits.max_decoded_bytes < limits.max_files * image_bytes:
        side = classifier.preprocessing.square_size
        raise VitkitError(
            f"--max-decoded-mb {limits.max_decoded_bytes / MIB:g} cannot hold one request of --max-files "
            f"{limits.max_files} images decoded at {side} px ({limits.max_files * image_bytes / MIB:.1f} MiB): "
            "raise --max-decoded-mb or lower --max-files"
        )
    budgets = Budgets(
        ByteBudget(limits.max_inflight_bytes, "the server is busy with other uploads"),
        ByteBudget(limits.max_decoded_bytes, "the server is busy with other images"),
        image_bytes,
    )
    explain_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown()

    app = FastAPI(title="vitkit", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.classifier = classifier

    def answer_with(faster) -> None:
        """Answer /predict with `faster` (the same checkpoint on a faster backend) from the next batch on."""
        batcher.predict, app.state.classifier = faster.outputs_tensor, faster

    app.state.answer_with = answer_with
    app.add_middleware(RequestLog)
    shows = "every label above its threshold" if classifier.multi_label else "the top-5 classes"
    page_html = (
        PAGE.replace("{{model}}", html.escape(classifier.name))
        .replace("{{summary}}", html.escape(classifier.summary))
        .replace("{{shows}}", shows)
        .replace("{{map}}", html.escape(map_caption(explainer)))
    )

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
            "batches": len(batcher.batch_sizes),
            "max_batch_seen": max(batcher.batch_sizes, default=0),
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
        async with read_images(request, limits, explain_loader(explainer), decoder, budgets) as images:
            name, (image, crop) = images[0]
            # the scores come the way /predict's do (its backend, precision and batches), and the map
            # explains the class they rank first
            (probs,) = await batcher.submit([image])
            async with explain_lock:  # gradients and attention capture are not re-entrant
                shown = await asyncio.get_running_loop().run_in_executor(
                    None, explanation, explainer, image, int(probs[: len(classifier.class_names)].argmax())
                )
        return {
            "path": name,
            **classifier_results(classifier, probs.unsqueeze(0), 5)[0],
            "multi_label": classifier.multi_label,
            **shown,
            "crop": dict(zip(("left", "top", "right", "bottom"), crop)),
        }

    return app


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request's headers: uvicorn closes idle
    keep-alive connections but would wait forever on a client that connects and then sends nothing, or
    sends its headers a byte at a time."""

    header_timeout = ServeLimits.client_timeout

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        self._arm_header_deadline()  # before uvicorn reads a pipelined request, whose headers then disarm it
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_after and self._header_deadline is not None:
            self._header_deadline.cancel()  # the request's headers are in; the app times its body
            self._header_deadline = None

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self._header_deadline is not None:
            self._header_deadline.cancel()

    def _arm_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()
        self._waiting_after = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._close_if_still_waiting)

    def _close_if_still_waiting(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def warn_if_exposed(host: str) -> None:
    """The API has no authentication: say so when it listens beyond this machine."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(
            f"vitkit serve: warning: listening on {host}, reachable from other machines; the API has no "
            "authentication, so anyone who can reach this port can use it. Put it behind an authenticating "
            "proxy, or bind to 127.0.0.1",
            file=sys.stderr,
        )


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing where it listens (the real port, also for --port 0) once it accepts
    connections."""

    def __init__(self, config: uvicorn.Config, classifier):
        super().__init__(config)
        self.classifier = classifier

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            runtime = self.classifier.runtime
            print(
                f"vitkit serve: {self.classifier.name} ({self.classifier.summary}) on {runtime['backend']}, "
                f"{runtime['device']}, {runtime['precision']} ({runtime['precision_reason']}) "
                f"at http://{host}:{port}/ (Ctrl+C to stop)",
                flush=True,
            )


def log_requests_to_stderr() -> None:
    if not request_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False


def serve(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    topk: int = 5,
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
    protocol = type("ServeProtocol", (GuardedH11Protocol,), {"header_timeout": limits.client_timeout})
    warn_if_exposed(host)
    log_requests_to_stderr()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=protocol,
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
