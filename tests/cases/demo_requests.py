"""Bad requests to the demo server, one row each: what is sent, and the status and error text that must come
back (tests/test_demo_limits.py runs them). The server under test runs with an upload cap of CAP_MB."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CAP_MB = 8  # $SAM_DEMO_MAX_UPLOAD_MB of the tests' server: small, so no test pushes the default 64 MB
MB = 2**20


@dataclass(frozen=True)
class BadRequest:
    id: str
    method: str
    path: str
    body: bytes | Callable[[], bytes | Iterator[bytes]] | None  # an iterator is sent chunked
    status: int
    message: str  # a substring of the error the server answers with
    headers: dict[str, str] = field(default_factory=dict)
    loaded: bool = True  # sent in a session with a photo loaded (else in a fresh one)

    def payload(self, variant: str) -> bytes | Iterator[bytes] | None:
        """The body, with the placeholder VID replaced by the id of one of the server's variants."""
        body = self.body() if callable(self.body) else self.body
        return body.replace(b'"VID"', json.dumps(variant).encode()) if isinstance(body, bytes) else body


@functools.cache
def jpeg() -> bytes:
    """A real JPEG: the bundled photo `chelsea` (451x300) as Pillow writes it."""
    from PIL import Image

    from stages.sam.samples import photo

    buf = io.BytesIO()
    Image.fromarray(photo("chelsea")).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """`total` bytes in chunks (sent with Transfer-Encoding: chunked: no Content-Length to check)."""
    block = b"\xff" * size
    for start in range(0, total, size):
        yield block[: min(size, total - start)]


def prompt(fields: str | dict) -> bytes:
    """A /api/predict body for variant VID unless it names one; fields as a str are sent as written (NaN,
    Infinity, 1e999 as the client typed them): '"box": [NaN, 0, 9, 9]'."""
    if isinstance(fields, dict):
        return json.dumps({"variant": "VID", **fields}).encode()
    return ('{"variant": "VID", ' + fields + "}").encode()


PREDICT, UPLOAD = "/api/predict", "/api/image?filename="
ROWS = [
    BadRequest("chunked-upload-over-cap", "POST", UPLOAD + "big.jpg", lambda: chunks(3 * CAP_MB * MB // 2),
               413, f"the upload big.jpg is over the limit of {CAP_MB} MB (counted as it came)"),
    BadRequest("content-length-over-cap", "POST", UPLOAD + "big.jpg", lambda: b"\0" * (CAP_MB + 1) * MB,
               413, f"the upload big.jpg is {CAP_MB + 1:.1f} MB; the limit is {CAP_MB} MB"),
    BadRequest("foreign-host", "GET", "/api/info", None, 400, "Invalid host header",
               {"Host": "evil.example"}),
    BadRequest("foreign-host-with-port", "GET", "/api/info", None, 400, "Invalid host header",
               {"Host": "localhost.evil.example:8765"}),
    BadRequest("nan-in-box", "POST", PREDICT, prompt('"box": [NaN, 0, 10, 10]'), 400,
               "box[0] must be a finite number; got NaN"),
    BadRequest("infinity-in-points", "POST", PREDICT, prompt('"points": [[5, -Infinity, 1]]'), 400,
               "points[0][1] must be a finite number; got -Infinity"),
    BadRequest("overflowing-number", "POST", PREDICT, prompt('"points": [[1e999, 5, 1]]'), 400,
               "points[0][0] must be a finite number; got Infinity"),
    BadRequest("bool-as-number", "POST", PREDICT, prompt('"points": [[true, 5, 1]]'), 400,
               "points[0][0] must be a number; got true"),
    BadRequest("list-as-variant", "POST", PREDICT, prompt({"variant": [], "points": [[5, 5, 1]]}), 400,
               "variant must be a string naming one of the server's variants; got []"),
    BadRequest("dict-as-variant", "POST", PREDICT, prompt({"variant": {"id": 1}, "points": [[5, 5, 1]]}), 400,
               'variant must be a string naming one of the server\'s variants; got {"id": 1}'),
    BadRequest("65-points", "POST", PREDICT, prompt({"points": [[5, 5, 1]] * 65}), 400,
               "65 points: a prompt has at most 64 points"),
    BadRequest("200000-points", "POST", PREDICT, prompt({"points": [[5, 5, 1]] * 200_000}), 400,
               "200000 points: a prompt has at most 64 points"),
    BadRequest("two-boxes", "POST", PREDICT, prompt({"box": [[0, 0, 9, 9], [1, 1, 8, 8]]}), 400,
               "one box per prompt: box must be [x0, y0, x1, y1]; got 2 boxes"),
    BadRequest("label-2", "POST", PREDICT, prompt({"points": [[5, 5, 2]]}), 400,
               "points[0] label must be 0 (background) or 1 (foreground); got 2"),
    BadRequest("point-not-a-triple", "POST", PREDICT, prompt({"points": [[5, 5]]}), 400,
               "points must be [[x, y, label], ...]; points[0] is [5, 5]"),
    BadRequest("json-body-over-4mb", "POST", PREDICT, lambda: b" " * (5 * MB), 413,
               "the request body is 5.0 MB; the limit is 4 MB"),
    BadRequest("non-json-body", "POST", PREDICT, b"{not json", 400, "request body is not valid JSON"),
    BadRequest("json-array-body", "POST", PREDICT, b"[1, 2]", 400, "must be a JSON object with variant"),
    BadRequest("deeply-nested-json", "POST", PREDICT, b"[" * 100_000, 400, "JSON nested too deep"),
    BadRequest("empty-upload", "POST", UPLOAD + "empty.jpg", b"", 400, "empty upload: choose a JPEG or PNG"),
    BadRequest("non-image-upload", "POST", UPLOAD + "notes.jpg", b"not a photo\n", 400,
               "notes.jpg is not a JPEG or PNG image"),
    BadRequest("truncated-jpeg", "POST", UPLOAD + "cut.jpg", lambda: jpeg()[: len(jpeg()) // 3], 400,
               "cut.jpg could not be decoded"),
    BadRequest("predict-before-any-image", "POST", PREDICT, prompt({"points": [[5, 5, 1]]}), 409,
               "no image loaded in this session", loaded=False),
]
# sent again while the load test runs (with a non-Latin upload and its mask download)
BURST = ("chunked-upload-over-cap", "foreign-host", "nan-in-box", "list-as-variant", "200000-points",
         "truncated-jpeg")
NON_LATIN = ("фото.jpg", "写真.png")
