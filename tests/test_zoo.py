"""kd_accel.models.zoo: torchvision and timm architectures by name, weights from local files.

Tiny on purpose: 32x32 inputs, mobilenet_v3_small (1.5M parameters) and timm's test_resnet
(0.4M); resnet18 only where its `fc` head is the point. No weights are downloaded: each test
writes its own files."""
import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from kd_accel.errors import KDError
from kd_accel.models import (arch_spec, build_from_spec, build_zoo_model, list_models, load_weights, parse_arch,
                             preprocessing)
from kd_accel.models.zoo import adapt_conv_weight

TV = "torchvision:mobilenet_v3_small"
TIMM = "timm:test_resnet"


def one_line_error(call, *args):
    with pytest.raises(KDError) as e:
        call(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def built(spec, num_classes=10, in_chans=3, seed=0):
    torch.manual_seed(seed)
    model, _ = build_zoo_model(spec, num_classes, in_chans)
    return model.eval()


def logits(model, in_chans=3, seed=1):
    x = torch.rand(2, in_chans, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, parsed", [
    ("torchvision:resnet18", ("torchvision", "resnet18")), ("timm:resnet10t", ("timm", "resnet10t")),
    ("timm:resnet50.a1_in1k", ("timm", "resnet50.a1_in1k")),
    ("notebook:teacher", ("notebook", "teacher")), ("notebook:student", ("notebook", "student"))])
def test_names_resolve(spec, parsed):
    assert parse_arch(spec) == parsed


@pytest.mark.parametrize("spec, words", [
    ("torchvision:resnt18", "closest: torchvision:resnet18"),
    ("timm:resnet10x", "closest: timm:resnet10t"),
    ("notebook:teachr", "closest: notebook:teacher"),
    ("torchvison:resnet18", "did you mean torchvision?"),
    ("resnet18", "is not SOURCE:NAME; did you mean torchvision:resnet18"),
])
def test_unknown_names_suggest_the_closest(spec, words):
    msg = one_line_error(parse_arch, spec)
    assert words in msg, msg
    if not spec.startswith("torchvison"):
        assert msg.endswith("list them with --list-models PATTERN"), msg


def test_list_models_by_glob():
    found = list_models("*resnet18")
    assert "torchvision:resnet18" in found and "timm:resnet18" in found
    assert set(list_models("torchvision:mobilenet_v3_*")) == {"torchvision:mobilenet_v3_small",
                                                              "torchvision:mobilenet_v3_large"}
    assert list_models("notebook:*") == ["notebook:teacher", "notebook:student"]
    assert "torchvision:fasterrcnn_resnet50_fpn" not in list_models("*")  # classification only


def test_timm_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    msg = one_line_error(build_zoo_model, TIMM, 10)
    assert msg.endswith("needs timm: pip install -e '.[timm]'") and TIMM in msg, msg
    assert "needs timm" in one_line_error(preprocessing, TIMM)
    assert list_models("*resnet18") == ["torchvision:resnet18"]  # timm's are just not listed


@pytest.mark.parametrize("num_classes, in_chans", [(0, 3), (10, 0), (2.5, 3), ("10", 3)])
def test_bad_counts_refused(num_classes, in_chans):
    assert "must be a positive integer" in one_line_error(build_zoo_model, TV, num_classes, in_chans)


# --- first convolution ---------------------------------------------------------------------

def test_grey_input_gives_what_rgb_gives_on_the_grey_image_repeated():
    torch.manual_seed(0)
    rgb, _ = build_zoo_model(TV, 10, 3)
    torch.manual_seed(0)  # same random weights, then the stem adapted
    grey, notes = build_zoo_model(TV, 10, 1)
    assert notes == ["first convolution features.0.0 adapted from 3 to 1 input channels"]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec, stem", [(TV, "features.0.0"), (TIMM, "conv1.0")])
def test_three_channel_weights_load_into_a_grey_model(tmp_path, spec, stem):
    rgb = built(spec)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey = built(spec, in_chans=1, seed=5)
    assert load_weights(grey, tmp_path / "rgb.pth") == [
        f"rgb.pth: first convolution {stem} weights adapted from 3 to 1 input channels"]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("in_chans", [2, 4, 6])
def test_other_channel_counts_repeat_and_rescale(in_chans):
    w = torch.randn(8, 3, 3, 3)  # [O, RGB, kh, kw]
    out = adapt_conv_weight(w, in_chans)
    torch.testing.assert_close(out, w[:, [i % 3 for i in range(in_chans)]] * 3 / in_chans)
    if in_chans % 3 == 0:  # a grey image repeated over the channels gives the RGB response
        torch.testing.assert_close(out.sum(dim=1), w.sum(dim=1))


def test_timm_builds_grey_models_itself():
    model, notes = build_zoo_model(TIMM, 10, 1)
    assert notes == [] and logits(model, 1).shape == (2, 10)


# --- weights from each file shape ----------------------------------------------------------

def write(kind, state, path):
    """state written as users have it on disk."""
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
                    "model": {"model": state, "optimizer": {}},
                    "ddp": {f"module.{k}": v for k, v in state.items()}}[kind], path)
    return path


@pytest.mark.parametrize("kind", ["plain", "state_dict", "model", "ddp", "safetensors"])
@pytest.mark.parametrize("spec", [TV, TIMM])
def test_each_file_shape_loads_bit_identically(tmp_path, spec, kind):
    state = state_of(built(spec, seed=3))
    path = write(kind, state, tmp_path / f"w.{'safetensors' if kind == 'safetensors' else 'pth'}")
    direct = built(spec)
    direct.load_state_dict(state)
    ours = built(spec)
    assert load_weights(ours, path) == []
    assert torch.equal(logits(ours), logits(direct))


