"""Checks one encoded image and brings it into a form `tf.io.decode_image` reads.

Baseline JPEG and 8-bit grayscale/RGB PNG keep their original bytes. Valid images in
other modes (CMYK or progressive JPEG, 16-bit, palette or alpha PNG, GIF, BMP, WebP)
are converted once to 8-bit grayscale or RGB PNG, and so is an image whose EXIF
orientation says it is stored rotated or mirrored (phone photos): it is turned upright
first (as `PIL.ImageOps.exif_transpose` does), since `tf.io.decode_image` ignores EXIF.
Anything that does not fully decode, or that claims more pixels than allowed, raises
BadImage with a reason.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

# We enforce our own pixel limit before decoding; Pillow's would raise on its own terms.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BadImage(ValueError):
    """The bytes are not a usable image; `str(exc)` is the quarantine reason."""


def pixels_over(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of this size is refused (a decompression-bomb guard), or None."""
    if width * height <= max_pixels:
        return None
    return (f"image claims {width}x{height} = {width * height:,} pixels, over "
            f"ingest.max_pixels = {max_pixels:,} (possible decompression bomb)")


@dataclass(frozen=True)
class CheckedImage:
    data: bytes            # what is stored: the original bytes or a PNG conversion
    format: str            # 'jpeg' or 'png'
    height: int            # upright (after the EXIF orientation)
    width: int
    channels: int          # 1 or 3
    converted: bool        # True when `data` is a re-encoding
    original_format: str   # what the file was (JPEG, PNG, GIF, ...)
    gray: np.ndarray       # the pixels as 8-bit grayscale [H, W], for the statistics
                           # and near-duplicate thumbnails (components/data/neardup.describe)
    rotated: bool = False  # turned upright by its EXIF orientation (then converted)


def content_id(data: bytes) -> str:
    """The example id: a content hash of the input bytes (identical files, same id)."""
    return hashlib.sha256(data).hexdigest()[:32]


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(background, rgba)
        return flat.convert("L" if img.mode == "LA" else "RGB")
    if img.mode in _GRAY_MODES:
        return img.convert("L")
    return img.convert("RGB")


# The two formats most datasets hold, opened by their plugin directly when the bytes
# start with its signature: Image.open's search over every registered format costs a
# third of a small PNG's whole check.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile),
               (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile))


def _open(data: bytes) -> Image.Image:
    for signature, plugin in _SIGNATURES:
        if data.startswith(signature):
            return plugin(io.BytesIO(data))
    return Image.open(io.BytesIO(data))


# Where Pillow finds an orientation: EXIF (JPEG APP1, PNG eXIf, WebP) or XMP. Other
# formats (TIFF keeps it among its own tags) are always asked.
_ORIENTATION_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")


