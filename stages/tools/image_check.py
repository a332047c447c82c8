"""Is this file a whole JPEG, PNG or BMP? Checked from its structure with the standard library, before a decoder
that cannot be trusted with a damaged file (MNN.cv.imread crashes the process on one) sees it.

JPEG: the markers from SOI to the first scan, a frame header with a size, and the end-of-image marker after
the scan. PNG: every chunk inside the file with its CRC, IHDR first, IDAT, IEND, and the image data inflating
to exactly the size IHDR gives (in bounded pieces). BMP: the pixel array inside the file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


class ImageFileError(ValueError):
    """What is wrong with the file, in words (the caller names the file)."""


def check_image_file(path: Path, max_megapixels: float = float("inf")) -> tuple[int, int]:
    """(width, height) of a whole JPEG, PNG or BMP file of at most `max_megapixels`; ImageFileError saying what
    is wrong otherwise."""
    data = Path(path).read_bytes()
    try:
        if data.startswith(b"\xff\xd8\xff"):
            return _jpeg(data, max_megapixels)
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data, max_megapixels)
        if data.startswith(b"BM"):
            return _bmp(data, max_megapixels)
    except struct.error as e:  # a header field cut short
        raise ImageFileError(f"damaged image header ({e})") from None
    what = "an empty file" if not data else f"starts with {data[:8]!r}"
    raise ImageFileError(f"not a JPEG, PNG or BMP image ({what})")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _check_size(w: int, h: int, max_megapixels: float) -> None:
    if w * h > max_megapixels * 1e6:
        raise ImageFileError(f"{w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is {max_megapixels:g} megapixels: "
                             "downscale it first")


def _jpeg(data: bytes, max_megapixels: float) -> tuple[int, int]:
    pos, size = 2, None
    while True:
        if pos + 4 > len(data):
            raise ImageFileError(f"truncated JPEG: it ends at byte {len(data)} before its first scan")
        if data[pos] != 0xFF:
            raise ImageFileError(f"damaged JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageFileError("damaged JPEG: it ends before its first scan")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ImageFileError(f"truncated JPEG: a {length}-byte segment at byte {pos} runs past its end")
        if marker in _SOF and length >= 7:
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (w, h)
        if marker == 0xDA:
            break
        pos = end
    if size is None or min(size) == 0:
        raise ImageFileError("damaged JPEG: no frame header with a width and height before the scan")
    _check_size(*size, max_megapixels)
    if data.rfind(b"\xff\xd9", end) < 0:
        raise ImageFileError(f"truncated JPEG: no end-of-image marker after the scan ({len(data)} bytes)")
    return size


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png(data: bytes, max_megapixels: float) -> tuple[int, int]:
    pos, header, idat, chunks = 8, None, [], 0
    while True:
        if pos + 12 > len(data):
            raise ImageFileError(f"truncated PNG: it ends at byte {len(data)} before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ImageFileError(f"truncated PNG: chunk {kind!r} at byte {pos} runs past the end of the file")
        body = data[pos + 8 : pos + 8 + length]
        critical = kind[:1].isupper()  # decoders skip ancillary chunks (tEXt, ...) whatever their CRC
        if critical and zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise ImageFileError(f"damaged PNG: chunk {kind!r} at byte {pos} fails its CRC")
        if chunks == 0 and (kind != b"IHDR" or length != 13):
            raise ImageFileError("damaged PNG: the first chunk is not IHDR")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos, chunks = end, chunks + 1
    w, h, depth, color, _, _, interlace = header
    if w == 0 or h == 0 or color not in _PNG_CHANNELS or not idat:
        raise ImageFileError(f"damaged PNG: {w}x{h}, colour type {color}, {len(idat)} IDAT chunks")
    _check_size(w, h, max_megapixels)
    want = h * (1 + (w * _PNG_CHANNELS[color] * depth + 7) // 8) if not interlace else None
    got = _inflated_size(b"".join(idat), limit=(want or 8 * w * h * 8) + 1)
    if got is None or (want is not None and got != want):
        raise ImageFileError(f"damaged or truncated PNG: its image data inflates to "
                             f"{'an incomplete stream' if got is None else f'{got} bytes'}"
                             + (f", {w}x{h} needs {want}" if want else ""))
    return w, h


def _inflated_size(stream: bytes, limit: int, piece: int = 1 << 20) -> int | None:
    """Bytes a zlib stream inflates to (in pieces: memory bounded), None when it is cut short or damaged."""
    d, total, todo = zlib.decompressobj(), 0, stream
    try:
        while todo and total < limit:
            total += len(d.decompress(todo, piece))
            todo = d.unconsumed_tail
        while not d.eof and total < limit:
            out = d.decompress(b"", piece)
            if not out:
                break
            total += len(out)
    except zlib.error:
        return None
    return total if d.eof else None


def _bmp(data: bytes, max_megapixels: float) -> tuple[int, int]:
    if len(data) < 30:
        raise ImageFileError(f"truncated BMP: {len(data)} bytes, shorter than its headers")
    offset, dib = struct.unpack("<II", data[10:18])
    if dib < 12 or 14 + dib > len(data):
        raise ImageFileError("damaged BMP: its header runs past the end of the file")
    if dib == 12:
        w, h, _, bits = struct.unpack("<HhHH", data[18:26])
        compression = 0
    else:
        w, h, _, bits, compression = struct.unpack("<iiHHI", data[18:34])
    if w <= 0 or h == 0 or bits not in (1, 4, 8, 16, 24, 32):
        raise ImageFileError(f"damaged BMP: {w}x{h} at {bits} bits per pixel")
    _check_size(w, abs(h), max_megapixels)
    need = offset + ((w * bits + 31) // 32) * 4 * abs(h)
    if compression in (0, 3) and need > len(data):
        raise ImageFileError(f"truncated BMP: {len(data)} bytes, its {w}x{abs(h)} pixels need {need}")
    return w, abs(h)
