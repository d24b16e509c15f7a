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

For speed, one-frame JPEG, PNG and WebP files are decoded by TorchCodec (libjpeg-turbo, libpng
and libwebp in C++, without PIL's image objects; torchvision.io's decoders, used until issue 28,
are deprecated since torchvision 0.29), which gives exactly PIL's pixels for the (format, mode)
pairs in _CODEC (the sweep checks every one): grey files are decoded grey, the rest to RGB, and
grey from colour uses PIL's own integer luma (L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16),
not the decoders' (libjpeg takes Y, libpng and TorchCodec weigh in floating point, libwebp has
no grey), except a colour PNG wanted grey, which PIL converts faster (_PIL_GREY). 16-bit PNG
samples come back as uint16 and are shifted as above. Whatever TorchCodec cannot decode goes to
PIL, which decodes it or says why not: a damaged PNG raises in TorchCodec (torchvision 0.29's
decode_png died of SIGSEGV instead, which is why PNG was PIL's until then), and PIL's line is
the one said, or PIL's pixels where PIL reads it (a bad IDAT CRC, which PIL does not check).
Without TorchCodec at the release swept (TORCHCODEC), PIL decodes everything: the same pixels.
"""
import functools
import warnings
from io import BytesIO

import numpy as np
import torch

from ..errors import KDError, first_line

# Part of every image folder's fingerprint (streamed.FolderSplit): a change to the pixels any file
# decodes to is a change of the data. 1: torchvision.io first, then PIL (to
# 12925bf and just after); 2: decoded as PIL's convert gives it, or refused (issue 25; TorchCodec
# instead of torchvision.io since issue 28 changed no pixel: the rule is the same, and swept).
DECODER_VERSION = 2
# The TorchCodec release whose pixels the sweep checked (pyproject pins it; a test keeps the two
# equal): another is not used (0.16 decodes a palette PNG with a tRNS chunk to other colours)
TORCHCODEC = "0.17.0"
FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")  # PIL's names; PPM reads PBM/PGM/PPM/PFM
FORMAT_NAMES = "JPEG, PNG, PPM/PGM, BMP, TIFF, WebP, GIF"
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16-bit grey modes
_HELD_AS_I = ("PNG", "PPM")  # formats whose grey "I" PIL fills from 16-bit samples (PPM: scaled to 0-65535)
# (format, PIL mode) that TorchCodec decodes to PIL's pixels (the sweep checks each pair) -> whether
# it is decoded grey where 1 channel is wanted: a grey file's grey is PIL's L (1-, 2-, 4-bit grey
# PNG scaled up alike; alpha dropped), a colour file's is not (RGB, then PIL's luma: _luma).
# CMYK JPEGs (Adobe's inverted, YCCK) are left to PIL.
_CODEC = {"JPEG": {"L": True, "RGB": False},
          "PNG": {"1": True, "L": True, "LA": True, "I": True, "I;16": True, "I;16B": True,
                  "P": False, "RGB": False, "RGBA": False},
          "WEBP": {"RGB": False, "RGBA": False}}
# ... but a colour PNG wanted grey is PIL's: its convert("L") inside the decoded image beats
# TorchCodec's RGB then _luma (libpng decodes no faster than PIL's zlib: bench/decode.py, 0.93x)
_PIL_GREY = {"PNG": ("P", "RGB", "RGBA")}


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


# PIL's RGB -> L weights (ImagingConvert's rgb2l: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16)
_LUMA = np.array([19595, 38470, 7471], dtype=np.float32)


def _luma(rgb):
    """PIL's RGB -> L: uint8 [3, H, W] -> [1, H, W], exactly, in float32: every partial sum is an
    integer below 2^24 (255 x 65536 + 0x8000 at most), which float32 holds exactly, and the
    division by 65536 is exact; one product over [H, W, 3] (TorchCodec's CHW is a view of HWC
    memory) runs 1.3-1.8x faster than integer numpy over the three strided channel planes."""
    y = rgb.permute(1, 2, 0).numpy().astype(np.float32) @ _LUMA  # [H, W]
    y += 0x8000
    y *= 1 / 65536
    return torch.from_numpy(y.astype(np.uint8))[None]  # the cast truncates: the floor, as >> 16


def _eight_bit(t):
    return (t.to(torch.int32) >> 8).to(torch.uint8) if t.dtype == torch.uint16 else t


@functools.lru_cache(maxsize=None)  # once a process: a failed import is not cached by Python
def _codecs():
    """torchcodec.decoders at the release swept (TORCHCODEC), or None where it is another release
    or cannot be loaded (not installed, a build for another torch or CUDA): PIL then decodes every
    file, to the same pixels, more slowly."""
    try:
        import torchcodec
        from torchcodec import decoders
    except Exception:  # noqa: BLE001 - ImportError, or the C++ libraries' OSError/RuntimeError
        return None
    return decoders if torchcodec.__version__.split("+")[0] == TORCHCODEC else None


def _codec(data, fmt, channels, grey):
    """TorchCodec's decoding of `data` (a `fmt` file: JPEG, PNG or WEBP), made PIL's; None when
    TorchCodec is not there or its result is not one image of the expected shape (an animated
    WebP: [N, C, H, W])."""
    decoders = _codecs()
    if decoders is None:
        return None
    # a copy the tensor may own (frombuffer on bytes warns that they are read-only): [n] uint8
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    mode = "GRAY" if channels == 1 and grey else "RGB"
    if fmt == "PNG":  # 16-bit samples as they are (uint16): TorchCodec's uint8 rounds v / 257, the rule is v >> 8
        t = _eight_bit(decoders.decode_png(raw, mode=mode, output_dtype="auto"))
    else:
        t = (decoders.decode_jpeg if fmt == "JPEG" else decoders.decode_webp)(raw, mode=mode)
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[0] not in (1, 3):
        return None
    if channels == 1 and t.shape[0] == 3:
        t = _luma(t)
    return t if t.shape[0] == channels else None


def _codec_or_none(data: bytes, fmt: str, channels: int, grey: bool) -> torch.Tensor | None:
    """_codec's image, or None where it fails: PIL then decodes the file, or says why not."""
    try:
        return _codec(data, fmt, channels, grey)
    except Exception:  # noqa: BLE001 - any decoder error: PIL's is the one said
        return None


def _pil(im, channels):
    from PIL import Image

    if im.mode in SIXTEEN_BIT or (im.mode == "I" and im.format in _HELD_AS_I):
        im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        raise _Refused(f"its pixels are {'32-bit integers' if im.mode == 'I' else 'floating point'} (PIL mode "
                       f"{im.mode}), which have no 8-bit range kd_accel could know: save it as an 8- or 16-bit image")
    with warnings.catch_warnings():
        # PIL's advice, on a palette image with transparency, to convert it to RGBA: the rule drops alpha
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
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
        tried = False  # TorchCodec tried on these bytes already: a failure falls to PIL, not to it again
        if data[:2] == b"\xff\xd8":  # a grey or colour JPEG of a sane size: straight to TorchCodec (PIL's pixels)
            frame, limit = _jpeg_frame(data), Image.MAX_IMAGE_PIXELS or float("inf")  # None: the user turned it off
            if frame and frame[2] in (1, 3) and 0 < frame[0] * frame[1] <= limit:
                tried, out = True, _codec_or_none(data, "JPEG", channels, frame[2] == 1)
                if out is not None:
                    return out
        try:
            im = Image.open(BytesIO(data), formats=FORMATS)  # the header: size, mode; the bomb check
        except UnidentifiedImageError:
            raise _Refused(_unknown(data)) from None
        with im:
            if 0 in im.size:
                raise _Refused(f"it has no pixels ({im.size[0]} x {im.size[1]})")
            grey = _CODEC.get(im.format, {}).get(im.mode)
            pil_grey = channels == 1 and im.mode in _PIL_GREY.get(im.format, ())
            if not tried and grey is not None and not pil_grey and getattr(im, "n_frames", 1) == 1:
                out = _codec_or_none(data, im.format, channels, grey)
                if out is not None:
                    return out
            return _pil(im, channels)
    except Exception as e:  # noqa: BLE001 - truncated, not an image, unreadable: each fails its own way
        # PIL's error or the rule's: TorchCodec's never gets here (_codec_or_none)
        raise KDError(f"cannot read image {path}: {first_line(e)} (a bad file would shift every sample after it: "
                      "fix or remove it)") from None
