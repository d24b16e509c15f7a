"""One image file -> uint8 [C, H, W], as PIL gives it, or one line naming the file.

The rule (tests/test_trust_images.py sweeps every PIL mode and bit depth under every listed
extension, for 1 and 3 channels): the pixels are those of

    Image.open(f).convert("L" if channels == 1 else "RGB")

(the first frame of a multi-frame file; no EXIF rotation: torchvision's ImageFolder reads
files the same way), with two documented departures:

- 16-bit samples become their high byte (v >> 8). PIL already does this for 16-bit colour
  (a 48-bit RGB PNG opens as 8-bit RGB, high bytes), but its convert *clips* 16-bit grey
  (PIL modes I;16*, and PNG/PGM grey it holds as "I"): every value above 255 would be white, a
  silently wrong image. v >> 8 keeps the whole 16-bit range, like PIL's own 16-bit colour.
- 32-bit integer and floating-point pixels (PIL modes "I" from TIFF, "F": TIFF, PFM) have no
  8-bit range kd_accel could know (PIL's convert clips them too): refused, naming the file.

The formats read are JPEG, PNG, PPM/PGM/PBM, BMP, TIFF, WebP and GIF, whatever the file's
extension (a JPEG named .png is read); any other format under an image name is refused, naming
it (PIL would hand some of them to outside programs, e.g. EPS to Ghostscript). The header is
read with PIL first (size, mode, frames): an image over PIL's decompression-bomb limit
(2 x PIL.Image.MAX_IMAGE_PIXELS) is refused before any pixel is decoded, by any decoder.

For speed, one-frame JPEG and WebP files are decoded by torchvision.io (libjpeg-turbo and
libwebp in C++, without PIL's image objects), which gives exactly PIL's pixels for the
(format, mode) pairs in _TORCHVISION (the sweep checks it): grey JPEGs are decoded grey, the
rest to RGB, and grey from colour uses PIL's own integer luma (L = (19595 R + 38470 G + 7471 B
+ 0x8000) >> 16), not the decoders' (libjpeg takes Y; libwebp ignores the grey mode and returns
RGB). Whatever torchvision cannot decode goes to PIL, which decodes it or says why not. PNG is
PIL's: torchvision 0.29's decode_png crashes the process (SIGSEGV) on any libpng error in the
pixel data (a bad CRC, a short or corrupt zlib stream, a bad row filter), a damaged file that
would kill a DataLoader worker without naming it; PIL's own PNG decoder raises instead.
"""
import re
import warnings
from io import BytesIO

import numpy as np
import torch

from ..errors import KDError, first_line

# Part of every image folder's fingerprint (streamed.FolderSplit): a change to the pixels any file
# decodes to is a change of the data. 1: torchvision.io first, then PIL (to
# 12925bf and just after); 2: decoded as PIL's convert gives it, or refused (issue 25).
DECODER_VERSION = 2
FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")  # PIL's names; PPM reads PBM/PGM/PPM/PFM
FORMAT_NAMES = "JPEG, PNG, PPM/PGM, BMP, TIFF, WebP, GIF"
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16-bit grey modes
_HELD_AS_I = ("PNG", "PPM")  # formats whose grey "I" PIL fills from 16-bit samples (PPM: scaled to 0-65535)
# (format, PIL mode) decoded by torchvision to PIL's pixels; CMYK JPEGs (Adobe's inverted, YCCK) are left to PIL
_TORCHVISION = {"JPEG": ("L", "RGB"), "WEBP": ("RGB", "RGBA")}
_GREY = ("L",)  # decoded grey by torchvision (its grey JPEG is PIL's L); the rest to RGB


# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_frame(data):
    """(height, width, components) from a JPEG's frame header, read from the markers (what PIL's
    header read costs some 20 us a file for), or None where it is not plainly there."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if i + 10 > n:
                return None
            return (int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9])
        i += 2 + length
    return None


class _Refused(Exception):
    """A readable file kd_accel will not read: the message says why."""


def _luma(rgb):
    """PIL's RGB -> L (ImagingConvert's rgb2l), in integers: uint8 [3, H, W] -> [1, H, W] (numpy:
    a third of torch's time on small images, where each torch op's overhead dominates)."""
    r, g, b = rgb.numpy()
    y = r.astype(np.uint32)
    y *= 19595
    y += g.astype(np.uint32) * 38470
    y += b.astype(np.uint32) * 7471
    y += 0x8000
    y >>= 16
    return torch.from_numpy(y.astype(np.uint8))[None]


def _eight_bit(t):
    return (t.to(torch.int32) >> 8).to(torch.uint8) if t.dtype == torch.uint16 else t


def _torchvision(data, channels, grey):
    """torchvision.io's decoding, made PIL's; None when its result is not the expected shape."""
    from torchvision.io import ImageReadMode, decode_image

    mode = ImageReadMode.GRAY if channels == 1 and grey else ImageReadMode.RGB
    t = _eight_bit(decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode))
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] not in (1, 3):
        return None
    if channels == 1 and t.shape[0] == 3:
        t = _luma(t)
    return t if t.shape[0] == channels else None


def _torchvision_or_none(data: bytes, channels: int, grey: bool) -> torch.Tensor | None:
    """_torchvision's image, or None where it fails: PIL then decodes the file, or says why not."""
    try:
        return _torchvision(data, channels, grey)
    except Exception:  # noqa: BLE001 - any decoder error: PIL's is the one said
        return None


def _pil(im, channels):
    from PIL import Image

    if im.mode in SIXTEEN_BIT or (im.mode == "I" and im.format in _HELD_AS_I):
        im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        raise _Refused(f"its pixels are {'32-bit integers' if im.mode == 'I' else 'floating point'} (PIL mode "
                       f"{im.mode}), which have no 8-bit range kd_accel could know: save it as an 8- or 16-bit image")
    arr = torch.from_numpy(np.asarray(im.convert("L" if channels == 1 else "RGB")).copy())
    return arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1).contiguous()


def _unknown(data):
    """Why PIL cannot read `data` as one of FORMATS: another format it names, or none."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's deprecation of some formats
            with Image.open(BytesIO(data)) as im:  # the header only: no outside program
                return f"its format is {im.format}, and kd_accel reads {FORMAT_NAMES}: convert it"
    except Exception:  # noqa: BLE001 - not an image any plugin recognises
        return f"not an image of a format kd_accel reads ({FORMAT_NAMES}), or a damaged one"


def _decode(path, channels, data=None):
    """uint8 [channels, H, W] of the image file at `path` (its bytes `data`, if already read),
    or one line naming it (the module's rule)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        if not data:
            raise _Refused("empty file")
        tried = False  # torchvision tried on these bytes already: a failure falls to PIL, not to it again
        if data[:2] == b"\xff\xd8":  # a grey or colour JPEG of a sane size: straight to torchvision (PIL's pixels)
            frame, limit = _jpeg_frame(data), Image.MAX_IMAGE_PIXELS or float("inf")  # None: the user turned it off
            if frame and frame[2] in (1, 3) and 0 < frame[0] * frame[1] <= limit:
                tried, out = True, _torchvision_or_none(data, channels, frame[2] == 1)
                if out is not None:
                    return out
        try:
            im = Image.open(BytesIO(data), formats=FORMATS)  # the header: size, mode; the bomb check
        except UnidentifiedImageError:
            raise _Refused(_unknown(data)) from None
        with im:
            if 0 in im.size:
                raise _Refused(f"it has no pixels ({im.size[0]} x {im.size[1]})")
            if not tried and im.mode in _TORCHVISION.get(im.format, ()) and getattr(im, "n_frames", 1) == 1:
                out = _torchvision_or_none(data, channels, im.mode in _GREY)
                if out is not None:
                    return out
            return _pil(im, channels)
    except Exception as e:  # noqa: BLE001 - truncated, not an image, unreadable: each fails its own way
        # torchvision prefixes its C++ function, file and line: "decode_jpeg, /.../decode_jpeg.cpp:171, "
        why = re.sub(r"^[\w():<>~ ]+, \S+\.(cpp|h):\d+, ", "", first_line(e))
        raise KDError(f"cannot read image {path}: {why} (a bad file would shift every sample after it: fix or "
                      "remove it)") from None
