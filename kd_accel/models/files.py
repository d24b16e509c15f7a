"""Model files: safetensors weights whose metadata say what the model is, so that one call
rebuilds it (load_model) with no flags.

Metadata (strings): "role" (teacher or student), "arch" (the spec, "torchvision:resnet18"),
"arch_spec" (JSON: spec, num_classes, in_chans, input_shape, preprocessing: models/zoo.arch_spec;
with --arch-kwargs their "kwargs", keys sorted; for model code also "code": the source file's
absolute path and sha256, models/user.py), "num_classes", "input_shape" ("C,H,W": the model's
input), and whatever the run adds (accuracy, stamps). Files written before "arch_spec" existed
hold the notebook's models: their "arch" was the role, and they take the data as they are.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import KDError
from ..hashing import tensor_digest
from ..io import atomic_path
from ..validate import check_finite, file_kind, reads_tensors
from . import notebook
from .notebook import DEFAULT_INPUT_SHAPE, _mismatch, check_input_shape
from .zoo import arch_spec, build_from_spec, drop_aux_heads

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import torch
    from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and values of every tensor (BN buffers included,
    since they change the teacher's eval outputs)."""
    parts = []
    for name in sorted(state_dict):
        t = state_dict[name]
        parts += [f"{name}:{tuple(t.shape)}:{t.dtype}", t]
    return tensor_digest(*parts)


def save_model(model: nn.Module, path: Path | str, role: str, num_classes: int,
               input_shape: Sequence[int] | None = None, record: dict[str, Any] | None = None, **meta: object) -> None:
    """Atomic safetensors checkpoint of `model` as `role` (teacher or student); metadata values
    become strings. `record` (zoo.arch_spec) says what the model is; without one the model is
    the notebook's `role`, for input_shape (C, H, W), by default the model's own."""
    if record is None:
        shape = input_shape or getattr(model, "input_shape", None)
        if shape is None:
            raise KDError(f"cannot save {path}: a {type(model).__name__} does not say its input shape; pass input_shape")
        if role not in notebook.MODELS:
            raise KDError(f"cannot save {path}: a {type(model).__name__} as {role!r} needs its record (models.arch_spec)")
        record = arch_spec(f"notebook:{role}", num_classes, shape)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"role": role, "arch": record["spec"], "arch_spec": json.dumps(record),
                "num_classes": str(record["num_classes"]), "input_shape": ",".join(map(str, record["input_shape"])),
                **{k: str(v) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


WEIGHTS_HINT = "a weights file is given as --weights / --teacher-weights, with its architecture's --arch"


@reads_tensors("kd_accel model file")
def read_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) from a kd_accel model file (safetensors), with one-line errors;
    every tensor finite (parameters and buffers)."""
    from safetensors import safe_open

    if Path(path).is_dir():
        raise KDError(f"checkpoint {path} is a directory, not a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        if "format_version" in metadata and "views" in metadata:  # what cache.save_cache stamps; not read whole
            raise KDError(f"{path} is a kd_accel teacher-logits cache, not a model (a cache is read by --logits)")
        state = load_file(str(path))
    except FileNotFoundError:
        raise KDError(f"checkpoint not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        kind = file_kind(path)
        if kind and ("PyTorch" in kind or "pickle" in kind):  # weights, not a model file
            raise KDError(f"cannot read checkpoint {path}: it is {kind}, not a kd_accel model file (safetensors); "
                          f"{WEIGHTS_HINT}") from None
        raise KDError(f"cannot read checkpoint {path} (truncated or not safetensors?): {e}") from None
    check_finite(state, path)
    return state, metadata


def meta_number(meta: Mapping[str, str], key: str, path: Path | str, kind: Callable[[str], float] = float) -> float:
    """A checkpoint's metadata value `key` as `kind` (metadata are strings), or one line saying
    which file and key hold something else."""
    if key not in meta:
        raise KDError(f"{path}: metadata has no {key}")
    try:
        return kind(meta[key])
    except (TypeError, ValueError):
        raise KDError(f"{path}: metadata {key}={meta[key]!r} is not {'an integer' if kind is int else 'a number'}") from None


def meta_input_shape(meta: Mapping[str, str], path: Path | str) -> tuple[int, int, int]:
    """(C, H, W) a checkpoint was built for: its "input_shape" metadata "C,H,W"; files saved
    before the key existed are MNIST models, 1x28x28."""
    if "input_shape" not in meta:
        return DEFAULT_INPUT_SHAPE
    parts = meta["input_shape"].split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise KDError(f"{path}: metadata input_shape={meta['input_shape']!r} is not C,H,W "
                      "(three integers, e.g. 3,32,32)")
    return check_input_shape(parts, f"{path}: metadata input_shape")


def meta_role(meta: Mapping[str, str]) -> str | None:
    """teacher or student (files before "role" said it as "arch")."""
    return meta.get("role", meta.get("arch"))


def meta_record(meta: Mapping[str, str], path: Path | str) -> dict[str, Any]:
    """The architecture record (zoo.arch_spec) of a checkpoint; built from the notebook's role
    and input shape for files written before records."""
    if "arch_spec" in meta:
        try:
            return json.loads(meta["arch_spec"])
        except ValueError:
            raise KDError(f"{path}: metadata arch_spec is not JSON") from None
    role = meta.get("arch")
    if role is None:
        raise KDError(f"{path} is a safetensors file without kd_accel's model metadata (plain weights?); "
                      f"{WEIGHTS_HINT}")
    if role not in notebook.MODELS:
        raise KDError(f"{path}: metadata names no architecture kd_accel knows ({role!r})")
    num_classes = meta_number(meta, "num_classes", path, int) if "num_classes" in meta else 10
    if num_classes < 1:
        raise KDError(f"{path}: metadata num_classes={num_classes} must be >= 1")
    return arch_spec(f"notebook:{role}", num_classes, meta_input_shape(meta, path))


def _shape_words(shape):
    return "x".join(map(str, shape))


def load_model(path: Path | str, expect_arch: str | None = None,
               expect_input_shape: Sequence[int] | None = None) -> tuple[nn.Module, dict[str, str]]:
    """Build the model the checkpoint describes and load its weights (strictly). Returns
    (model, metadata). expect_arch: the role (teacher, student) it must hold; expect_input_shape
    (C, H, W), e.g. the data's Split.input_shape: a model for other channels (or, for a model
    without a preprocessing record, another shape) is refused in one line."""
    state, meta = read_checkpoint(path)
    role = meta_role(meta)
    if expect_arch and role != expect_arch:
        raise KDError(f"{path} holds a {role!r} model, expected {expect_arch!r}")
    record = meta_record(meta, path)
    shape = tuple(record["input_shape"])
    if expect_input_shape is not None:
        want = tuple(expect_input_shape)
        if (want[0] != shape[0]) if record.get("preprocessing") else (want != shape):
            raise KDError(f"{path} holds a {role or 'model'} for {_shape_words(shape)} inputs, the data are {_shape_words(want)}")
    try:
        model, _ = build_from_spec(record)
    except KDError as e:
        raise KDError(f"{path}: metadata arch_spec: {e}") from None
    drop_aux_heads(state, model.state_dict())  # a file saved when inception_v3/googlenet were built with them
    problem = _mismatch(state, model.state_dict())
    if problem:
        raise KDError(f"{path}: weights do not fit {record['spec']!r} with {record['num_classes']} classes: {problem}")
    model.load_state_dict(state)
    return model, meta
