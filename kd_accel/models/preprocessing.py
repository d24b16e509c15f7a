"""Each model's preprocessing: the input size, normalisation and interpolation it expects.

A record, saved with the model (models/files.py) and stamped on the caches its logits fill:
  {"image_size": [H, W], "mean": [..] or None, "std": [..] or None, "interpolation": "bilinear",
   "resize_size": int or None, "source": where it came from}
mean/std None: pixels scaled to [0, 1] only (MNIST's and the notebook's preprocessing).

Where it comes from, first found first: the flags (--image-size, --normalize data); the known
transforms of the pretrained weights (torchvision's weight enum, the file recognised by its
published name, e.g. resnet18-f37072fd.pth; timm's pretrained_cfg, by the tag in
"timm:NAME.TAG"; what a model file kd_accel saved records); else the data set's own (its size
and mean/std). The model input is the data's view resized to image_size and normalised
(augment.make_inputs): a teacher and a student with different records each see their own
version of the same view.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KDError
from . import zoo
from .zoo import _timm, parse_arch

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    Norm = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel

KEYS = ("image_size", "resize_size", "mean", "std", "interpolation")
# torchvision models it builds with transform_input=True for their published weights
TRANSFORM_INPUT = ("inception_v3", "googlenet")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # what torch.nn.functional.interpolate does of them


def _torchvision_preprocessing(name, weights_name):
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
        weights = enum.DEFAULT if weights_name is None else enum[weights_name.rpartition(".")[2]]
    except (KeyError, ValueError):
        raise KDError(f"torchvision:{name} has no weights {weights_name!r}; "
                      f"choose from {', '.join(w.name for w in tvm.get_model_weights(name))}") from None
    t = weights.transforms()  # ImageClassification: resize to resize_size, centre-crop crop_size
    mean, std = list(t.mean), list(t.std)
    if name in TRANSFORM_INPUT:
        # torchvision builds these with transform_input=True when it loads their published weights
        # itself: the model maps ImageNet-normalised input x to x * std / 0.5 + (mean - 0.5) / 0.5,
        # i.e. the pixels p to (p - 0.5) / 0.5, what the weights (ported from TensorFlow) were
        # trained on. kd_accel builds them without (weights come from a file), so it normalises with
        # 0.5 / 0.5 itself: the same input to the first convolution.
        mean, std = [0.5] * 3, [0.5] * 3
    return {"image_size": t.crop_size[0], "resize_size": t.resize_size[0], "mean": mean, "std": std,
            "interpolation": t.interpolation.value}


def _timm_preprocessing(name, weights_name):
    timm = _timm(f"architecture 'timm:{name}'")
    from timm.data import resolve_data_config

    tagged = f"{name.split('.')[0]}.{weights_name}" if weights_name else name
    if "." in tagged:  # a tag timm does not know: one line naming those it does
        zoo._check_timm_tag(f"timm:{tagged}", *tagged.split(".", 1))
    cfg = timm.models.get_pretrained_cfg(tagged)
    if cfg is None:
        raise KDError(f"timm:{name} has no pretrained configuration {weights_name!r}")
    data = resolve_data_config(pretrained_cfg=cfg.to_dict())
    size = data["input_size"][-1]  # (C, H, W)
    return {"image_size": size, "resize_size": math.floor(size / data["crop_pct"]), "mean": list(data["mean"]),
            "std": list(data["std"]), "interpolation": data["interpolation"]}


def preprocessing(spec: str, weights_name: str | None = None) -> dict[str, Any]:
    """{image_size, resize_size, mean, std, interpolation} the pretrained weights expect
    (resize the short side to resize_size, centre-crop image_size, normalise), from
    torchvision's weight enum (weights_name e.g. "IMAGENET1K_V1"; default: DEFAULT) or timm's
    pretrained_cfg (weights_name: a tag, e.g. "a1_in1k"); all None where not known (the
    notebook's models)."""
    source, name = parse_arch(spec)
    if source == "torchvision":
        return _torchvision_preprocessing(name, weights_name)
    if source == "timm":
        return _timm_preprocessing(name, weights_name)
    return dict.fromkeys(KEYS)


def _recorded(weights_path):
    """The preprocessing a kd_accel model file records (models/files.py), or None."""
    if weights_path is None or Path(weights_path).suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            record = json.loads((f.metadata() or {}).get("arch_spec", "null"))
    except Exception:  # not a kd_accel file (or not readable): models/zoo.read_weights says why, later
        return None
    return record.get("preprocessing") if isinstance(record, dict) else None


def known_preprocessing(spec: str,
                        weights_path: Path | str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(preprocessing, source) of the weights a model starts from, where known; (None, None)
    otherwise. torchvision: a file under its published name (the enum's URL's last part, e.g.
    resnet50-11ad3fa6.pth); timm: the tag in the spec ("timm:resnet50.a1_in1k", its
    pretrained_cfg), since a timm file's name says nothing; a model file kd_accel saved: the
    preprocessing it records. A file of one's own, trained on one's own inputs, brings none: the
    data's own, or the flags, apply."""
    source, name = parse_arch(spec)
    recorded = _recorded(weights_path)
    if recorded is not None:
        return recorded, f"recorded in {Path(weights_path).name}"
    if source == "torchvision" and weights_path:
        import torchvision.models as tvm

        for w in tvm.get_model_weights(name):
            if Path(w.url).name == Path(weights_path).name:
                return _torchvision_preprocessing(name, w.name), f"torchvision {name} {w.name}"
    if source == "timm" and "." in name:
        return _timm_preprocessing(name, None), f"timm {name}"
    return None, None


def _per_channel(values, channels, what):
    """Mean/std for `channels` input channels: the weights' RGB values averaged for one grey
    channel (the first convolution is adapted by summing over RGB, models/zoo.py)."""
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    raise KDError(f"{what} has {len(values)} channels of mean/std, the data {channels}")


def resolve(spec: str, weights_path: Path | str | None, image_size: int | None, normalize: str | None,
            data_norm: Norm | None, data_hw: Sequence[int], channels: int) -> dict[str, Any]:
    """The preprocessing record of a model built from `spec` (and `weights_path`) for data of
    `channels` channels, `data_hw` (H, W) and normalisation `data_norm` ((mean, std) or None),
    under the flags image_size (int or None) and normalize (None, "data" or "weights")."""
    known, source = known_preprocessing(spec, weights_path)
    if normalize == "weights" and known is None:
        raise KDError(f"--normalize weights: the known preprocessing of {spec}"
                      f"{' with ' + Path(weights_path).name if weights_path else ''} is not known (torchvision weights "
                      "under their published file name, or a timm NAME.TAG); use --normalize data")
    use_known = known is not None and normalize != "data"
    if use_known:
        mean, std, interpolation = known["mean"], known["std"], known["interpolation"]
    else:
        mean, std = (None, None) if data_norm is None else (list(data_norm[0]), list(data_norm[1]))
        interpolation, source = "bilinear", "data"
    if interpolation not in INTERPOLATIONS:
        interpolation = "bilinear"  # e.g. timm's "bicubic"-like names beyond interpolate's modes
    known_size = known and known["image_size"]  # an int (torchvision, timm) or [H, W] (a kd_accel record)
    known_size = known_size if isinstance(known_size, list) else known_size and [known_size] * 2
    size = [image_size, image_size] if image_size else known_size or list(data_hw)
    return {"image_size": [int(v) for v in size], "mean": _per_channel(mean, channels, spec),
            "std": _per_channel(std, channels, spec), "interpolation": interpolation,
            "resize_size": scaled_resize(known and known["resize_size"], known_size, size),
            "source": source + (f", {size[0]}x{size[1]} from --image-size" if image_size else "")}


def scaled_resize(resize_size: int | None, known_size: Sequence[int] | None, size: Sequence[int]) -> int | None:
    """The evaluation resize (short side before the centre crop) for inputs of `size` [H, W]: the
    weights' resize_size scaled by size / their crop size known_size, so the crop keeps the
    share of the image it had (224 of 256 -> 28 of 32 for 32 px: resize 36), never the central
    32 px of a 256 px image. None where the weights say none."""
    if not resize_size or not known_size or list(size) == list(known_size):
        return resize_size or None
    return max(min(size), math.floor(min(size) * resize_size / min(known_size)))


# a crop that keeps less of the image than this share of its side, or an input this many times
# smaller (or larger) than the weights were trained at, is said in the log (mix_note)
CROP_SHARE, SIZE_FACTOR = 1 / 1.5, 2.0


def mix_note(spec: str, weights_path: Path | str | None, record: Mapping[str, Any]) -> str | None:
    """One line for the log when the preprocessing mixes what the weights expect with what a flag
    or the data chose so that the model sees something else than it was trained on: a centre crop
    keeping less than 2/3 of the image's side, or an input size far from the weights' own. None
    otherwise (also when nothing is known of the weights)."""
    h, w = record["image_size"]
    resize = record.get("resize_size")
    notes = []
    if resize and min(h, w) < CROP_SHARE * resize:
        notes.append(f"the evaluation view resizes to {resize} px and keeps the central {h}x{w}: "
                     f"{min(h, w) / resize:.0%} of the image's side")
    known, source = known_preprocessing(spec, weights_path)
    known_size = known and known["image_size"]
    known_size = known_size if isinstance(known_size, list) else known_size and [known_size] * 2
    if known_size and not 1 / SIZE_FACTOR <= min(h, w) / min(known_size) <= SIZE_FACTOR:
        notes.append(f"inputs of {h}x{w}, the weights ({source}) were trained on {known_size[0]}x{known_size[1]}: "
                     "expect them to do worse than at their own size unless fine-tuned")
    return f"preprocessing: {'; '.join(notes)}" if notes else None


def of_data(data_norm: Norm | None, data_hw: Sequence[int]) -> dict[str, Any]:
    """The record of a model that takes the data as they are (a checkpoint saved before records)."""
    mean, std = (None, None) if data_norm is None else (list(data_norm[0]), list(data_norm[1]))
    return {"image_size": list(data_hw), "mean": mean, "std": std, "interpolation": "bilinear", "resize_size": None,
            "source": "data"}


def describe(record: Mapping[str, Any]) -> str:
    """One canonical line of what shapes the input (not where it came from), for cache keys
    and stamps: "28x28 bilinear mean=None std=None"."""
    h, w = record["image_size"]
    def nums(v: Sequence[float] | None) -> str | None:
        return None if v is None else "[" + ",".join(f"{x:.6g}" for x in v) + "]"
    # the evaluation resize shapes an image folder's un-augmented view (the cache's, the test
    # set's): said where there is one (records without one read as before it was added)
    resize = f" resize={record['resize_size']}" if record.get("resize_size") else ""
    return f"{h}x{w} {record['interpolation']} mean={nums(record['mean'])} std={nums(record['std'])}{resize}"


def norm_of(record: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) for data.to_float, or None."""
    return None if record["mean"] is None else (tuple(record["mean"]), tuple(record["std"]))