def test_published_files_without_bn_counters_load(tmp_path):
    # torchvision's older published files predate BatchNorm's num_batches_tracked
    state = {k: v for k, v in state_of(built(TV)).items() if not k.endswith("num_batches_tracked")}
    model = built(TV, seed=4)
    load_weights(model, write("plain", state, tmp_path / "old.pth"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class Custom:
    pass


@pytest.mark.parametrize("obj, words", [({"w": torch.zeros(2), "extra": Custom()}, "Custom"),
                                        (torch.nn.Linear(2, 2), "Linear")])
def test_files_needing_pickled_code_are_refused(tmp_path, obj, words):
    path = tmp_path / "code.pth"
    torch.save(obj, path)
    msg = one_line_error(load_weights, built(TIMM), path)
    assert msg.startswith(f"{path} needs pickled code to load (") and words in msg, msg


@pytest.mark.parametrize("name, damage", [
    ("truncated.pth", lambda b: b[:len(b) // 2]), ("truncated.safetensors", lambda b: b[:len(b) // 2]),
    ("garbage.bin", lambda b: b"not weights at all" * 10)])
def test_corrupt_files_are_one_line_naming_the_file(tmp_path, name, damage):
    good = write("safetensors" if name.endswith("safetensors") else "plain", state_of(built(TIMM)), tmp_path / "good")
    path = tmp_path / name
    path.write_bytes(damage(good.read_bytes()))
    assert str(path) in one_line_error(load_weights, built(TIMM), path)


def test_missing_file_and_non_state_dicts(tmp_path):
    assert "weights file not found" in one_line_error(load_weights, built(TIMM), tmp_path / "nope.pth")
    assert "is not a file" in one_line_error(load_weights, built(TIMM), tmp_path)
    torch.save({"epoch": 3}, tmp_path / "ckpt.pth")
    assert "holds no state dict" in one_line_error(load_weights, built(TIMM), tmp_path / "ckpt.pth")


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("layer1.0.conv1.weight"), "missing layer1.0.conv1.weight"),
    (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected extra.weight"),
    (lambda s: s.update({"layer1.0.conv1.weight": torch.zeros(2, 2, 3, 3)}),
     "tensor layer1.0.conv1.weight is [2, 2, 3, 3] in the checkpoint, "),
])
def test_misfits_are_named(tmp_path, change, words):
    state = state_of(built(TIMM))
    change(state)
    path = write("plain", state, tmp_path / "w.pth")
    msg = one_line_error(load_weights, built(TIMM), path)
    assert msg.startswith(f"{path}: weights do not fit this ResNet: ") and words in msg, msg


@pytest.mark.parametrize("spec, head", [(TV, "classifier.3"), (TIMM, "fc"), ("torchvision:resnet18", "fc")])
def test_head_reinitialised_for_another_class_count(tmp_path, spec, head):
    state = state_of(built(spec, num_classes=1000))
    path = write("plain", state, tmp_path / "imagenet.pth")
    model = built(spec, num_classes=10, seed=7)
    assert load_weights(model, path) == [f"classifier {head} re-initialised: the file has 1000 classes, the data 10"]
    loaded = model.state_dict()
    assert loaded[f"{head}.weight"].shape[0] == 10
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith(f"{head}."))


def test_grey_model_from_an_imagenet_file_gets_both_notes(tmp_path):
    path = write("plain", state_of(built(TV, num_classes=1000)), tmp_path / "imagenet.pth")
    assert load_weights(built(TV, in_chans=1), path) == [
        "imagenet.pth: first convolution features.0.0 weights adapted from 3 to 1 input channels",
        "classifier classifier.3 re-initialised: the file has 1000 classes, the data 10"]


# --- preprocessing and the record ----------------------------------------------------------

def test_preprocessing():
    assert preprocessing("torchvision:resnet18") == {"image_size": 224, "resize_size": 256, "interpolation": "bilinear",
                                                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert preprocessing(TIMM) == {"image_size": 160, "resize_size": 168, "interpolation": "bilinear",
                                   "mean": [0.5] * 3, "std": [0.5] * 3}
    assert preprocessing("notebook:student")["mean"] is None
    assert "choose from IMAGENET1K_V1" in one_line_error(preprocessing, "torchvision:resnet18", "NOPE")


@pytest.mark.parametrize("spec, shape", [(TV, (1, 32, 32)), (TIMM, (3, 32, 32)), ("notebook:student", (1, 28, 28))])
def test_record_round_trip(spec, shape):
    original, _ = build_zoo_model(spec, 10, shape[0], shape[1:])  # (H, W) used by the notebook's only
    record = arch_spec(spec, 10, shape, preprocessing(spec))
    rebuilt, _ = build_from_spec(json.loads(json.dumps(record)))
    rebuilt.load_state_dict(original.state_dict())
    x = torch.rand(2, *shape)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), original.eval()(x))
    assert record["in_chans"] == shape[0] and record["input_shape"] == list(shape)


@pytest.mark.parametrize("record, words", [
    ("{not json", "not JSON"), ({"spec": TV}, "needs the keys"),
    ({"spec": TV, "num_classes": 10, "in_chans": 3, "input_shape": [1, 32, 32], "preprocessing": None},
     "in_chans 3 is not input_shape's 1")])
def test_bad_records_refused(record, words):
    assert words in one_line_error(build_from_spec, record)
