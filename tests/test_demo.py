"""Click to segment: the demo server (MNN only) driven in Debian's headless Chromium, on the tiny pipeline's models."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from browser import ROOT_DIR, chromium, demo_server, mask_pixels
from PIL import Image

from stages.sam.preprocess import numpy_resize, preprocess_image
from stages.sam.samples import photo
from stages.tools.demo.images import encode_png
from stages.tools.demo.variants import find_variants
from stages.tools.segment import MnnSamPredictor

VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def server(tiny_run):
    root, cfg, _ = tiny_run
    with demo_server(root, cfg.name) as (url, proc):
        yield root, cfg.name, url, proc


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


class Reference:
    """The same MNN files and settings the page's variant runs, called directly: what the page must show."""

    def __init__(self, variant, image: np.ndarray):
        self.pred = MnnSamPredictor(variant.encoder, variant.decoder, threads=1, options=variant.options,
                                    upsample=variant.upsample)
        self.state = self.pred.encode(preprocess_image(image, numpy_resize), image.shape[:2])

    def mask(self, request: dict) -> np.ndarray:
        pts = np.asarray(request["points"], np.float32).reshape(-1, 3)
        box = None if request["box"] is None else np.asarray(request["box"], np.float32)
        return self.pred.predict(pts[:, :2] if len(pts) else None, pts[:, 2] if len(pts) else None, box,
                                 image=self.state).masks[0]


def wait_mask(page, seq: int) -> dict:
    page.wait_for_function("n => Number(document.getElementById('mask-layer').dataset.seq) >= n", arg=seq,
                           timeout=120_000)
    request = page.get_attribute("#mask-layer", "data-request")
    return json.loads(request) if request else {}


def to_page(page, x: float, y: float) -> tuple[float, float]:
    box = page.locator("#prompt-layer").bounding_box()
    w, h = (page.evaluate(f"document.getElementById('prompt-layer').{k}") for k in ("width", "height"))
    return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h


def inside_point(ref: Reference, image: np.ndarray) -> tuple[float, float]:
    """A point whose own mask covers it (seeded random weights make arbitrary masks; pick one that does)."""
    h, w = image.shape[:2]
    for fy in np.arange(0.3, 0.8, 0.1):
        for fx in np.arange(0.3, 0.8, 0.1):
            x, y = float(round(fx * w)), float(round(fy * h))
            mask = ref.mask({"points": [[x, y, 1]], "box": None})
            if mask[int(y), int(x)] and 0.005 < mask.mean() < 0.95:
                return x, y
    pytest.fail("no grid point lies inside its own mask on this model")


