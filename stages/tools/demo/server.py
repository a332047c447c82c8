"""Click to segment: a local page over the MNN-only runtime (MnnSamPredictor). No torch, onnx or onnxruntime.

Starlette app served by uvicorn on 127.0.0.1. The encoder runs once per image and variant, the decoder per
prompt; embeddings live per browser session (a cookie), so two tabs on different photos do not mix. All MNN
calls go through one lock: MNN modules are not safe to call from two threads, and the box has few cores.
"""

from __future__ import annotations

import base64
import logging
import secrets
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stages.core.errors import PipelineError
from stages.sam.preprocess import Scratch, numpy_resize, preprocess_image
from stages.tools.demo.images import BUNDLED, MAX_MEGAPIXELS, RequestError, decode_image, mask_pngs, photo_png
from stages.tools.demo.limits import (
    MAX_POINTS,
    attachment,
    clean_name,
    parse_prompt,
    read_json,
    read_upload,
    upload_limit_mb,
    variant_id,
)
from stages.tools.demo.variants import Variant, find_variants, weights
from stages.tools.segment import ImageState, MnnSamPredictor

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "sam_demo_session"
MAX_SESSIONS = 16  # least recently used sessions are dropped beyond this (their embeddings with them)
MAX_LOADED = 3  # MNN variants kept loaded
MAX_DECODES = 2  # images decoded at once: a burst of uploads waits rather than holding many decoded images
HEAVY = ("torch", "onnx", "onnxruntime")
# DNS rebinding: a page on another site whose name resolves to 127.0.0.1 still sends its own Host header
ALLOWED_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class Session:
    x: np.ndarray | None = None  # the preprocessed image, kept to encode it again for another variant
    size: tuple[int, int] | None = None
    name: str = ""
    preprocess_ms: float = 0.0
    states: dict[str, ImageState] = field(default_factory=dict)  # variant id -> embeddings
    mask_png: bytes | None = None


class Demo:
    """The model's variants, loaded predictors (shared) and browser sessions (one image each)."""

    def __init__(self, root: Path, model: str, threads: int = 2, max_upload_mb: float | None = None):
        self.root, self.model, self.threads = root, model, threads
        self.max_upload_mb = max_upload_mb or upload_limit_mb()
        self.variants = {v.id: v for v in find_variants(root, model)}
        self.weights = weights(root, model)
        self.predictors: OrderedDict[str, MnnSamPredictor] = OrderedDict()
        self.scratch = Scratch()  # preprocessing's work buffers (set_image holds the lock)
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.lock = threading.Lock()
        self.decodes = threading.BoundedSemaphore(MAX_DECODES)
        self.last_request = time.monotonic()

    def variant(self, vid: str | None) -> Variant:
        if vid is None:
            return next(iter(self.variants.values()))  # the first: the recommended one
        if vid not in self.variants:
            raise RequestError(f"unknown variant {vid!r}: this server has {', '.join(self.variants)}", 404)
        return self.variants[vid]

    def predictor(self, v: Variant) -> MnnSamPredictor:
        if v.id not in self.predictors:
            self.predictors[v.id] = MnnSamPredictor(v.encoder, v.decoder, threads=self.threads,
                                                    options=v.options, upsample=v.upsample)
            while len(self.predictors) > MAX_LOADED:
                self.predictors.popitem(last=False)
        self.predictors.move_to_end(v.id)
        return self.predictors[v.id]

    def session(self, sid: str) -> Session:
        s = self.sessions.setdefault(sid, Session())
        self.sessions.move_to_end(sid)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return s

    def state(self, s: Session, v: Variant) -> tuple[ImageState, bool]:
        """The session's image encoded by the variant's encoder (cached per variant), and whether it was."""
        if v.id in s.states:
            return s.states[v.id], True
        s.states[v.id] = self.predictor(v).encode(s.x, s.size)
        return s.states[v.id], False

    def set_image(self, sid: str, data, name: str, vid: str | None) -> dict:
        """Decode (bytes or a file), preprocess and encode (variant `vid`, default the first) an image."""
        v = self.variant(vid)
        with self.decodes:  # a decoded image lives until it is preprocessed: at most MAX_DECODES of them
            image = decode_image(data, name)
            with self.lock:
                s = self.session(sid)
                t0 = time.perf_counter()
                x = preprocess_image(image, resize=numpy_resize, scratch=self.scratch)  # under the lock
                s.x, s.size, s.name, s.states, s.mask_png = x, image.shape[:2], name, {}, None
                s.preprocess_ms = (time.perf_counter() - t0) * 1000
                del image
                state, _ = self.guard_mnn(v, lambda: self.state(s, v))
        return {"name": name, "width": s.size[1], "height": s.size[0],
                "timings_ms": {"preprocess": s.preprocess_ms, "encoder": state.encoder_ms}}

    def guard_mnn(self, v: Variant, call):
        """call() (MNN work, under the lock); when it fails, the variant's modules are dropped and loaded
        again on the next request: an MNN module that failed mid-run crashed the process when called again."""
        try:
            return call()
        except RequestError:
            raise
        except Exception:
            self.predictors.pop(v.id, None)
            raise

    def predict(self, sid: str, body: dict) -> dict:
        v = self.variant(variant_id(body))
        points, labels, box = parse_prompt(body)
        with self.lock:
            s = self.sessions.get(sid)
            if s is None or s.x is None:
                raise RequestError("no image loaded in this session: pick a photo or upload one first", 409)
            self.sessions.move_to_end(sid)
            state, cached = self.guard_mnn(v, lambda: self.state(s, v))
            pred = self.guard_mnn(v, lambda: self.predictor(v).predict(points, labels, box, image=state))
        t0 = time.perf_counter()
        mask = pred.masks[0]
        overlay, s.mask_png = mask_pngs(mask)
        upsample_ms = pred.timings_ms.get("upsample_fp32", 0.0)  # in the decoder call: shown as postprocess
        post_ms = (time.perf_counter() - t0) * 1000 + upsample_ms
        return {"variant": v.id, "overlay": "data:image/png;base64," + base64.b64encode(overlay).decode(),
                "mask_fraction": float(mask.mean()), "iou_prediction": float(pred.iou_predictions[0]),
                "encoder_cached": cached,
                "timings_ms": {"preprocess": s.preprocess_ms, "encoder": state.encoder_ms,
                               "decoder": pred.timings_ms["decoder"] - upsample_ms, "postprocess": post_ms}}

    def info(self) -> dict:
        return {"model": self.model, "weights": self.weights,
                "random_weights": self.weights.startswith("random"),
                "variants": [v.public(self.root) for v in self.variants.values()], "photos": list(BUNDLED),
                "max_megapixels": MAX_MEGAPIXELS, "max_upload_mb": self.max_upload_mb,
                "max_points": MAX_POINTS, "threads": self.threads,
                "loaded_modules": [m for m in HEAVY if m in sys.modules]}


