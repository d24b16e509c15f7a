"""The notebook's teacher and student, exactly, in a small registry.

Models know nothing of devices, DDP or precision: Accelerate handles those. Weights are stored
as safetensors with the architecture name in the metadata, so a checkpoint says what it is.
"""
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import KDError
from .hashing import tensor_digest
from .io import atomic_path


def conv_bn_relu(cin, cout, k):
    # "same" padding: 5x5 -> pad 2, 3x3 -> pad 1, so only the pools shrink the map
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def conv_bn_relu_pool(cin, cout, k):
    """The notebook's conv -> BN -> ReLU -> 2x2 max-pool, computed as conv -> BN -> pool -> ReLU.

    The same function and the same gradients, bit for bit: ReLU is monotonic, so
    max(relu(a), relu(b), ...) == relu(max(a, b, ...)), and the gradient reaches the same element
    (or is zero in both orders); tests/test_models.py trains both orders and compares weights.
    The ReLU then runs, forward and backward, on a quarter of the elements: measured 12-16% off a
    student step on a 2-core AMD EPYC (docs/performance.md). Conv and BN keep indices 0 and 1,
    so state-dict keys are unchanged."""
    conv, bn, relu = conv_bn_relu(cin, cout, k)
    return [conv, bn, nn.MaxPool2d(2), relu]


class Teacher(nn.Module):
    """x [B,1,28,28] -> conv5 16 -> conv3 16 -> pool [B,16,14,14] -> conv3 32 -> pool [B,32,7,7]
    -> fc 1568->300 -> fc 300->C. 481,214 parameters for C=10."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.block1 = nn.Sequential(*conv_bn_relu(in_channels, 16, 5))
        self.block2 = nn.Sequential(*conv_bn_relu_pool(16, 16, 3))  # [B,16,14,14]
        self.block3 = nn.Sequential(*conv_bn_relu_pool(16, 32, 3))  # [B,32,7,7]
        # the notebook has no activation between the two linear layers; kept as is
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 300), nn.Linear(300, num_classes))

    def forward(self, x):
        return self.head(self.block3(self.block2(self.block1(x))))


class Student(nn.Module):
    """x [B,1,28,28] -> conv3 16 -> pool [B,16,14,14] -> fc 3136->C. 31,562 parameters for C=10."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(*conv_bn_relu_pool(in_channels, 16, 3))  # [B,16,14,14]
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 14 * 14, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


MODELS = {"teacher": Teacher, "student": Student}


def build_model(arch, num_classes=10):
    if arch not in MODELS:
        raise KDError(f"unknown architecture {arch!r}; choose from {', '.join(MODELS)}")
    return MODELS[arch](num_classes=num_classes)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def state_fingerprint(state_dict):
    """sha256 over names, shapes, dtypes and values of every tensor (BN buffers included,
    since they change the teacher's eval outputs)."""
    parts = []
    for name in sorted(state_dict):
        t = state_dict[name]
        parts += [f"{name}:{tuple(t.shape)}:{t.dtype}", t]
    return tensor_digest(*parts)


def save_model(model, path, arch, num_classes, **meta):
    """Atomic safetensors checkpoint; metadata values become strings."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"arch": arch, "num_classes": str(num_classes), **{k: str(v) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def read_checkpoint(path):
    """(state_dict, metadata) from a safetensors checkpoint, with one-line errors."""
    from safetensors import safe_open

    if Path(path).is_dir():
        raise KDError(f"checkpoint {path} is a directory, not a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(str(path))
    except FileNotFoundError:
        raise KDError(f"checkpoint not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise KDError(f"cannot read checkpoint {path} (truncated or not safetensors?): {e}") from None
    return state, metadata


def meta_number(meta, key, path, kind=float):
    """A checkpoint's metadata value `key` as `kind` (metadata are strings), or one line saying
    which file and key hold something else."""
    if key not in meta:
        raise KDError(f"{path}: metadata has no {key}")
    try:
        return kind(meta[key])
    except (TypeError, ValueError):
        raise KDError(f"{path}: metadata {key}={meta[key]!r} is not {'an integer' if kind is int else 'a number'}") from None


def _mismatch(state, expected):
    """The first difference between a checkpoint's tensors and a model's, in words (or None)."""
    def names(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    parts = ([f"missing {names(missing)}"] if missing else []) + ([f"unexpected {names(unexpected)}"] if unexpected else [])
    if parts:
        return "; ".join(parts)
    for name, want in expected.items():
        if state[name].shape != want.shape:
            return f"tensor {name} is {list(state[name].shape)} in the checkpoint, {list(want.shape)} in the model"
    return None


def load_model(path, expect_arch=None):
    """Build the model named in the checkpoint and load its weights. Returns (model, metadata)."""
    state, meta = read_checkpoint(path)
    arch = meta.get("arch")
    if expect_arch and arch != expect_arch:
        raise KDError(f"{path} holds a {arch!r} model, expected {expect_arch!r}")
    num_classes = meta_number(meta, "num_classes", path, int) if "num_classes" in meta else 10
    if num_classes < 1:
        raise KDError(f"{path}: metadata num_classes={num_classes} must be >= 1")
    model = build_model(arch, num_classes)
    problem = _mismatch(state, model.state_dict())
    if problem:
        raise KDError(f"{path}: weights do not fit {arch!r} with {num_classes} classes: {problem}")
    model.load_state_dict(state)
    return model, meta
