"""Data sources, and batches by index.

- memory.py: data sets held as one uint8 tensor (MNIST, Fashion-MNIST, CIFAR-10), read from
  their files; Split is what the training loop gets of them.
- loading.py: for every source, batches gathered by sample index in a seeded epoch order, and
  uint8 images to the model's float input.
- streamed.py: image folders (torchvision's ImageFolder layout), decoded batch by batch in
  DataLoader workers; folder.py lists and fingerprints them from `stat` alone; crops.py draws
  RandomResizedCrop + flip parameters that replay.
- hf.py: Hugging Face datasets (--dataset hf, hf:NAME): a folder's pipeline over the rows of an
  Arrow table (hf.HFSplit is a FolderSplit).

Both kinds of split implement one annotated interface, source.DataSource (a typing.Protocol):
len, labels, num_classes, input_shape, norm, fingerprint(); at(preprocessing) (the split decoded
for one model); train_data(views, extra) (what training.fit reads: batches carrying "images",
"labels", "idx", and the views' parameters or columns; `views` a source.ViewPlan made above the
data layer); inference_loader (evaluation, precompute); the checks of settings and
augmentations; the records a run folder keeps of them. Nothing outside this package asks which
kind it holds; the data layer imports neither augment nor the cache.

Everything the rest of the package imports from `kd_accel.data` is re-exported here.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import KDError
from .loading import EpochPermutation, IndexedTensors, TensorData, balanced_subset, epoch_seed, make_loader, to_float
from .memory import (DATA_DIR_ENV, DATASETS, DEFAULT_DATA_DIR, DatasetSpec, Split, ensure_downloaded as _download,
                     get_spec, load_split, raw_dir, resolve_data_dir)
from .memory import data_files as _memory_files
from .source import CropPlan, DataSource, TrainData, ViewPlan
from .streamed import DATASET as FOLDER_DATASET, FolderSplit, load_folder
from .hf import DATASET as HF_DATASET, PREFIX as HF_PREFIX, HFSplit, is_hf, load_hf
from .hf import fetch as _hf_fetch


class DatasetNames(tuple):
    """The --dataset choices, sorted: every name listed, and any "hf:NAME" (a Hugging Face dataset
    by name, which no list holds)."""

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and is_hf(name))


# every data set kd_accel reads: the in-memory ones by name, image folders, Hugging Face datasets
NAMES = DatasetNames(sorted((*DATASETS, FOLDER_DATASET, HF_DATASET, f"{HF_PREFIX}NAME")))


def reads_in_workers(dataset: str) -> bool:
    """Whether `dataset` is decoded in DataLoader workers as batches are drawn (an image folder),
    rather than held in memory: such a run shares the CPU's cores with its workers, and keeps
    malloc's defaults (docs/performance.md: a kept heap grew with a folder epoch's length)."""
    return dataset == FOLDER_DATASET or is_hf(dataset)


def data_files(dataset: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files (or the folder) a data set is read from: the inputs no output may replace."""
    if reads_in_workers(dataset):
        return [Path(data_dir)] if data_dir else []  # the folder: nothing is written inside it
    return _memory_files(dataset, data_dir)


def ensure_downloaded(dataset: str, data_dir: str | Path | None = None,
                      allow_download: bool = True) -> str | Path | None:
    """Make sure an in-memory data set's files exist (torchvision downloads them only into the
    default ./data); an image folder has nothing to download (load_folder says what is missing)."""
    if is_hf(dataset):
        _hf_fetch(dataset, data_dir)  # hf:NAME into the Hugging Face cache (main process first)
    if reads_in_workers(dataset):
        return data_dir
    return _download(dataset, data_dir, allow_download)


def open_split(dataset: str, split: str, data_dir: str | Path | None = None, channels: int | None = None,
               workers: int | None = None, classes: tuple[str, ...] | None = None,
               columns: tuple[str | None, str | None] = (None, None)) -> DataSource:
    """One split ("train" or "test") of a data set: an in-memory Split (its files read whole),
    or, for "imagefolder", a FolderSplit (DIR/train or DIR/val listed; images decoded as batches
    are drawn; `classes`: the training split's, to label DIR/val by: load_folder), or for a
    Hugging Face dataset an HFSplit (`columns`: --image-column, --label-column: load_hf)."""
    if is_hf(dataset):
        return load_hf(dataset, data_dir, channels, workers, *columns)[split == "test"]
    if any(columns):
        raise KDError(f"--image-column and --label-column are for Hugging Face datasets (--dataset hf); {dataset} "
                      "has no columns to choose")
    if reads_in_workers(dataset):
        return load_folder(data_dir, split, channels, workers, classes)
    return load_split(dataset, split, data_dir)


def open_splits(dataset: str, data_dir: str | Path | None = None, channels: int | None = None,
                workers: int | None = None,
                columns: tuple[str | None, str | None] = (None, None)) -> tuple[DataSource, DataSource]:
    """(train, test) of a data set. An image folder's test split is labelled by the training
    split's class list (a class it lacks keeps its index; one training lacks is refused); so is
    a Hugging Face dataset's (its class names must be the training split's)."""
    if is_hf(dataset):
        return load_hf(dataset, data_dir, channels, workers, *columns)  # the dataset opened once for both
    train = open_split(dataset, "train", data_dir, channels, workers, columns=columns)
    classes = train.index.classes if isinstance(train, FolderSplit) else None
    return train, open_split(dataset, "test", data_dir, channels, workers, classes, columns)


__all__ = ["EpochPermutation", "IndexedTensors", "TensorData", "balanced_subset", "epoch_seed", "make_loader", "to_float",
           "DATA_DIR_ENV", "DATASETS", "DEFAULT_DATA_DIR", "DatasetSpec", "Split", "data_files", "ensure_downloaded",
           "get_spec", "load_split", "raw_dir", "resolve_data_dir", "FOLDER_DATASET", "FolderSplit", "load_folder",
           "open_split", "open_splits", "NAMES", "reads_in_workers", "CropPlan", "DataSource", "TrainData",
           "ViewPlan", "HF_DATASET", "HFSplit", "is_hf", "load_hf"]
