"""The teacher's and the student's models, as their recipes name them (config.Recipe: arch,
weights, image_size, normalize), built for the data: the architecture, its starting weights,
its preprocessing, and the input function that turns a batch into what that model sees.

A teacher and a student may expect different inputs (a pretrained ResNet at 224 px with
ImageNet's mean/std, the notebook's student at 28 px): each sees its own version of the same
view, the view's crop made at the data's resolution, then resized and normalised for the model.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .augment import make_inputs
from .errors import KDError
from .models import arch_identity, arch_spec, build_from_spec, load_weights, meta_record, parse_arch
from .models.preprocessing import describe, mix_note, norm_of, of_data, resolve
from .models.user import canonical_kwargs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    import torch
    from torch import nn

    from .augment import AugmentSpec
    from .config import Recipe
    from .data import DataSource


@dataclass(frozen=True)
class TeacherId:
    """What the soft targets depend on beyond the data: the teacher's weights (state
    fingerprint) and the input it sees (preprocessing.describe). Stamped on caches and students."""

    weights: str
    input: str

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> TeacherId:
        """From the teacher's info (pipeline.resolve_teacher: "fingerprint", "input")."""
        return cls(info["fingerprint"], info["input"])


def recipe_preprocessing(recipe: Recipe, train: DataSource) -> dict[str, Any]:
    """The preprocessing record of the model `recipe` names, for the data `train`."""
    c, h, w = train.input_shape
    return resolve(recipe.arch, recipe.weights, recipe.image_size, recipe.normalize, train.norm, (h, w), c)


def recipe_record(recipe: Recipe, train: DataSource) -> dict[str, Any]:
    """zoo.arch_spec's record of the model `recipe` names for `train`: spec, classes, the model's
    input shape (the data's channels at the preprocessing's size) and the preprocessing."""
    prep = recipe_preprocessing(recipe, train)
    return arch_spec(recipe.arch, train.num_classes, (train.input_shape[0], *prep["image_size"]), prep,
                     recipe.arch_kwargs)


def build(recipe: Recipe, train: DataSource, role: str,
          log: Callable[..., None] = print) -> tuple[nn.Module, dict[str, Any]]:
    """(model, record): a fresh model as `recipe` names it, with its --weights loaded. What was
    adapted (first convolution, classifier re-initialised) is said once in the log."""
    record = recipe_record(recipe, train)
    model, notes = build_from_spec(record)
    if recipe.weights:
        notes = notes + load_weights(model, recipe.weights)
        notes.append(f"weights from {recipe.weights}")
    notes += [n for n in [mix_note(recipe.arch, recipe.weights, record["preprocessing"])] if n]
    for note in notes:
        log(f"{role}: {note}")
    return model, record


def file_preprocessing(meta: Mapping[str, str], path: Path | str, train: DataSource) -> dict[str, Any]:
    """The preprocessing a model file records; a file written before records takes the data as
    they are."""
    prep = meta_record(meta, path).get("preprocessing")
    return prep or of_data(train.norm, train.input_shape[1:])


def inputs_for(aug_spec: AugmentSpec, prep: Mapping[str, Any]) -> Callable[[dict], torch.Tensor]:
    """batch -> this model's float input: the batch's view (aug_spec, from its "aug_params"),
    resized to the model's size and normalised its way."""
    return make_inputs(aug_spec, norm_of(prep), tuple(prep["image_size"]), prep["interpolation"])


def check_fitnets(student_arch: str | None, teacher_arch: str | None) -> None:
    """FitNets' hints regress the notebook student's conv features onto the notebook teacher's
    block 2 (kd_accel/hints.py): other architectures are refused in one line."""
    for role, spec in (("student", student_arch), ("teacher", teacher_arch)):
        if spec is not None and parse_arch(spec) != ("notebook", role):
            raise KDError(f"FitNets hints are defined for the notebook's models only (notebook:student from "
                          f"notebook:teacher), not a {role} {spec}; use a KD loss (hinton) for other architectures")


_DIGESTS = {}


def weights_digest(path: Path | str) -> str:
    """sha256 of a weights file's bytes (first 32 hex digits), what --weights are stamped by:
    kept per (path, size, mtime) so a run reads the file once."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:32]
    return _DIGESTS[key]


def resolved_recipe(recipe: Recipe, train: DataSource) -> dict[str, Any]:
    """A recipe's model settings as used: the spec as parsed (model code with its source's
    digest: changed code is a changed arch), its kwargs canonical, the weights by content, the
    preprocessing resolved (so naming a default, or a file by another path, is no change)."""
    record = recipe_record(recipe, train)
    prep = record["preprocessing"]
    return {"arch": arch_identity(record), "arch_kwargs": canonical_kwargs(record.get("kwargs")),
            "weights": recipe.weights and weights_digest(recipe.weights),
            "image_size": prep["image_size"], "normalize": describe(prep)}
