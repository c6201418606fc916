"""Pure core of ingest: encoded image bytes -> square RGB uint8 arrays, with every failure named and counted.

A bad image raises :class:`ImageDecodeError` (one image) and :func:`decode_batch` turns that into a skipped row
with its reason, so the encode stage's accounting (``input = encoded + skipped``) stays exact.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from .errors import DdoqError

# Refuse decompression bombs well above ImageNet's largest images (~ 100 MP), instead of PIL's warning only.
Image.MAX_IMAGE_PIXELS = 200_000_000


class ImageDecodeError(DdoqError, ValueError):
    """One image could not be decoded; the row is skipped and counted, never dropped silently."""


# ---------------------------------------------------------------- pure core: images


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode encoded image bytes to a square RGB uint8 array.

    EXIF orientation is applied, any mode (L, P, RGBA, CMYK, I;16) is converted to RGB (alpha composited on
    white), the image is centre-cropped to a square and resized with Lanczos antialiasing (the usual
    ImageNet/DiT preprocessing; for square inputs such as CIFAR-10 it is a plain resize).

    Args:
        data: the file's bytes (JPEG, PNG, ...).
        size: output side in pixels.
    Returns:
        ``np.ndarray`` uint8, shape ``(size, size, 3)``.
    Raises:
        ImageDecodeError: empty, truncated, not an image, or over the decompression-bomb limit.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, rgba)
                if im.mode.startswith("I;16") or im.mode == "I":
                    arr = np.asarray(im, dtype=np.float64)
                    im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
                im = im.convert("RGB")
                w, h = im.size
                s = min(w, h)
                if w != h:
                    left, top = (w - s) // 2, (h - s) // 2
                    im = im.crop((left, top, left + s, top + s))
                if s != size:
                    im = im.resize((size, size), Image.Resampling.LANCZOS)
                return np.asarray(im, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError("cannot decode image: not an image file, or a format Pillow cannot read") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"image too large (decompression-bomb limit {Image.MAX_IMAGE_PIXELS} px): {e}") from e
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        raise ImageDecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e


def decode_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Decode a batch ``{id, label, bytes}``; failures become ``ok=False`` rows with an ``error`` reason.

    Returns:
        ``{"id", "label", "image": uint8 [n,size,size,3] (zeros where not ok), "ok": bool [n], "error": str [n]}``.
    """
    n = len(batch["id"])
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    ok = np.ones(n, dtype=bool)
    errors = np.array([""] * n, dtype=object)
    for i, data in enumerate(batch["bytes"]):
        if data is None:
            ok[i], errors[i] = False, "missing image (null value, or the file could not be read)"
            continue
        try:
            images[i] = decode_image(bytes(data), size)
        except ImageDecodeError as e:
            ok[i], errors[i] = False, str(e)
    return {"id": batch["id"], "label": batch["label"], "image": images, "ok": ok, "error": errors}


# ---------------------------------------------------------------- pure core: split index