def test_click_box_background_undo_variant_upload(server, browser, tmp_path):
    root, model, url, _ = server
    variants = find_variants(root, model)
    first = variants[0]
    other = next(v for v in variants if v.encoder != first.encoder and "fp16" in v.id)
    page = browser.new_page(viewport=VIEWPORT)
    outside: list[str] = []

    def local_only(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:  # the page must work offline: nothing may be fetched from anywhere else
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=120_000)
    assert page.is_visible("#weights-note") and "not meaningful" in page.inner_text("#weights-note")
    assert page.input_value("#variant") == first.id

    image = photo("astronaut")
    ref = Reference(first, image)
    x, y = inside_point(ref, image)
    seq = 1
    page.mouse.click(*to_page(page, x, y))
    req = wait_mask(page, seq)
    assert req["points"] == [[pytest.approx(x, abs=1), pytest.approx(y, abs=1), 1]] and req["box"] is None
    want = ref.mask(req)
    px = mask_pixels(page, x, y)
    assert (px["width"], px["height"]) == (image.shape[1], image.shape[0])
    assert px["total"] == int(want.sum()) > 0, "the overlay is not the mask MNN computed for this click"
    assert px["near"] > 0, "no mask pixels around the click"
    for phase in ("preprocess", "encoder", "decoder", "postprocess"):
        assert float(page.inner_text(f"#t-{phase}").split()[0]) > 0

    # the mask downloads as a PNG, the one shown
    png = page.request.get(url + "/api/mask.png")
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.body()))) > 0, want)

    # drag a box: the request carries it, the overlay is the mask for point + box
    h, w = image.shape[:2]
    page.mouse.move(*to_page(page, 0.2 * w, 0.15 * h))
    page.mouse.down()
    page.mouse.move(*to_page(page, 0.5 * w, 0.5 * h), steps=4)
    page.mouse.move(*to_page(page, 0.8 * w, 0.9 * h), steps=4)
    page.mouse.up()
    seq += 1
    req = wait_mask(page, seq)
    assert req["box"] == pytest.approx([0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h], abs=1.5) and len(req["points"]) == 1
    assert mask_pixels(page)["total"] == int(ref.mask(req).sum())

    # background points: shift-click and right click
    page.keyboard.down("Shift")
    page.mouse.click(*to_page(page, 0.1 * w, 0.1 * h))
    page.keyboard.up("Shift")
    seq += 1
    wait_mask(page, seq)
    page.mouse.click(*to_page(page, 0.9 * w, 0.1 * h), button="right")
    seq += 1
    req = wait_mask(page, seq)
    assert [p[2] for p in req["points"]] == [1, 0, 0] and req["box"] is not None
    assert mask_pixels(page)["total"] == int(ref.mask(req).sum())

    page.click("#undo")
    seq += 1
    req = wait_mask(page, seq)
    assert [p[2] for p in req["points"]] == [1, 0]

    # another variant: its encoder runs on this photo, its mask is shown
    page.select_option("#variant", other.id)
    seq += 1
    req = wait_mask(page, seq)
    assert page.get_attribute("#mask-layer", "data-variant") == other.id
    assert "reused" not in page.inner_text("#t-encoder")
    assert mask_pixels(page)["total"] == int(Reference(other, image).mask(req).sum())
    assert other.encoder.name in page.inner_text("#variant-info")

    # a text file renamed .jpg: a message on the page, the server goes on serving the photo already loaded
    page.set_input_files("#upload", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo\n"}])
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    assert "notes.jpg is not a JPEG or PNG image" in page.inner_text("#error")
    page.click("#undo")
    seq += 1
    wait_mask(page, seq)
    assert page.is_hidden("#error") and page.get_attribute("body", "data-image") == "astronaut"

    # a real upload replaces the photo
    chelsea = photo("chelsea")
    page.set_input_files("#upload", files=[{"name": "cat.png", "mimeType": "image/png", "buffer": encode_png(chelsea)}])
    page.wait_for_selector("body[data-image='cat.png']", timeout=120_000)
    assert mask_pixels(page)["width"] == chelsea.shape[1]
    page.mouse.click(*to_page(page, 0.5 * chelsea.shape[1], 0.5 * chelsea.shape[0]))
    seq += 1
    wait_mask(page, seq)
    page.click("#clear")
    seq += 1
    wait_mask(page, seq)
    assert mask_pixels(page)["total"] == 0

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot))
    if os.environ.get("DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["DEMO_SCREENSHOT"])
    info = page.request.get(url + "/api/info").json()
    assert info["loaded_modules"] == [], "the demo server imported torch, onnx or onnxruntime"
    assert outside == []
    page.close()


def _data_png(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def test_two_sessions_keep_their_own_photo(server, browser):
    root, model, url, _ = server
    vid = find_variants(root, model)[0].id
    a, b = browser.new_context(), browser.new_context()
    try:
        for ctx, name in ((a, "astronaut"), (b, "chelsea")):
            assert ctx.request.get(url + "/").ok  # sets the session cookie
            assert ctx.request.post(url + f"/api/image?photo={name}&variant={vid}").ok
        prompt = {"variant": vid, "points": [[100, 100, 1]], "box": None}
        first = _data_png(a.request.post(url + "/api/predict", data=json.dumps(prompt)).json()["overlay"])
        other = _data_png(b.request.post(url + "/api/predict", data=json.dumps(prompt)).json()["overlay"])
        again = _data_png(a.request.post(url + "/api/predict", data=json.dumps(prompt)).json()["overlay"])
        assert first.shape[:2] == photo("astronaut").shape[:2] and other.shape[:2] == photo("chelsea").shape[:2]
        assert np.array_equal(first, again)
    finally:
        a.close()
        b.close()


def _big_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("method,path,body,status,message", [
    ("post", "/api/predict", json.dumps({"variant": "VID", "points": [[5, 5, 1]]}), 409, "no image loaded"),
    ("post", "/api/image?filename=huge.png", "big", 413, "huge.png is 8000x7000 = 56.0 megapixels; the limit is 50"),
    ("post", "/api/image?filename=empty.jpg", b"", 400, "empty upload"),
    ("post", "/api/image?photo=nope", None, 404, "unknown photo 'nope'"),
    ("load", "/api/predict", "{not json", 400, "not valid JSON"),
    ("load", "/api/predict", "[1, 2]", 400, "must be a JSON object"),
    ("load", "/api/predict", json.dumps({"variant": "nope", "points": [[5, 5, 1]]}), 404, "unknown variant 'nope'"),
    ("load", "/api/predict", json.dumps({"variant": "VID", "points": "abc"}), 400, "points must be"),
    ("load", "/api/predict", json.dumps({"variant": "VID", "points": []}), 400, "no prompt"),
    ("load", "/api/predict", json.dumps({"variant": "VID", "points": [[9000, 5, 1]]}), 400, "outside the"),
    ("get", "/api/mask.png", None, 409, "no mask yet"),
])
def test_bad_requests_get_a_message_and_the_server_stays_up(server, browser, method, path, body, status, message):
    root, model, url, _ = server
    vid = find_variants(root, model)[0].id
    ctx = browser.new_context()
    try:
        assert ctx.request.get(url + "/").ok
        if method == "load":
            assert ctx.request.post(url + f"/api/image?photo=chelsea&variant={vid}").ok
        data = _big_png(8000, 7000) if body == "big" else body.replace("VID", vid) if isinstance(body, str) else body
        r = ctx.request.get(url + path) if method == "get" else ctx.request.post(url + path, data=data)
        assert r.status == status and message in r.json()["error"], r.text()
        assert ctx.request.get(url + "/api/info").ok
    finally:
        ctx.close()


def test_no_session_cookie_is_refused(server, browser):
    _, _, url, _ = server
    ctx = browser.new_context()
    try:
        r = ctx.request.post(url + "/api/image?photo=chelsea")
        assert r.status == 401 and "open the page first" in r.json()["error"]
    finally:
        ctx.close()


def test_page_loads_nothing_from_elsewhere():
    static = ROOT_DIR / "stages" / "tools" / "demo" / "static"
    for f in static.iterdir():
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name


def _demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages", "demo", *args], cwd=ROOT_DIR, capture_output=True,
                          text=True, timeout=timeout)


def test_port_in_use_no_build_and_idle_stop(server, tmp_path):
    root, model, url, _ = server
    port = url.rsplit(":", 1)[1]
    res = _demo("--model", model, "--root", str(root), "--port", port)
    assert res.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in res.stderr and "PORT=" in res.stderr
    res = _demo("--model", "vit_h", "--root", str(tmp_path))
    assert res.returncode == 2 and "no MNN models for vit_h" in res.stderr and "make all MODEL=vit_h" in res.stderr
    res = _demo("--model", model, "--root", str(root), "--port", "0", "--idle-minutes", "0.02")
    assert res.returncode == 0 and "no request for 0.02 minutes: stopping" in res.stdout

