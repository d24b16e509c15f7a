"""kd_accel: knowledge distillation with cached teacher logits, on PyTorch + Accelerate."""
__version__ = "0.1.0"