def _sid(request: Request) -> str:
    return request.cookies.get(COOKIE) or request.headers.get("x-session") or ""


class Api:
    """The demo's endpoints; every one goes through guarded(), which turns errors into JSON answers."""

    def __init__(self, demo: Demo):
        self.demo = demo

    async def guarded(self, fn, request: Request):
        self.demo.last_request = time.monotonic()
        try:
            return await fn(request)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, e.status)
        except ClientDisconnect:  # the client went away mid-upload: nobody to answer
            return Response(status_code=400)
        except PipelineError as e:  # from the predictor: a bad prompt (a point outside the image, ...)
            return JSONResponse({"error": str(e)}, 400)
        except Exception as e:  # a bug or an MNN error: say so, keep serving
            log.exception("request %s failed", request.url.path)
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    async def index(self, request: Request):
        response = FileResponse(STATIC / "index.html")
        if not request.cookies.get(COOKIE):
            response.set_cookie(COOKIE, secrets.token_urlsafe(16), httponly=True, samesite="strict")
        return response

    async def info(self, request: Request):
        return JSONResponse(self.demo.info())

    async def photo(self, request: Request):
        name = request.path_params["name"]
        return Response(await run_in_threadpool(photo_png, name), media_type="image/png")

    async def image(self, request: Request):
        sid = _need_session(request)
        name, vid = request.query_params.get("photo"), request.query_params.get("variant")
        if name:
            data = await run_in_threadpool(photo_png, name)
            return JSONResponse(await run_in_threadpool(self.demo.set_image, sid, data, name, vid))
        label = clean_name(request.query_params.get("filename", "upload"))
        with await read_upload(request, self.demo.max_upload_mb, f"the upload {label}") as upload:
            if not upload.seek(0, 2):
                raise RequestError("empty upload: choose a JPEG or PNG file")
            upload.seek(0)
            return JSONResponse(await run_in_threadpool(self.demo.set_image, sid, upload, label, vid))

    async def predict(self, request: Request):
        sid = _need_session(request)
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(self.demo.predict, sid, body))

    async def mask(self, request: Request):
        s = self.demo.sessions.get(_need_session(request))
        if s is None or s.mask_png is None:
            raise RequestError("no mask yet: click on the photo first", 409)
        disposition = attachment(Path(s.name).stem or "image", ".mask.png")
        return Response(s.mask_png, media_type="image/png", headers={"Content-Disposition": disposition})


def build_app(demo: Demo) -> Starlette:
    api = Api(demo)

    def route(path, fn, methods=("GET",)):
        async def endpoint(request: Request):
            return await api.guarded(fn, request)
        return Route(path, endpoint, methods=list(methods))

    return Starlette(routes=[
        route("/", api.index), route("/api/info", api.info), route("/api/photo/{name}", api.photo),
        route("/api/image", api.image, ("POST",)), route("/api/predict", api.predict, ("POST",)),
        route("/api/mask.png", api.mask), Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(ALLOWED_HOSTS))])  # any port


def _need_session(request: Request) -> str:
    sid = _sid(request)
    if not sid:
        raise RequestError("no session: open the page first (it sets a session cookie)", 401)
    return sid


def serve(demo: Demo, port: int, idle_minutes: float) -> None:
    """Serve on 127.0.0.1:port (0: any free port) until Ctrl-C or `idle_minutes` without a request."""
    import socket

    import uvicorn

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise PipelineError(f"--port {port} is not a TCP port: pass 0..65535 (0: any free port)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        raise PipelineError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}): pass another port, "
                            f"e.g. `make demo PORT={port + 1}`") from None
    sock.listen(2048)  # before the URL is printed: a client that reads it may connect at once (queued)
    server = uvicorn.Server(uvicorn.Config(build_app(demo), log_level="warning", timeout_graceful_shutdown=2))

    def watch_idle() -> None:
        while not server.should_exit:
            time.sleep(1.0)
            if time.monotonic() - demo.last_request > idle_minutes * 60:
                print(f"no request for {idle_minutes:g} minutes: stopping", flush=True)
                server.should_exit = True

    threading.Thread(target=watch_idle, daemon=True).start()
    print(f"serving {demo.model} ({len(demo.variants)} MNN variants, weights {demo.weights}) on "
          f"http://127.0.0.1:{sock.getsockname()[1]}/  (Ctrl-C stops; stops by itself after {idle_minutes:g} "
          f"idle minutes)", flush=True)
    server.run(sockets=[sock])