# EXIF orientation -> the transpose that makes the pixels upright (the table
# `PIL.ImageOps.exif_transpose` applies).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1: upright, 2-8: stored mirrored and/or rotated);
    1 without a tag. Asks Pillow's EXIF reader only when the image carries metadata
    that can hold one (it costs a tenth of a small PNG's check)."""
    if img.format in ("PNG", "JPEG") and not any(k in img.info for k in _ORIENTATION_KEYS):
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:       # damaged EXIF: the pixels still decode, keep them as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def verify_decodes(data: bytes) -> None:
    """Raises BadImage unless the bytes decode (a re-check, after ingest's full decode).
    A PNG is checked chunk by chunk against its CRCs, which any changed or missing byte
    fails, at a third of a full decode's cost; other formats are decoded."""
    if not data:
        raise BadImage("empty image (0 bytes)")
    try:
        image = _open(data)
        if data.startswith(_SIGNATURES[0][0]):
            image.verify()
        else:
            image.load()
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format in the bytes)") from None
    except Exception as exc:
        raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def _plain_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit grayscale/RGB PNG or a baseline grayscale/RGB JPEG
    whose header shows nothing that `check_image` would convert (no palette, alpha,
    16 bits, CMYK, progressive scan) and no metadata that could hold an EXIF
    orientation (eXIf or text chunks, APP1): read from the bytes, without Pillow.
    None: ask Pillow."""
    if data.startswith(_SIGNATURES[0][0]):
        if len(data) < 33 or data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in (0, 2):
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        pos = 33
        while pos + 8 <= len(data):
            kind = data[pos + 4:pos + 8]
            if kind == b"IDAT":
                return width, height
            if kind in (b"eXIf", b"iTXt", b"tEXt", b"zTXt"):
                return None
            pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
        return None
    if data.startswith(_SIGNATURES[1][0]):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xFF:               # fill byte
                pos += 1
                continue
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == 0xE1:               # EXIF or XMP: may say the image is rotated
                return None
            if marker in (0xC0, 0xC1):       # baseline / extended sequential frame
                if pos + 10 > len(data) or data[pos + 9] not in (1, 3):
                    return None
                height = int.from_bytes(data[pos + 5:pos + 7], "big")
                width = int.from_bytes(data[pos + 7:pos + 9], "big")
                return (width, height) if width and height else None
            if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return None                  # progressive, lossless, arithmetic
            pos += 2 + length
    return None


def header_shape(data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) of an image as `check_image` would store it, from its
    header (the first bytes of the file do): Pillow opens lazily and decodes no pixels.
    Channels: 1 for grayscale modes (with or without alpha), 3 for the rest (RGB, RGBA,
    palette, CMYK ...); an EXIF orientation that turns the image swaps height and width.
    Raises BadImage when the bytes are not (the start of) an image."""
    try:
        img = _open(data)
        width, height = img.size
        turned = orientation(img) in (5, 6, 7, 8)
    except Exception as exc:                 # Pillow raises several types
        raise BadImage(f"no image header ({type(exc).__name__})") from None
    channels = 1 if img.mode in _GRAY_MODES or img.mode == "LA" else 3
    return (width, height, channels) if turned else (height, width, channels)


def check_for_serving(data: bytes, max_pixels: int) -> bytes:
    """What a served request's image becomes before the model reads it: the same
    bounds and conversions as `check_image`, but a baseline JPEG or 8-bit PNG that
    needs no conversion is checked from its header only (format, size, EXIF
    orientation) and kept as it is, without decoding its pixels here: the model
    decodes it anyway, and a damaged body is then the model's error on that request."""
    if not data:
        raise BadImage("empty image (0 bytes)")
    plain = _plain_header(data)
    if plain is not None:
        too_large = pixels_over(*plain, max_pixels)
        if too_large:
            raise BadImage(too_large)
        return data
    try:
        img = _open(data)
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format in the bytes)") from None
    except Exception as exc:
        raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    too_large = pixels_over(width, height, max_pixels)
    if too_large:
        raise BadImage(too_large)
    original = (img.format or "").upper()
    progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    if (width > 0 and height > 0 and img.mode in ("L", "RGB") and orientation(img) == 1
            and (original == "PNG" or (original == "JPEG" and not progressive))):
        return data
    return check_image(data, max_pixels).data


def check_image(data: bytes, max_pixels: int) -> CheckedImage:
    """Validates and normalizes one encoded image; raises BadImage(reason)."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        img = _open(data)
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format in the bytes)") from None
    except Exception as exc:  # Pillow raises several types for damaged headers
        raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    too_large = pixels_over(width, height, max_pixels)
    if too_large:
        raise BadImage(too_large)
    original = (img.format or "unknown").upper()
    progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    try:
        img.load()
    except Exception as exc:
        raise BadImage(f"corrupt or truncated {original} ({type(exc).__name__}: {exc})") from None
    rotated = orientation(img) != 1
    keep = not rotated and (
        (original == "JPEG" and img.mode in ("L", "RGB") and not progressive)
        or (original == "PNG" and img.mode in ("L", "RGB")))
    if keep:
        normalized, stored, fmt = img, data, original.lower()
    else:
        normalized = _to_8bit(img)
        if rotated:     # upright pixels (the PNG carries no EXIF to turn them again)
            normalized = normalized.transpose(_UPRIGHT[orientation(img)])
            width, height = normalized.size
        buffer = io.BytesIO()
        normalized.save(buffer, format="PNG")
        stored, fmt = buffer.getvalue(), "png"
    gray = normalized if normalized.mode == "L" else normalized.convert("L")
    return CheckedImage(
        data=stored, format=fmt, height=height, width=width,
        channels=1 if normalized.mode == "L" else 3, converted=not keep,
        original_format=original,
        gray=np.frombuffer(gray.tobytes(), np.uint8).reshape(height, width), rotated=rotated)

