"""Issue 25 ("trust what users bring"): an image folder's files, decoding and class lists.

Each guarantee is a rule, checked over what the libraries can produce, not over a hand-written
list of expected outcomes:

- decoding (kd_accel/data/decode.py): every file written by PIL in every mode it has, under every
  extension kd_accel lists, read for 1 and 3 channels, decodes to PIL's
  `Image.open(f).convert("L" | "RGB")` (16-bit samples: their high byte), or is refused in one
  line naming it; refusals only where the rule says (32-bit / float pixels, formats not read,
  files PIL cannot convert);
- listing (folder.scan): a name that is not UTF-8, a dangling link, a link looping back, a
  folder that cannot be listed, a file that is not a regular file: one line at scan time naming it;
- class lists (load_folder(..., classes=)): the validation split is labelled by the training
  split's class names; a class training lacks is one line.
"""
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageMode

from conftest import write_image_folder
from kd_accel.data import open_splits
from kd_accel.data.decode import _decode
from kd_accel.data.folder import IMG_EXTENSIONS, scan
from kd_accel.errors import KDError

READS = ("JPEG", "MPO", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")  # the formats decode.py documents (MPO: a JPEG)
SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N")


def one_line(error, path):
    text = str(error)
    return "\n" not in text and str(path) in text


def refused(path, channels):
    """The line decoding `path` gives, or None when it decodes."""
    try:
        _decode(str(path), channels)
    except KDError as e:
        return str(e)
    return None


# --- decoding: the rule, swept --------------------------------------------------------------------

def source(mode, rng):
    """A 7 x 5 image in `mode` whose samples span the mode's range (16-bit: 0-65535; 32-bit
    integers and floats: beyond 0-255), from random RGB where PIL converts to the mode."""
    typestr, bands = ImageMode.getmode(mode).typestr, len(ImageMode.getmode(mode).bands)
    if typestr in ("|u1", "|b1"):
        rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "RGB")
        try:
            return rgb.convert(mode)
        except ValueError:
            return Image.frombytes(mode, (7, 5), rng.integers(0, 256, 35 * bands, dtype=np.uint8).tobytes())
    low, high = {"u2": (0, 65536), "i4": (-1000, 100000), "f4": (-2, 300)}[typestr[1:]]
    values = rng.uniform(low, high, 35) if typestr.endswith("f4") else rng.integers(low, high, 35)
    return Image.frombytes(mode, (7, 5), values.astype(typestr).tobytes())


