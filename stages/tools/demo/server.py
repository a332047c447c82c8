"""Click to segment: a local web page over the MNN-only runtime (MnnSamPredictor). No torch, onnx or onnxruntime.

Starlette app served by uvicorn on 127.0.0.1. The encoder runs once per image and variant, the decoder per
prompt; embeddings live per browser session (a cookie), so two tabs on different photos do not mix. All MNN
calls go through one lock: MNN modules are not safe to call from two threads, and the box has few cores.
"""

from __future__ import annotations

import base64
import json
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
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stages.core.errors import PipelineError
from stages.sam.preprocess import Scratch, numpy_resize, preprocess_image
from stages.tools.demo.images import (
    BUNDLED,
    MAX_MEGAPIXELS,
    MAX_UPLOAD_MB,
    RequestError,
    decode_image,
    mask_pngs,
    photo_png,
)
from stages.tools.demo.variants import Variant, find_variants, weights
from stages.tools.segment import ImageState, MnnSamPredictor

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "sam_demo_session"
MAX_SESSIONS = 16  # least recently used sessions are dropped beyond this (their embeddings with them)
MAX_LOADED = 3  # MNN variants kept loaded
HEAVY = ("torch", "onnx", "onnxruntime")


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

    def __init__(self, root: Path, model: str, threads: int = 2):
        self.root, self.model, self.threads = root, model, threads
        self.variants = {v.id: v for v in find_variants(root, model)}
        self.weights = weights(root, model)
        self.predictors: OrderedDict[str, MnnSamPredictor] = OrderedDict()
        self.scratch = Scratch()  # preprocessing's work buffers (set_image holds the lock)
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.lock = threading.Lock()
        self.last_request = time.monotonic()

    def variant(self, vid) -> Variant:
        if vid not in self.variants:
            raise RequestError(f"unknown variant {vid!r}: this server has {', '.join(self.variants)}", 404)
        return self.variants[vid]

    def predictor(self, v: Variant) -> MnnSamPredictor:
        if v.id not in self.predictors:
            self.predictors[v.id] = MnnSamPredictor(v.encoder, v.decoder, threads=self.threads, options=v.options,
                                                    upsample=v.upsample)
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
        """The session's image encoded by the variant's encoder (cached per variant), and whether it was cached."""
        if v.id in s.states:
            return s.states[v.id], True
        s.states[v.id] = self.predictor(v).encode(s.x, s.size)
        return s.states[v.id], False

    def set_image(self, sid: str, data: bytes, name: str, vid: str | None) -> dict:
        """Decode, preprocess and encode (with variant `vid`, default the first: the recommended one) an image."""
        image = decode_image(data, name)
        v = self.variant(vid or next(iter(self.variants)))
        with self.lock:
            s = self.session(sid)
            t0 = time.perf_counter()
            x = preprocess_image(image, resize=numpy_resize, scratch=self.scratch)  # under the lock
            s.x, s.size, s.name, s.states, s.mask_png = x, image.shape[:2], name, {}, None
            s.preprocess_ms = (time.perf_counter() - t0) * 1000
            state, _ = self.state(s, v)
        return {"name": name, "width": s.size[1], "height": s.size[0],
                "timings_ms": {"preprocess": s.preprocess_ms, "encoder": state.encoder_ms}}

    def predict(self, sid: str, body: dict) -> dict:
        v = self.variant(body.get("variant"))
        points, labels, box = parse_prompt(body)
        with self.lock:
            s = self.sessions.get(sid)
            if s is None or s.x is None:
                raise RequestError("no image loaded in this session: pick a photo or upload one first", 409)
            self.sessions.move_to_end(sid)
            state, cached = self.state(s, v)
            pred = self.predictor(v).predict(points, labels, box, image=state)
        t0 = time.perf_counter()
        mask = pred.masks[0]
        overlay, s.mask_png = mask_pngs(mask)
        upsample_ms = pred.timings_ms.get("upsample_fp32", 0.0)  # inside the decoder call: shown as postprocess
        post_ms = (time.perf_counter() - t0) * 1000 + upsample_ms
        return {"variant": v.id, "overlay": "data:image/png;base64," + base64.b64encode(overlay).decode(),
                "mask_fraction": float(mask.mean()), "iou_prediction": float(pred.iou_predictions[0]),
                "encoder_cached": cached,
                "timings_ms": {"preprocess": s.preprocess_ms, "encoder": state.encoder_ms,
                               "decoder": pred.timings_ms["decoder"] - upsample_ms, "postprocess": post_ms}}

    def info(self) -> dict:
        return {"model": self.model, "weights": self.weights, "random_weights": self.weights.startswith("random"),
                "variants": [v.public(self.root) for v in self.variants.values()],
                "photos": list(BUNDLED),
                "max_megapixels": MAX_MEGAPIXELS, "threads": self.threads,
                "loaded_modules": [m for m in HEAVY if m in sys.modules]}


