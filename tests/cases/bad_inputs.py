"""Bad inputs a user can give the CLI, its configs, checkpoints, photos, prompts, CSVs and make targets: one row
each, with the exit code and the words the one-line error must carry (tests/test_bad_inputs.py runs them).

`files` are written under the test's root first ({root} in argv and files is that folder); `how` is "cli" (the
CLI in this process), "process" (python -m stages in a child process: a decoder crash would kill pytest) or
"make" (the Makefile in a copy of the repository's top level).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

TINY_YAML = "name: tiny\nbuilder: tiny.vit_t\n"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    message: str  # a substring of stderr
    code: int = 2
    files: dict[str, bytes | str] = field(default_factory=dict)
    how: str = "cli"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(w: int, h: int, rows: bytes | None = None) -> bytes:
    """An 8-bit grayscale PNG; `rows` the raw scanlines (default: all black)."""
    raw = rows if rows is not None else b"".join(b"\0" + b"\0" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def _bad_crc(data: bytes) -> bytes:
    i = data.index(b"IDAT") + 6
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def _photo() -> bytes:
    """scikit-image's chelsea (451x300) as a JPEG."""
    import io

    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _seg(*extra: str, image: str = "{root}/photo.jpg") -> tuple[str, ...]:
    return ("segment", "--root", "{root}", "--model", "tiny", "--image", image, "--out", "{root}/out", *extra)


def _status(model: str = "{root}/m.yaml", *extra: str) -> tuple[str, ...]:
    return ("status", "--model", model, "--root", "{root}", *extra)


def deep(levels: int) -> str:
    return TINY_YAML + "x: " + "[" * levels + "]" * levels + "\n"


CONFIG = [
    Case("yaml-not-utf8", _status(), "not UTF-8 text (byte 0xff at line 1)", files={"m.yaml": b"name: t\xff\n"}),
    Case("yaml-duplicate-key", _status(), "duplicate key 'builder'",
         files={"m.yaml": TINY_YAML + "builder: tiny.vit_b\n"}),
    Case("yaml-nested-150", _status(), "nested deeper than 100 levels", files={"m.yaml": deep(150)}),
    Case("yaml-nested-50000", _status(), "nested deeper than 100 levels", files={"m.yaml": deep(50_000)}),
    Case("yaml-a-folder", _status(), "it is a folder, expected a YAML file", files={"m.yaml/keep": ""}),
    Case("yaml-malformed", _status(), "malformed YAML at line 2, column 11: mapping values are not allowed", files={"m.yaml": "name: t\nbuilder: x: y\n"}),
    Case("yaml-a-list", _status(), "expected a mapping at the top level, got list", files={"m.yaml": "- a\n"}),
    Case("yaml-empty", _status(), "expected a mapping at the top level, got NoneType", files={"m.yaml": ""}),
    Case("name-empty", _status(), "name: '' is not a plain model name",
         files={"m.yaml": "name: ''\nbuilder: tiny.vit_t\n"}),
    Case("name-absolute", _status(), "name: '/tmp/x' is not a plain model name",
         files={"m.yaml": "name: /tmp/x\nbuilder: tiny.vit_t\n"}),
    Case("name-dotdot", _status(), "name: '../x' is not a plain model name",
         files={"m.yaml": "name: ../x\nbuilder: tiny.vit_t\n"}),
    Case("unknown-builder", _status(), "builder: 'tiny.vit_q' is not one of",
         files={"m.yaml": "name: t\nbuilder: tiny.vit_q\n"}),
    Case("unknown-model", _status("no_such_model"), "unknown MODEL 'no_such_model'"),
    Case("unknown-sweep", _status("{root}/m.yaml", "--sweep", "nosuch"), "nosuch", files={"m.yaml": TINY_YAML}),
    Case("checkpoint-a-folder", _status(), "which is not a file; expected a checkpoint file",
         files={"m.yaml": TINY_YAML + "checkpoint: ckpt.pt\n", "ckpt.pt/keep": ""}),
    Case("checkpoint-required-missing", _status("{root}/m.yaml", "--require-checkpoint"), "is required",
         files={"m.yaml": TINY_YAML + "checkpoint: none.pt\n"}),
    Case("pipeline-timeout", ("status", "--model", "{root}/m.yaml", "--root", "{root}", "--pipeline",
                              "{root}/p.yaml"), "'timeout_s' must be a number of seconds > 0, got -1",
         files={"m.yaml": TINY_YAML,
                "p.yaml": "stages:\n  export_encoder:\n    module: stages.export_encoder\n    timeout_s: -1\n"}),
    Case("pipeline-unknown-key", ("status", "--model", "{root}/m.yaml", "--root", "{root}", "--pipeline",
                                  "{root}/p.yaml"), "unknown key 'timeout'",
         files={"m.yaml": TINY_YAML,
                "p.yaml": "stages:\n  export_encoder:\n    module: stages.export_encoder\n    timeout: 5\n"}),
]