def expected(data, channels):
    """The rule: PIL's convert of the first frame; 16-bit grey: its high byte; None: refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's deprecation of some formats (IM)
            im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - PIL cannot open it (a format it writes but does not read): refused
        return None
    with im:
        if im.format not in READS:
            return None
        if im.mode in SIXTEEN or (im.mode == "I" and im.format in ("PNG", "PPM")):  # PIL holds 16-bit samples as I
            im = Image.fromarray((np.asarray(im).astype(np.int64) >> 8).astype(np.uint8), "L")
        elif im.mode in ("I", "F"):
            return None  # 32-bit integers, floats: no 8-bit range to know
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except Exception:  # noqa: BLE001 - PIL cannot convert it (LAB, a damaged file): refused
            return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# Adam7's seven passes: (x0, y0, dx, dy), the pixels at x0 + k dx, y0 + l dy
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png(array, depth, colour_type, interlace=0, plte=b"", trns=None):
    """PNG bytes of samples [H, W, bands] at bit depth `depth` (1-16; rows unfiltered), Adam7-
    interlaced if asked, with a palette and a tRNS chunk if given: what PIL cannot write (16-bit
    colour and grey+alpha, 2- and 4-bit grey, interlacing)."""
    h, w = array.shape[:2]

    def row_bytes(row):  # [w', bands] -> the row's bytes, its filter byte first (0: none)
        flat = row.reshape(-1).astype(np.int64)
        if depth >= 8:
            return b"\0" + flat.astype(">u2" if depth == 16 else np.uint8).tobytes()
        bits = (flat[:, None] >> np.arange(depth - 1, -1, -1)) & 1  # most significant first
        return b"\0" + np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes()

    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    raw = b"".join(row_bytes(sub[y]) for x0, y0, dx, dy in passes
                   for sub in [array[y0::dy, x0::dx]] if sub.size for y in range(sub.shape[0]))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, interlace))
            + (chunk(b"PLTE", plte) if plte else b"") + (chunk(b"tRNS", trns) if trns is not None else b"")
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png16(array, colour_type):
    """PNG bytes of uint16 samples [H, W, bands] (PIL cannot write 16-bit colour or grey+alpha)."""
    return png(array, 16, colour_type)


def png_variants(rng):
    """(name, bytes) of every PNG colour type x bit depth the standard allows, plain and Adam7-
    interlaced, with and without a tRNS chunk where the type takes one: 9 x 11 pixels."""
    bands = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    depths = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
    files = []
    for colour_type, ds in depths.items():
        for depth in ds:
            top = (1 << depth) if colour_type != 3 else min(1 << depth, 7)  # 7 palette entries
            samples = rng.integers(0, top, (9, 11, bands[colour_type]))
            plte = rng.integers(0, 256, 21, dtype=np.uint8).tobytes() if colour_type == 3 else b""
            trns = {0: samples[0, 0].astype(">u2").tobytes(), 2: samples[0, 0].astype(">u2").tobytes(),
                    3: bytes([0, 128, 255])}.get(colour_type)
            for interlace in (0, 1):
                for t in (None, trns) if trns else (None,):
                    name = f"ct{colour_type}-{depth}bit{'-adam7' if interlace else ''}{'-trns' if t else ''}.png"
                    files.append((name, png(samples, depth, colour_type, interlace, plte, t)))
    return files


def sweep_files(tmp_path):
    """(name, bytes) of every (PIL mode, listed extension) PIL can write, one- and two-frame;
    GIF bytes under a listed name; 16-bit colour and grey+alpha PNG; every format PIL can write
    under a .png name."""
    Image.init()  # every plugin: Image.EXTENSION, Image.SAVE
    rng = np.random.default_rng(0)
    files = []
    for mode in Image.MODES:
        try:
            im = source(mode, rng)
        except (ValueError, KeyError):
            continue
        second = source(mode, rng) if im.mode == mode else im
        for ext in IMG_EXTENSIONS + (".gif",):
            for frames in (1, 2):
                buf = io.BytesIO()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        im.save(buf, Image.EXTENSION[ext], **({"save_all": True, "append_images": [second]}
                                                             if frames == 2 else {}))
                except Exception:  # noqa: BLE001 - PIL cannot write this mode in this format: nothing to read
                    continue
                name = f"{mode.replace(';', '_')}-{frames}{ext if ext != '.gif' else '.gif.png'}"  # .gif: not listed
                files.append((name, buf.getvalue()))
    rgba = Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), "RGBA")
    for fmt, options in [("JPEG", {"progressive": True}), ("JPEG", {"subsampling": 0}), ("JPEG", {"subsampling": 1}),
                         ("JPEG", {"quality": 30}), ("WEBP", {"lossless": True}), ("WEBP", {"quality": 30})]:
        for im in (rgba.convert("RGB"), rgba.convert("L"), rgba):  # other encoders' settings, as JPEG/WebP allow
            buf = io.BytesIO()
            try:
                im.save(buf, fmt, **options)
            except OSError:  # JPEG has no alpha
                continue
            files.append((f"{im.mode}-{'-'.join(f'{k}{v}' for k, v in options.items())}.{fmt.lower()}", buf.getvalue()))
    files.append(("rgb48.png", png16(rng.integers(0, 65536, (5, 7, 3)), 2)))
    files.append(("la32.png", png16(rng.integers(0, 65536, (5, 7, 2)), 4)))
    files += png_variants(rng)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "RGB")
    for fmt in sorted(Image.SAVE):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rgb.save(buf, fmt)
        except Exception:  # noqa: BLE001 - PIL cannot write RGB in it here (a missing library, a plugin)
            continue
        files.append((f"as-{fmt}.png", buf.getvalue()))
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    return files


def test_every_mode_and_extension_decodes_as_pil_converts_it_or_is_one_line(tmp_path):
    """The rule, over every PIL mode x listed extension x frames (as PIL can write them) x
    channels, and every PNG colour type x bit depth x interlacing x tRNS: equal to PIL's convert,
    exactly (JPEG, PNG and WebP too: TorchCodec's decoders give PIL's pixels here), 16-bit as its
    high byte; or refused in one line naming the file, and
    refused only where the rule says."""
    files = sweep_files(tmp_path)
    failures, decoded, refusals = [], 0, 0
    for name, data in files:
        path = tmp_path / name
        for channels in (1, 3):
            want = expected(data, channels)
            try:
                got = _decode(str(path), channels)
            except KDError as e:
                refusals += 1
                if want is not None:
                    failures.append(f"{name} c{channels}: refused, but PIL reads it: {e}")
                elif not one_line(e, path):
                    failures.append(f"{name} c{channels}: not one line naming the file: {e}")
                continue
            decoded += 1
            if want is None:
                failures.append(f"{name} c{channels}: decoded, but the rule refuses it")
            elif got.dtype != torch.uint8 or tuple(got.shape) != want.shape:
                failures.append(f"{name} c{channels}: {got.dtype} {tuple(got.shape)}, expected uint8 {want.shape}")
            elif not np.array_equal(got.numpy(), want):
                diff = np.abs(got.numpy().astype(int) - want.astype(int)).max()
                failures.append(f"{name} c{channels}: pixels differ from PIL's by up to {diff}")
    assert not failures, "\n".join(failures)
    names = {n for n, _ in files}
    # the sweep is not vacuous: 16-bit grey in PNG, PGM and TIFF, WebP and JPEG, multi-frame files were in it
    assert {"I_16-1.png", "I_16-1.pgm", "I_16-1.tif", "L-1.webp", "RGB-1.jpg", "RGB-2.webp", "RGB-2.png",
            "ct0-2bit-adam7-trns.png", "ct3-4bit-adam7-trns.png", "ct4-16bit-adam7.png"} <= names
    assert decoded > 250 and refusals > 20, (decoded, refusals)


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    """A 16-bit grey PNG (TorchCodec's decoder) and TIFF (PIL's) decode to the high byte of each
    sample: not the low byte (a uint16 cast to uint8), not TorchCodec's uint8 (v / 257, rounded),
    not PIL's clip to 255."""
    values = np.array([[0, 255, 256, 4660, 40000, 65535]], dtype=np.uint16)
    for ext in ("png", "tif", "pgm"):
        path = tmp_path / f"deep.{ext}"
        Image.fromarray(values).save(path)
        for channels in (1, 3):
            got = _decode(str(path), channels)
            assert got.dtype == torch.uint8 and got.shape == (channels, 1, 6), (ext, got.shape)
            assert got[0].tolist() == [[0, 0, 1, 18, 156, 255]], (ext, channels, got[0].tolist())