def parse_prompt(body: dict):
    """{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] or null} -> arrays, with errors naming the key."""
    pts = body.get("points") or []
    box = body.get("box")
    try:
        arr = np.asarray(pts, np.float32).reshape(-1, 3) if pts else np.zeros((0, 3), np.float32)
        box = None if box is None else np.asarray(box, np.float32).reshape(4)
    except (ValueError, TypeError):
        raise RequestError(f"points must be [[x, y, label], ...] and box [x0, y0, x1, y1]; got points={pts!r} "
                         f"box={body.get('box')!r}") from None
    if not len(arr) and box is None:
        raise RequestError("no prompt: click a point or drag a box")
    return (arr[:, :2] if len(arr) else None), (arr[:, 2] if len(arr) else None), box


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
        name = request.query_params.get("photo")
        if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_MB * 2**20:
            raise RequestError(f"the upload is over {MAX_UPLOAD_MB} MB", 413)
        data = None if name else await request.body()
        if not name and not data:
            raise RequestError("empty upload: choose a JPEG or PNG file")
        if name:
            data = await run_in_threadpool(photo_png, name)
        label = name or request.query_params.get("filename", "upload")
        return JSONResponse(await run_in_threadpool(self.demo.set_image, sid, data, label, request.query_params.get("variant")))

    async def predict(self, request: Request):
        sid = _need_session(request)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise RequestError(f"request body must be a JSON object with variant, points and box; got {type(body).__name__}")
        return JSONResponse(await run_in_threadpool(self.demo.predict, sid, body))

    async def mask(self, request: Request):
        s = self.demo.sessions.get(_need_session(request))
        if s is None or s.mask_png is None:
            raise RequestError("no mask yet: click on the photo first", 409)
        stem = Path(s.name).stem or "image"
        return Response(s.mask_png, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.mask.png"'})


def build_app(demo: Demo) -> Starlette:
    api = Api(demo)

    def route(path, fn, methods=("GET",)):
        async def endpoint(request: Request):
            return await api.guarded(fn, request)
        return Route(path, endpoint, methods=list(methods))

    return Starlette(routes=[
        route("/", api.index), route("/api/info", api.info), route("/api/photo/{name}", api.photo),
        route("/api/image", api.image, ("POST",)), route("/api/predict", api.predict, ("POST",)),
        route("/api/mask.png", api.mask), Route("/favicon.ico", lambda request: Response(status_code=204)), Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def _need_session(request: Request) -> str:
    sid = _sid(request)
    if not sid:
        raise RequestError("no session: open the page first (it sets a session cookie)", 401)
    return sid


def serve(demo: Demo, port: int, idle_minutes: float) -> None:
    """Serve on 127.0.0.1:port (0: any free port) until Ctrl-C or `idle_minutes` without a request."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        raise PipelineError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}): pass another port, "
                            f"e.g. `make demo PORT={port + 1}`") from None
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
