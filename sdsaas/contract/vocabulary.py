"""The vocabulary of a generation request: schedulers, formats, defaults, limits, input images."""

from __future__ import annotations

import io
import warnings
from enum import StrEnum

from PIL import Image, UnidentifiedImageError

# --- Vocabulary, defaults and limits of a generation request. ---------------------------------


class Scheduler(StrEnum):
    """The API's scheduler names; the GPU worker maps each to a diffusers scheduler class."""

    DDIM = "ddim"
    DPMPP_2M = "dpmpp_2m"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    EULER = "euler"
    EULER_A = "euler_a"
    HEUN = "heun"
    LMS = "lms"
    PNDM = "pndm"
    UNIPC = "unipc"


class OutputFormat(StrEnum):
    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"


DEFAULT_SCHEDULER = Scheduler.DPMPP_2M
DEFAULT_OUTPUT_FORMAT = OutputFormat.PNG
DEFAULT_STRENGTH = 0.8  # img2img: how far from the input image the result may go
SEED_MAX = 2**32 - 1
MAX_STEPS_CEILING = 150


# --- Input images: what an img2img job may be given, decoded the same way on both sides. -----

INPUT_IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}  # Pillow's name -> extension
# A progressive JPEG is decoded over the whole image once per scan, and a scan costs ~35 bytes of
# file: tens of thousands of them make a small file that takes minutes to decode. Encoders write
# about ten (libjpeg's progressive script), a thumbnail in its metadata one more.
MAX_JPEG_SCANS = 100
_JPEG_START_OF_SCAN = b"\xff\xda"  # never in entropy-coded data, where 0xFF is stuffed (0xFF00)


class UnreadableImage(ValueError):
    """The bytes are no input image we take; `str(exc)` says why, in words for the API."""


def decode_input_image(data: bytes, *, max_pixels: int | None = None) -> tuple[Image.Image, str]:
    """Open and fully decode; the image and its extension. Refuses other formats, images over
    `max_pixels` and decompression bombs (Pillow's own limit when `max_pixels` is None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in INPUT_IMAGE_FORMATS:
                raise UnreadableImage("must be a PNG, JPEG or WebP image")
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise UnreadableImage(
                    f"image of {image.width}x{image.height} exceeds {max_pixels} pixels"
                )
            if image.format == "JPEG" and data.count(_JPEG_START_OF_SCAN) > MAX_JPEG_SCANS:
                raise UnreadableImage(f"is a JPEG of more than {MAX_JPEG_SCANS} scans")
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, UnreadableImage):
            raise
        raise UnreadableImage(f"is not a readable image ({exc.__class__.__name__})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UnreadableImage("image has too many pixels (decompression bomb)") from None
    return image, INPUT_IMAGE_FORMATS[str(image.format)]
