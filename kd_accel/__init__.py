"""kd_accel: knowledge distillation with cached teacher logits, on PyTorch + Accelerate."""
__version__ = "0.1.0"


def load_model(path):
    """The model a kd_accel file holds (teacher.safetensors, student.safetensors, ...), rebuilt
    from its metadata with its weights, in eval mode. `model.preprocessing` says what input it
    expects: {"image_size": [H, W], "mean", "std" (None: pixels in [0, 1]), "interpolation"}."""
    from .models.files import load_model as load, meta_record

    model, meta = load(path)
    model.preprocessing = meta_record(meta, path)["preprocessing"]
    return model.eval()