CLI = [
    Case("threads-zero", _seg("--points", "1,1", "--threads", "0"), "0 threads: expected 1 to 256"),
    Case("threads-word", _seg("--points", "1,1", "--threads", "two"), "'two' is not a whole number of threads"),
    Case("idle-minutes-nan", ("demo", "--root", "{root}", "--idle-minutes", "nan"), "expected a number of minutes"),
    Case("compare-not-a-folder", ("compare", "{root}/a.csv", "{root}/b", "--out", "{root}/cmp"),
         "is not a folder with parity.csv", files={"a.csv": "", "b/latency.csv": ""}),
    Case("compare-empty-csv", ("compare", "{root}/a", "{root}/b", "--out", "{root}/cmp"),
         "is not a readable latency.csv", files={"a/latency.csv": "", "b/latency.csv": ""}),
    Case("compare-foreign-csv", ("compare", "{root}/a", "{root}/b", "--out", "{root}/cmp"),
         "lacks the column(s) component", files={"a/latency.csv": "x,y\n1,2\n", "b/latency.csv": "x,y\n1,2\n"}),
    Case("compare-binary-csv", ("compare", "{root}/a", "{root}/b", "--out", "{root}/cmp"), "is not a readable parity.csv",
         files={"a/parity.csv": bytes(range(256)) * 4, "b/parity.csv": bytes(range(256)) * 4}),
]

PHOTO = {"photo.jpg": _photo}  # a callable: read when the test writes the files (chelsea, 451x300)
IMAGES = [
    Case("image-truncated-jpeg", _seg("--points", "10,10"), "truncated JPEG: no end-of-image marker",
         files={"photo.jpg": lambda: _photo()[:20_000]}, how="process"),
    Case("image-png-header-only", _seg("--points", "10,10"), "truncated PNG",
         files={"photo.jpg": lambda: png(64, 48)[:33]}, how="process"),
    Case("image-png-bad-crc", _seg("--points", "10,10"), "fails its CRC",
         files={"photo.jpg": lambda: _bad_crc(png(64, 48))}, how="process"),
    Case("image-png-short-data", _seg("--points", "10,10"), "inflates to 3 bytes, 64x48 needs 3120",
         files={"photo.jpg": lambda: png(64, 48, rows=b"\0\0\0")}, how="process"),
    Case("image-too-many-pixels", _seg("--points", "10,10"), "the limit is 50 megapixels",
         files={"photo.jpg": lambda: png(60_000, 60_000, rows=b"")}, how="process"),
    Case("image-bmp-short-header", _seg("--points", "10,10"), "damaged BMP",
         files={"photo.jpg": b"BM" + bytes(12) + (20).to_bytes(4, "little") + bytes(14)}, how="process"),
    Case("image-png-second-ihdr", _seg("--points", "10,10"), "damaged image header",
         files={"photo.jpg": lambda: png(4, 4)[:33] + _png_chunk(b"IHDR", b"1234") + png(4, 4)[33:]},
         how="process"),
    Case("image-empty", _seg("--points", "10,10"), "not a JPEG, PNG or BMP image (an empty file)",
         files={"photo.jpg": b""}, how="process"),
    Case("image-text", _seg("--points", "10,10"), "not a JPEG, PNG or BMP image (starts with b'hello",
         files={"photo.jpg": "hello, not a photo"}, how="process"),
    Case("image-a-folder", _seg("--points", "10,10"), "does not exist (it is a folder)",
         files={"photo.jpg/keep": ""}),
    Case("image-missing", _seg("--points", "10,10", image="{root}/none.jpg"), "image {root}/none.jpg does not exist"),
]

PROMPTS = [
    Case("box-nan", _seg("--box", "nan,0,10,10"), "box must be four finite numbers, got [nan", files=PHOTO),
    Case("box-inf", _seg("--box", "0,0,inf,10"), "box must be four finite numbers", files=PHOTO),
    Case("box-three-numbers", _seg("--box", "0,0,10"), "box must be x0, y0, x1, y1", files=PHOTO),
    Case("box-inverted", _seg("--box", "10,10,0,0"), "x0 < x1 and y0 < y1", files=PHOTO),
    Case("box-words", _seg("--box", "a,b,c,d"), "expected comma-separated numbers", files=PHOTO),
    Case("point-nan", _seg("--points", "nan,5"), "points must be finite numbers", files=PHOTO),
    Case("point-outside", _seg("--points", "5000,5"), "lie outside the 451x300 image", files=PHOTO),
    Case("point-negative", _seg("--points=-1,5"), "lie outside", files=PHOTO),
    Case("point-words", _seg("--points", "x,y"), "expected x,y pairs", files=PHOTO),
    Case("point-three-numbers", _seg("--points", "1,2,3"), "points must be N x 2", files=PHOTO),
    Case("labels-count", _seg("--points", "1,2", "--labels", "1,0"), "1 points but 2 labels", files=PHOTO),
    Case("label-two", _seg("--points", "1,2", "--labels", "2"), "must be 1 (foreground) or 0", files=PHOTO),
    Case("no-prompt", _seg(), "no prompt: give points", files=PHOTO),
]

MAKE = [
    Case("make-clean-empty-model", ("clean", "MODEL="), "MODEL='' is not a model name", how="make"),
    Case("make-clean-parent", ("clean", "MODEL=../x"), "MODEL='../x' is not a model name", how="make"),
    Case("make-clean-absolute", ("clean", "MODEL=/tmp"), "MODEL='/tmp' is not a model name", how="make"),
    Case("make-clean-baselines", ("clean", "MODEL=baselines"), "MODEL='baselines' is not a model name", how="make"),
    Case("make-clean-measured", ("clean", "MODEL=measured"), "MODEL='measured' is not a model name", how="make"),
    Case("make-clean-option", ("clean", "MODEL=-rf"), "MODEL='-rf' is not a model name", how="make"),
    Case("make-clean-quote", ("clean", "MODEL=a'b"), "is not a model name", how="make"),
]

ALL = CONFIG + CLI + IMAGES + PROMPTS + MAKE
