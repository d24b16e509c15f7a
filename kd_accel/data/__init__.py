"""Data sources, and batches by index.

- memory.py: data sets held as one uint8 tensor (MNIST, Fashion-MNIST, CIFAR-10), read from
  their files; Split is what the training loop gets of them.
- loading.py: for every source, batches gathered by sample index in a seeded epoch order, and
  uint8 images to the model's float input.
- streamed.py: image folders (torchvision's ImageFolder layout), decoded batch by batch in
  DataLoader workers; folder.py lists and fingerprints them from `stat` alone; crops.py draws
  RandomResizedCrop + flip parameters that replay.

Both kinds of split offer the pipeline one interface: len, labels, num_classes, input_shape,
norm, fingerprint(); at(preprocessing) (the split decoded for one model); train_data(views,
extra) (what training.fit reads: batches carrying "images", "labels", "idx", and the view's
parameters or columns); inference_loader (evaluation, precompute); check_augment.

Everything the rest of the package imports from `kd_accel.data` is re-exported here.
"""
from .loading import EpochPermutation, IndexedTensors, TensorData, balanced_subset, epoch_seed, make_loader, to_float
from .memory import (DATA_DIR_ENV, DATASETS, DEFAULT_DATA_DIR, DatasetSpec, Split, data_files, ensure_downloaded,
                     get_spec, load_split, raw_dir, resolve_data_dir)
from .streamed import DATASET as FOLDER_DATASET, FolderSplit, load_folder


def open_split(dataset, split, data_dir=None, channels=None, workers=None, classes=None):
    """One split ("train" or "test") of a data set: an in-memory Split (its files read whole),
    or, for "imagefolder", a FolderSplit (DIR/train or DIR/val listed; images decoded as batches
    are drawn; `classes`: the training split's, to label DIR/val by: load_folder)."""
    if dataset == FOLDER_DATASET:
        return load_folder(data_dir, split, channels, workers, classes)
    return load_split(dataset, split, data_dir)


def open_splits(dataset, data_dir=None, channels=None, workers=None):
    """(train, test) of a data set. An image folder's test split is labelled by the training
    split's class list (a class it lacks keeps its index; one training lacks is refused)."""
    train = open_split(dataset, "train", data_dir, channels, workers)
    classes = train.index.classes if isinstance(train, FolderSplit) else None
    return train, open_split(dataset, "test", data_dir, channels, workers, classes)


__all__ = ["EpochPermutation", "IndexedTensors", "TensorData", "balanced_subset", "epoch_seed", "make_loader", "to_float",
           "DATA_DIR_ENV", "DATASETS", "DEFAULT_DATA_DIR", "DatasetSpec", "Split", "data_files", "ensure_downloaded",
           "get_spec", "load_split", "raw_dir", "resolve_data_dir", "FOLDER_DATASET", "FolderSplit", "load_folder",
           "open_split", "open_splits"]