def test_a_webp_in_a_grey_run_decodes_grey(tmp_path):
    """libwebp has no grey mode (torchvision's decoder returned 3 channels where the batch holds
    1: a traceback); grey is PIL's luma of the RGB it decodes."""
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = tmp_path / "x.webp"
    Image.fromarray(rgb).save(path, lossless=True)
    got = _decode(str(path), 1)
    assert got.shape == (1, 6, 5) and np.array_equal(got[0].numpy(), np.asarray(Image.open(path).convert("L")))


@pytest.mark.parametrize("case", ["float tiff", "32-bit tiff", "bomb", "zero width", "eps"])
def test_files_the_rule_refuses_are_one_line(tmp_path, case):
    """Pixels without an 8-bit range, an image over PIL's decompression-bomb limit (refused from
    its header, before TorchCodec's decoder allocates it), a zero-width image, a format kd_accel
    does not read under an image name: one line naming the file."""
    path = tmp_path / "x.png"
    if case == "float tiff":
        path = tmp_path / "x.tif"
        Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(path)
    elif case == "32-bit tiff":
        path = tmp_path / "x.tif"
        Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(path)
    elif case == "bomb":  # 20000 x 20000 claimed; a few bytes of pixels
        data = png16(np.zeros((1, 1, 1), dtype=np.uint16), 0)
        path.write_bytes(data[:16] + struct.pack(">II", 20000, 20000) + data[24:29]
                         + struct.pack(">I", zlib.crc32(data[12:16] + struct.pack(">II", 20000, 20000) + data[24:29]))
                         + data[33:])
    elif case == "zero width":
        data = png16(np.zeros((1, 1, 1), dtype=np.uint16), 0)
        body = b"IHDR" + struct.pack(">II", 0, 1) + data[24:29]
        path.write_bytes(data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:])
    else:
        Image.new("RGB", (4, 4)).save(path, "EPS")
    for channels in (1, 3):
        line = refused(path, channels)
        assert line and one_line(line, path) and line.startswith("cannot read image"), line
    if case == "bomb":
        assert "decompression bomb" in line, line
    if case == "eps":
        assert "its format is EPS" in line, line


