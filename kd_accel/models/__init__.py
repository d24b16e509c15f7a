"""Models, in three kinds, and their files:

- notebook.py: the notebook's own teacher and student, defined here;
- zoo.py: torchvision and timm architectures built by name ("torchvision:resnet18",
  "timm:resnet10t", and the notebook's as "notebook:teacher"), with pretrained weights read
  from a local file;
- user.py: one's own model code, "module.path:callable" or "path/to/file.py:callable", with
  keyword arguments (--arch-kwargs), recorded with its source's digest;
- preprocessing.py: the input size and normalisation each model expects;
- files.py: safetensors files that say what model they hold (load_model rebuilds it).

Everything the rest of the package imports from `kd_accel.models` is re-exported here.
"""
from .files import (count_params, load_model, meta_input_shape, meta_number, meta_record, meta_role, read_checkpoint,
                    save_model, state_fingerprint)
from .notebook import (DEFAULT_INPUT_SHAPE, MIN_IMAGE_SIDE, MODELS, Student, Teacher, build_model, check_input_shape,
                       conv_bn_relu, conv_bn_relu_pool)
from .preprocessing import preprocessing
from .zoo import (arch_identity, arch_spec, build_from_spec, build_zoo_model, check_arch, list_models, load_weights,
                  parse_arch)

__all__ = ["DEFAULT_INPUT_SHAPE", "MIN_IMAGE_SIDE", "MODELS", "Student", "Teacher", "build_model", "check_input_shape",
           "conv_bn_relu", "conv_bn_relu_pool", "count_params", "load_model", "meta_input_shape", "meta_number",
           "meta_record", "meta_role", "read_checkpoint", "save_model", "state_fingerprint",
           "arch_identity", "arch_spec", "build_from_spec", "check_arch", "build_zoo_model", "list_models",
           "load_weights", "parse_arch", "preprocessing"]
