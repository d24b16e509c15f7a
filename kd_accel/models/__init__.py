"""Models, in two kinds:

- notebook.py: the notebook's own teacher and student, defined here, saved as safetensors with
  their architecture and input shape in the metadata;
- zoo.py: torchvision and timm architectures built by name ("torchvision:resnet18",
  "timm:resnet10t"), with pretrained weights read from a local file.

Everything the rest of the package imports from `kd_accel.models` is re-exported here.
"""
from .notebook import (DEFAULT_INPUT_SHAPE, MIN_IMAGE_SIDE, MODELS, Student, Teacher, build_model, check_input_shape,
                       conv_bn_relu, conv_bn_relu_pool, count_params, load_model, meta_input_shape, meta_number,
                       read_checkpoint, save_model, state_fingerprint)
from .zoo import arch_spec, build_from_spec, build_zoo_model, list_models, load_weights, parse_arch, preprocessing

__all__ = ["DEFAULT_INPUT_SHAPE", "MIN_IMAGE_SIDE", "MODELS", "Student", "Teacher", "build_model", "check_input_shape",
           "conv_bn_relu", "conv_bn_relu_pool", "count_params", "load_model", "meta_input_shape", "meta_number",
           "read_checkpoint", "save_model", "state_fingerprint",
           "arch_spec", "build_from_spec", "build_zoo_model", "list_models", "load_weights", "parse_arch",
           "preprocessing"]
