"""Issue 28: decoders that will still exist (TorchCodec's, not torchvision.io's, deprecated since
torchvision 0.29), a batch-norm sync without torch's deprecated functional all_reduce, and no
deprecation warning from kd_accel's own code paths.

pyproject's filterwarnings makes a DeprecationWarning or FutureWarning *attributed to a kd_accel
module* an error in every test: what torch's deprecations are (they warn at the caller's line,
e.g. torch.distributed.nn.functional.all_reduce at stacklevel 3). torchvision's image
deprecation warns at its own line (stacklevel 1: module torchvision.io.image), which that filter
cannot see; the decoding test below records every warning, wherever it is attributed. Which
pixels the decoders give is tests/test_trust_images.py's sweep."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from kd_accel.data import decode
from kd_accel.distributed import _sync_normalise


def files(tmp_path):
    """Paths of one grey and one RGB 12 x 9 image in each format decode.py reads; a 16-bit grey PNG
    and a palette PNG with a transparent colour (PIL warns on its convert) too."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8))
    paths = []
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("TIFF", "tif"),
                     ("BMP", "bmp"), ("PPM", "ppm")):
        for im in (rgb.convert("L"), rgb):
            paths.append(tmp_path / f"{im.mode}.{ext}")
            im.save(paths[-1], fmt)
    paths.append(tmp_path / "sixteen.png")
    Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257)).save(paths[-1])
    paths.append(tmp_path / "palette.png")
    rgb.convert("P").save(paths[-1], transparency=0)
    return paths


def test_the_torchcodec_used_is_the_one_pinned():
    """decode.TORCHCODEC (the release swept) is pyproject's pin, and the one installed here."""
    import torchcodec

    from conftest import ROOT

    assert f'"torchcodec=={decode.TORCHCODEC}"' in (ROOT / "pyproject.toml").read_text()
    assert torchcodec.__version__.split("+")[0] == decode.TORCHCODEC, torchcodec.__version__


def recorded(fn):
    """The warnings `fn()` raises, every one, wherever attributed."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [f"{w.category.__name__} ({w.filename}:{w.lineno}): {w.message}" for w in seen]


def test_decoding_every_format_warns_nothing_and_jpeg_png_webp_go_to_torchcodec(tmp_path, monkeypatch):
    """Each format grey and RGB, to 1 and 3 channels, through decode.py: no warning at all; and
    TorchCodec decoded the JPEG, PNG and WebP files (were it not loadable, PIL would give the same
    pixels slower, silently: this is where an install without it shows). The check can fail: the
    decoder used before issue 28 (torchvision.io's) warns under the same recorder."""
    codec, real = [], decode._codec

    def spy(data, fmt, *args):  # the formats TorchCodec decoded (a failure raises, or is None)
        out = real(data, fmt, *args)
        codec.extend([fmt] if out is not None else [])
        return out

    monkeypatch.setattr(decode, "_codec", spy)
    paths = files(tmp_path)
    said = recorded(lambda: [decode._decode(str(p), c) for p in paths for c in (1, 3)])
    assert not said, said
    # 2 JPEG, 4 PNG and 2 WebP files, 1 and 3 channels each, but colour PNGs to grey (PIL's: faster)
    assert sorted(codec) == ["JPEG"] * 4 + ["PNG"] * 6 + ["WEBP"] * 4, codec
    from torchvision.io import decode_jpeg

    data = (tmp_path / "RGB.jpg").read_bytes()
    assert recorded(lambda: decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)))


def test_grey_from_colour_is_pils_for_every_colour():
    """decode._luma (float32, for speed) against PIL's convert("L") (integer) on all 2^24 RGB
    colours, in 16 images of 1024 x 1024, as the CHW view of HWC memory TorchCodec returns and as
    a contiguous CHW tensor."""
    rgb = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(1024, 64, 2)
    for blue in range(0, 256, 16):  # 16 blues per image: [1024, 1024] pixels
        hwc = np.concatenate([np.dstack([rgb, np.full((1024, 64, 1), b)]) for b in range(blue, blue + 16)], 1)
        hwc = np.ascontiguousarray(hwc.astype(np.uint8))
        want = np.asarray(Image.fromarray(hwc).convert("L"))
        view = torch.from_numpy(hwc).permute(2, 0, 1)
        for t in (view, view.contiguous()):
            assert np.array_equal(decode._luma(t)[0].numpy(), want), blue


def test_a_deprecation_attributed_to_kd_accel_is_an_error_in_the_suite():
    """pyproject's filterwarnings, as this test runs under it: DeprecationWarning and
    FutureWarning attributed to a kd_accel module raise; attributed to another module they stay
    warnings (tests may still call deprecated APIs, e.g. torchvision's encoders)."""
    for category in (DeprecationWarning, FutureWarning):
        with pytest.raises(category):
            warnings.warn_explicit("old", category, "distributed.py", 1, module="kd_accel.distributed")
        with warnings.catch_warnings(record=True) as seen:  # the suite's filters, plus a record of what passes
            warnings.warn_explicit("old", category, "image.py", 1, module="torchvision.io.image")
        assert len(seen) == 1, seen


def test_the_batch_norm_sync_is_batch_norm_over_the_global_batch_and_warns_nothing(monkeypatch):
    """_sync_normalise on one rank of two holding the same x [4, 3, 5, 5] (dist.all_reduce made to
    double its tensor in place: what gloo's sum of two equal tensors gives) is BatchNorm2d over
    [x; x]: the same output, running statistics, input gradient (the other rank's loss reaches x
    through the shared statistics, in backward's all-reduce) and half the weight gradient (the
    other half is the other rank's, summed later by DDP); and no warning (torch 2.14's functional
    all_reduce gave a FutureWarning on every forward)."""
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.mul_(2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g)
    up = torch.randn(4, 3, 5, 5, generator=g)  # the loss's gradient at the output
    synced, plain = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        for bn in (synced, plain):
            bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    xs, xp = x.clone().requires_grad_(), torch.cat([x, x]).requires_grad_()
    out = []
    said = recorded(lambda: out.append(_sync_normalise(synced, xs)))
    assert not said, said
    (out[0] * up).sum().backward()
    ref = plain(xp)
    (ref * torch.cat([up, up])).sum().backward()
    torch.testing.assert_close(out[0], ref[:4])
    torch.testing.assert_close(xs.grad, xp.grad[:4])
    torch.testing.assert_close(synced.weight.grad * 2, plain.weight.grad)
    torch.testing.assert_close(synced.running_mean, plain.running_mean)
    torch.testing.assert_close(synced.running_var, plain.running_var)