@pytest.mark.parametrize("damage", ["short pixel data", "bad CRC", "bad zlib stream", "bad row filter"])
def test_a_damaged_png_is_one_line_not_a_crash(tmp_path, damage):
    """torchvision 0.29's decode_png died of SIGSEGV on a libpng error in the pixel data (every
    damaged PNG tried); TorchCodec's raises, and PIL then decodes the file: one line, or (a bad
    IDAT CRC, which PIL does not check) PIL's pixels, by the rule. (Were a crashing decoder used,
    this test would crash the test process: a failure, loudly.)"""
    rows = {"short pixel data": b"\0" * 3, "bad row filter": b"\7\1\2\3\4" * 4}.get(damage, b"\0\1\2\3\4" * 4)
    body = b"xxxxxxx" if damage == "bad zlib stream" else zlib.compress(rows)
    crc = zlib.crc32(b"IDAT" + body) ^ (1 if damage == "bad CRC" else 0)
    head = png16(np.zeros((4, 4, 1), dtype=np.uint16), 0)[:33].replace(b"\x10\x00", b"\x08\x00", 1)  # IHDR 4x4, 8-bit
    head = head[:29] + struct.pack(">I", zlib.crc32(head[12:29]))
    path = tmp_path / "x.png"
    path.write_bytes(head + struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", crc)
                     + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    for channels in (1, 3):
        want = expected(path.read_bytes(), channels)  # PIL skips IDAT's CRC: it reads that one
        line = refused(path, channels)
        if want is None:
            assert line and one_line(line, path) and line.startswith("cannot read image"), line
        else:
            assert line is None and np.array_equal(_decode(str(path), channels).numpy(), want), line


# --- listing: one line at scan time -----------------------------------------------------------------

def touch(path):
    path = os.fsencode(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x")


LISTING_CASES = {  # case: (make it under ROOT, the path the line must name, words in the line)
    "file name not UTF-8": (lambda r: touch(os.fsencode(r) + b"/c0/bad\xff.png"), b"c0/bad\\xff.png",
                            "not valid UTF-8"),
    "class name not UTF-8": (lambda r: touch(os.fsencode(r) + b"/c\xff/x.png"), b"c\\xff", "not valid UTF-8"),
    "sub-folder not UTF-8": (lambda r: touch(os.fsencode(r) + b"/c0/s\xff/x.png"), b"s\\xff/x.png", "not valid UTF-8"),
    "dangling file link": (lambda r: os.symlink("gone.png", r / "c0" / "x2.png"), "c0/x2.png", "does not exist"),
    "dangling folder link": (lambda r: os.symlink("/nonexistent/more", r / "c0" / "more"), "c0/more", "does not exist"),
    "dangling class link": (lambda r: os.symlink("/nonexistent/c5", r / "c5"), "c5", "does not exist"),
    "link to its own folder": (lambda r: os.symlink(".", r / "c0" / "again"), "c0/again", "holds it"),
    "link to a folder above": (lambda r: (os.makedirs(r / "c1" / "deep" / "er"),
                                          os.symlink("../..", r / "c1" / "deep" / "er" / "up")),
                               "c1/deep/er/up", "holds it"),
    "named pipe": (lambda r: os.mkfifo(r / "c0" / "pipe.png"), "c0/pipe.png", "named pipe"),
}


@pytest.mark.parametrize("case", LISTING_CASES)
def test_a_hostile_listing_is_one_line_at_scan_time(tmp_path, case):
    """Each was a traceback (UnicodeEncodeError, FileNotFoundError), a silently changed listing
    (a dangling class or folder link dropped; a loop listed every image once per level, up to the
    kernel's link limit) or a hang later (a worker reading a named pipe)."""
    root = tmp_path / "train"
    for name in ("c0/a.png", "c0/b.png", "c1/c.png", "c1/deep/d.png"):
        touch(root / name)
    make, names, words = LISTING_CASES[case]
    make(root)
    with pytest.raises(KDError) as e:
        scan(root)
    line = str(e.value)
    named = names.decode() if isinstance(names, bytes) else names
    assert "\n" not in line and named in line and words in line, line


def test_a_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    """os.walk skips a folder it cannot list (permissions), leaving its images out silently."""
    root = tmp_path / "train"
    for name in ("c0/a.png", "c0/locked/b.png", "c1/c.png"):
        touch(root / name)
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root may read anything: chmod would not bite
    with pytest.raises(KDError) as e:
        scan(root)
    assert "\n" not in str(e.value) and "c0/locked: Permission denied" in str(e.value), str(e.value)


def test_links_that_do_not_loop_are_followed_as_torchvision_follows_them(tmp_path):
    """The loop check refuses only loops: a class folder or a sub-folder that is a link to a
    folder elsewhere is listed as torchvision's ImageFolder lists it."""
    from torchvision.datasets import ImageFolder

    elsewhere, root = tmp_path / "elsewhere", tmp_path / "train"
    for name in ("x.png", "sub/y.png"):
        touch(elsewhere / name)
    for name in ("c0/a.png", "c1/b.png"):
        touch(root / name)
    os.symlink(elsewhere, root / "c0" / "more")
    os.symlink(elsewhere, root / "c2")
    index = scan(root)
    tv = ImageFolder(str(root), loader=lambda p: p)
    assert list(index.classes) == tv.classes
    assert [(str(root / p), c) for p, c in zip(index.paths, index.labels)] == tv.samples
    assert len(index) == 6


# --- class lists: the validation split is labelled by the training split's class names ---------------

def class_folder(root, classes, per_class=2):
    """Grey 8x8 PNGs whose every pixel is 40 c + 20 for class c{c}: the class can be read back off the image."""
    for c in classes:
        values = torch.full((per_class, 1, 8, 8), 40 * c + 20, dtype=torch.uint8)
        write_image_folder(root, values, torch.full((per_class,), c), start=10 * c)


class Oracle(torch.nn.Module):
    """Reads the class off the image (class_folder's pixels): 4 logits, the right one highest."""

    def forward(self, x):
        c = ((x.mean(dim=(1, 2, 3)) * 255 - 20) / 40).round().long()
        return torch.nn.functional.one_hot(c, 4).float()


@pytest.mark.parametrize("how", ["absent", "empty"])
def test_a_val_folder_missing_a_class_evaluates_with_the_training_labels(tmp_path, accelerator, capsys, how):
    """val/ without c1 (or with c1 empty): every later class kept its own label (c2 was
    labelled 1, c3 2: accuracy 33% for a perfect model; an empty class was refused); now each
    sample's label is the training split's index of its class name, the class list is
    training's, and one line says what val lacks."""
    from kd_accel.config import from_flags
    from kd_accel.evaluation import evaluate
    from kd_accel.pipeline import load_data

    class_folder(tmp_path / "train", [0, 1, 2, 3])
    class_folder(tmp_path / "val", [0, 2, 3])
    if how == "empty":
        (tmp_path / "val" / "c1").mkdir()
    cfg = from_flags(dataset="imagefolder", data_dir=str(tmp_path), channels=1, num_workers=0)
    train, test = load_data(accelerator, cfg, run_folder=False)  # the pipeline's one call: open_splits
    assert test.num_classes == 4 and test.index.classes == train.index.classes
    by_name = {name: c for c, name in enumerate(train.index.classes)}
    assert test.labels.tolist() == [by_name[p.split("/")[0]] for p in test.index.paths] == [0, 0, 2, 2, 3, 3]
    assert evaluate(accelerator, Oracle(), test.at({"image_size": [8, 8]}), batch_size=4) == 100.0
    said = [line for line in capsys.readouterr().out.splitlines() if "lacks" in line]
    assert len(said) == 1 and "lacks 1 of the training split's 4 classes (c1)" in said[0], said


def test_a_val_class_that_training_lacks_is_one_line(tmp_path):
    class_folder(tmp_path / "train", [0, 1])
    class_folder(tmp_path / "val", [0, 1, 3])
    with pytest.raises(KDError) as e:
        open_splits("imagefolder", tmp_path, channels=1, workers=0)
    line = str(e.value)
    assert "\n" not in line and "class folder c3 that the training split lacks" in line, line


def test_the_fingerprint_covers_the_class_list_and_the_label_mapping(tmp_path):
    """The same val files labelled by two training class lists (another class sorted first
    shifts every index) have two fingerprints, and neither is the fingerprint of val alone; a val
    with training's very classes keeps the fingerprint it had (caches and models stay valid)."""
    class_folder(tmp_path / "val", [1, 2])
    alone = scan(tmp_path / "val")
    assert scan(tmp_path / "val", classes=("c1", "c2")).fingerprint() == alone.fingerprint()
    by_train = scan(tmp_path / "val", classes=("c0", "c1", "c2"))
    shifted = scan(tmp_path / "val", classes=("a", "c0", "c1", "c2"))
    assert by_train.labels.tolist() == [1, 1, 2, 2] and shifted.labels.tolist() == [2, 2, 3, 3]
    assert len({alone.fingerprint(), by_train.fingerprint(), shifted.fingerprint()}) == 3


def test_a_refused_file_met_by_a_worker_is_its_one_line(tmp_path):
    """The decoding rule's refusals reach the user as their own line from a DataLoader worker too
    (errors.worker_message unwraps torch's re-raise). The worker is stopped here: left to the
    garbage collector (the exception holds the iterator), torch takes ~5 s to stop it."""
    from kd_accel.data import load_folder
    from kd_accel.data.streamed import folder_loader
    from kd_accel.errors import worker_message

    class_folder(tmp_path / "train", [0, 1], per_class=3)
    bad = tmp_path / "train" / "c1" / "00011.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(bad)
    split = load_folder(tmp_path, "train", channels=1, workers=1).at({"image_size": [8, 8]})
    batches = iter(folder_loader(split.dataset_for(), batch_size=4, workers=1, device="cpu"))
    try:
        with pytest.raises(KDError) as e:
            for _ in batches:
                pass
    finally:
        batches._shutdown_workers()
    line = worker_message(e.value)
    assert "DataLoader worker" in str(e.value) and one_line(line, bad) and "floating point" in line, line
