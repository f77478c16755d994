"""Checks of a body or a file: an image Pillow fully decodes, in a format ``prepare`` reads back, with the
row's MD5."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from fairskin.data.images import IMAGE_EXTENSIONS

# Pillow format -> file extension; only formats `prepare` reads back (fairskin.data.images.IMAGE_EXTENSIONS).
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


def _image_extension(body: bytes) -> tuple[str | None, str, str]:
    """(extension, failure reason, detail) of a body: the extension of its fully decoded image format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as img:
            fmt = img.format or ""
            img.load()
    except UnidentifiedImageError:
        head = body[:60].decode("ascii", errors="replace")
        return None, "not_image", f"not an image ({len(body)} bytes starting {head!r})"
    except Exception as exc:  # noqa: BLE001  (truncated data, decoder errors, decompression bombs)
        return None, "corrupt_image", f"{type(exc).__name__}: {exc}"
    ext = FORMAT_EXTENSIONS.get(fmt)
    if ext is None:
        return None, "unsupported_format", f"{fmt} images are not read by prepare"
    return ext, "", ""


def _image_on_disk(out_dir: Path, row_id: str) -> tuple[Path, bytes] | None:
    """The row's image already in the folder with the row's MD5 and fully decodable, if any."""
    for ext in IMAGE_EXTENSIONS:
        path = out_dir / f"{row_id}{ext}"
        if path.is_file():
            body = path.read_bytes()
            if hashlib.md5(body).hexdigest() == row_id and _image_extension(body)[0] is not None:
                return path, body
    return None
