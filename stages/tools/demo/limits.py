"""What one demo request may carry: an upload counted as it arrives, a prompt of bounded size whose numbers
are finite, a download name every browser can save. Each refusal is a RequestError naming the limit or value.

An upload is spooled to a temporary file as it arrives (past 1 MB), so neither a large upload nor many at once
hold their bytes in the server's memory, and one over the cap is refused at the chunk that passes it, whether
or not it declared a Content-Length (a chunked upload declares none).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from urllib.parse import quote

import numpy as np
from starlette.requests import Request

from stages.core.errors import PipelineError
from stages.tools.demo.images import MAX_UPLOAD_MB, RequestError

MAX_POINTS = 64  # SAM's decoder is trained with a handful of clicks; more only costs time
MAX_JSON_MB = 4  # a prompt is a few hundred bytes; 4 MB still lets an oversized one be refused by its count
SPOOL_BYTES = 2**20  # an upload past this goes to a temporary file
UPLOAD_ENV = "SAM_DEMO_MAX_UPLOAD_MB"  # overrides MAX_UPLOAD_MB (tests lower it)


def upload_limit_mb() -> float:
    """The upload cap in MB: $SAM_DEMO_MAX_UPLOAD_MB when set, else MAX_UPLOAD_MB."""
    raw = os.environ.get(UPLOAD_ENV)
    if raw is None:
        return float(MAX_UPLOAD_MB)
    try:
        mb = float(raw)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise PipelineError(f"{UPLOAD_ENV}={raw!r}: expected a positive number of megabytes, e.g. 64")
    return mb


def _declared(request: Request) -> int:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


async def read_upload(request: Request, limit_mb: float, what: str) -> tempfile.SpooledTemporaryFile:
    """The request body in a spooled file (rewound), refused with 413 as soon as it passes `limit_mb`."""
    limit = int(limit_mb * 2**20)
    if (declared := _declared(request)) > limit:
        raise RequestError(f"{what} is {declared / 2**20:.1f} MB; the limit is {limit_mb:g} MB", 413)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, prefix="sam-demo-upload-")
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"{what} is over the limit of {limit_mb:g} MB (counted as it came)", 413)
            spool.write(chunk)
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


async def read_json(request: Request) -> dict:
    """The body as a JSON object (at most MAX_JSON_MB), with errors naming what was wrong."""
    with await read_upload(request, MAX_JSON_MB, "the request body") as f:
        raw = f.read()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"request body is not valid JSON ({e})") from None
    except RecursionError:  # [[[[...: deeper than Python's parser goes
        raise RequestError("request body is not a prompt: JSON nested too deep") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object with variant, points and box; "
                           f"got a JSON {type(body).__name__}")
    return body


def _show(value) -> str:
    """A value as the client wrote it (NaN and Infinity as JSON spells them), cut short."""
    text = json.dumps(value)  # parsed from JSON: it dumps back
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{where} must be a number; got {_show(value)}")
    if not math.isfinite(value):
        raise RequestError(f"{where} must be a finite number; got {_show(value)}")
    return float(value)


def variant_id(body: dict) -> str | None:
    """The requested variant id (None: the server's default), refused unless a string."""
    vid = body.get("variant")
    if vid is not None and not isinstance(vid, str):
        raise RequestError(f"variant must be a string naming one of the server's variants; got {_show(vid)}")
    return vid


def parse_prompt(body: dict):
    """{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1] or null} -> (points, labels, box) arrays,
    at most MAX_POINTS points and one box, every number finite, labels 0 or 1; errors name the key."""
    pts = body.get("points") or []
    box = body.get("box")
    if not isinstance(pts, list):
        raise RequestError(f"points must be [[x, y, label], ...]; got {_show(pts)}")
    if len(pts) > MAX_POINTS:
        raise RequestError(f"{len(pts)} points: a prompt has at most {MAX_POINTS} points")
    rows = []
    for i, p in enumerate(pts):
        if not isinstance(p, list) or len(p) != 3:
            raise RequestError(f"points must be [[x, y, label], ...]; points[{i}] is {_show(p)}")
        x, y, label = (_number(v, f"points[{i}][{j}]") for j, v in enumerate(p))
        if label not in (0, 1):
            raise RequestError(f"points[{i}] label must be 0 (background) or 1 (foreground); "
                               f"got {_show(p[2])}")
        rows.append((x, y, label))
    if box is not None:
        if isinstance(box, list) and box and all(isinstance(b, list) for b in box):
            raise RequestError(f"one box per prompt: box must be [x0, y0, x1, y1]; got {len(box)} boxes")
        if not isinstance(box, list) or len(box) != 4:
            raise RequestError(f"box must be [x0, y0, x1, y1] or null; got {_show(box)}")
        box = np.asarray([_number(v, f"box[{j}]") for j, v in enumerate(box)], np.float32)
    if not rows and box is None:
        raise RequestError("no prompt: click a point or drag a box")
    arr = np.asarray(rows, np.float32).reshape(-1, 3)
    return (arr[:, :2] if rows else None), (arr[:, 2] if rows else None), box


def clean_name(name: str) -> str:
    """An uploaded file's name as shown and saved: no folder, no control characters, at most 200 of them."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/").rsplit("/", 1)[-1])
    return name[:200] or "upload"


def attachment(stem: str, suffix: str) -> str:
    """A Content-Disposition saving as stem + suffix (an ASCII suffix), the stem in any script: RFC 5987
    `filename*` (UTF-8), and an ASCII `filename` (non-ASCII runs as `_`) for clients that do not read it."""
    fallback = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_.") or "image"
    return f"attachment; filename=\"{fallback}{suffix}\"; filename*=UTF-8''{quote(stem + suffix, safe='')}"
