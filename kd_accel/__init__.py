"""kd_accel: knowledge distillation with cached teacher logits, on PyTorch + Accelerate."""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn


def load_model(path: Path | str) -> nn.Module:
    """The model a kd_accel file holds (teacher.safetensors, student.safetensors, ...), rebuilt
    from its metadata with its weights, in eval mode. `model.preprocessing` says what input it
    expects: {"image_size": [H, W], "mean", "std" (None: pixels in [0, 1]), "interpolation"}."""
    from .models.files import load_model as load, meta_record

    model, meta = load(path)
    model.preprocessing = meta_record(meta, path)["preprocessing"]
    return model.eval()
