"""Data sources, and batches by index.

- memory.py: data sets held as one uint8 tensor (MNIST, Fashion-MNIST, CIFAR-10), read from
  their files; Split is what the training loop gets of them.
- loading.py: for every source, batches gathered by sample index in a seeded epoch order, and
  uint8 images to the model's float input.
- folder.py: image folders (torchvision's ImageFolder layout) listed and fingerprinted from
  `stat` alone; crops.py: RandomResizedCrop + flip parameters that replay (issue 19 groundwork:
  not yet a data source the pipeline reads).

Everything the rest of the package imports from `kd_accel.data` is re-exported here.
"""
from .loading import EpochPermutation, IndexedTensors, balanced_subset, epoch_seed, make_loader, to_float
from .memory import (DATA_DIR_ENV, DATASETS, DEFAULT_DATA_DIR, DatasetSpec, Split, data_files, ensure_downloaded,
                     get_spec, load_split, raw_dir, resolve_data_dir)

__all__ = ["EpochPermutation", "IndexedTensors", "balanced_subset", "epoch_seed", "make_loader", "to_float",
           "DATA_DIR_ENV", "DATASETS", "DEFAULT_DATA_DIR", "DatasetSpec", "Split", "data_files", "ensure_downloaded",
           "get_spec", "load_split", "raw_dir", "resolve_data_dir"]
