"""Image encoding helpers shared by the manifest builder, the shards and the streams."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def encode_png(image: np.ndarray) -> bytes:
    """uint8 array (H, W, 3) -> PNG bytes (lossless, deterministic for the same pixels)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any Pillow-readable) bytes -> uint8 array (H, W, 3); raises ValueError if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"undecodable image ({exc})") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_square_image(path: Path, size: int) -> np.ndarray:
    """Read an image file, centre-crop it to a square and resize to (size, size, 3) uint8.

    Raises ValueError naming the file when Pillow cannot read it.
    """
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from exc
