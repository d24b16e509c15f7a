"""Hugging Face datasets as a streamed data source: an image folder's pipeline over an Arrow table.

    --dataset hf --data-dir DIR     a DatasetDict saved with save_to_disk (datasets.load_from_disk)
    --dataset hf:NAME               datasets.load_dataset(NAME) from the Hugging Face cache
                                    (--data-dir: its cache_dir, as timm's hfds/; HF_DATASETS_OFFLINE=1:
                                    nothing is downloaded, the dataset must be cached already)

The splits: "train", and for evaluation "validation", else "test" (ImageNet-1k's "test" has no
labels: -1). The columns: the image column (an `Image` feature: "image" or "img", or
--image-column) and the label column (a `ClassLabel`, or integers: "label", "labels" or
"fine_label", or --label-column); the class names are the ClassLabel's (integers: "0".."C-1").

Row i of a split is sample i, the key of every index-keyed cache, as the i-th file of a folder
is. Everything after the bytes is the folder's (streamed.py): a DataLoader worker takes a batch
of rows from the memory-mapped table (the image column cast to Image(decode=False): the bytes as
stored), decodes each with decode.py (PIL's `convert` pixels, as for a folder's files: the same
PNG gives the same tensor), crops and resizes; RandomResizedCrop parameters replay from a K-view
cache exactly as a folder's do (HFSplit is a FolderSplit whose rows come from the table).

Identity: the dataset's own fingerprint (`Dataset._fingerprint`: load_from_disk reads it from the
saved state, load_dataset derives it from the cached build) and the split's row count, with the
columns read, the class list, the channels and the decoder's version, written out in words: a
changed dataset is refused by a cache, a checkpoint or a model naming its old and new
fingerprint and row count. Not seen: an Arrow file rewritten in place behind an unchanged
fingerprint (datasets itself would not see it either).

Bad rows stop the run with one line naming the split and row: a label outside the classes (or
missing) and a missing image at load time, an image that cannot be decoded in the worker that
meets it (errors.run_cli unwraps the worker's traceback); so do a missing split or column.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KDError, first_line
from .decode import DECODER_VERSION, _decode
from .streamed import FolderDataset, FolderSplit, View

DATASET = "hf"
PREFIX = "hf:"
INSTALL = "pip install 'kd_accel[hf]'"
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label")
# kd_accel's split -> the dataset's split names, the first present taken
SPLITS = {"train": ("train",), "test": ("validation", "test")}


def is_hf(dataset: str | None) -> bool:
    """Whether --dataset names a Hugging Face dataset: "hf" (save_to_disk) or "hf:NAME"."""
    return dataset == DATASET or (bool(dataset) and dataset.startswith(PREFIX) and len(dataset) > len(PREFIX))


def _library():
    try:
        import datasets
    except ImportError:
        raise KDError("Hugging Face datasets are read with the `datasets` library, which is not installed: "
                      f"{INSTALL}") from None
    return datasets


def _named(dataset):
    return dataset[len(PREFIX):]


def fetch(dataset: str, data_dir: str | Path | None = None) -> None:
    """Bring hf:NAME into the Hugging Face cache (datasets.load_dataset: downloaded unless
    offline, else read from the cache): on the main process first, so that the other
    processes find it there (data.ensure_downloaded). save_to_disk datasets need nothing."""
    if dataset != DATASET:
        _open(dataset, data_dir)


def _open(dataset, data_dir):
    """(DatasetDict, the words naming it) for --dataset/--data-dir; one line when it cannot be read."""
    library = _library()
    if dataset == DATASET:
        if not data_dir:
            raise KDError("--dataset hf needs --data-dir DIR (a DatasetDict saved with save_to_disk); a dataset in "
                          "the Hugging Face cache is --dataset hf:NAME")
        where = f"Hugging Face dataset {data_dir}"
        try:
            found = library.load_from_disk(str(data_dir))
        except Exception as e:  # noqa: BLE001 - not a saved dataset, damaged: datasets says why
            raise KDError(f"{where} cannot be read by datasets.load_from_disk: {first_line(e)}") from None
        if not isinstance(found, library.DatasetDict):
            raise KDError(f"{where} is one split (a Dataset), not a DatasetDict: save DatasetDict({{'train': ..., "
                          "'test': ...}}) (or 'validation')")
        return found, where
    name = _named(dataset)
    where = f"Hugging Face dataset {name}"
    try:
        found = library.load_dataset(name, cache_dir=str(data_dir) if data_dir else None)
    except Exception as e:  # noqa: BLE001 - not cached while offline, no such dataset, no network
        cache = data_dir or library.config.HF_DATASETS_CACHE
        raise KDError(f"{where} cannot be loaded: {first_line(e)} (kd_accel reads it with datasets.load_dataset from "
                      f"the Hugging Face cache {cache}; offline, HF_DATASETS_OFFLINE=1, it must be there already)"
                      ) from None
    if not isinstance(found, library.DatasetDict):
        raise KDError(f"{where}: datasets.load_dataset gave a {type(found).__name__}, not a DatasetDict of splits")
    return found, where


@dataclass(frozen=True, eq=False)
class HFRows:
    """One split's rows as the pipeline reads them (a folder's FolderIndex, for a table):
    `images` the dataset's image column alone, undecoded ({"bytes", "path"} per row; picklable:
    a memory-mapped table travels to the workers by its file names)."""

    where: str  # "Hugging Face dataset DIR"
    split: str  # the dataset's split name ("train", "validation", ...)
    images: Any  # datasets.Dataset
    column: str  # the image column
    label_column: str
    labels: np.ndarray  # [N] int64
    classes: tuple  # class names; label c is classes[c]
    fingerprint: str  # Dataset._fingerprint of the whole split
    total: int  # rows of the whole split (N, or more under --limit-*)

    def __len__(self):
        return len(self.labels)

    # what streamed.FolderDataset reads of a folder's index beside the labels: a table has no files
    @property
    def root(self) -> str:
        return self.where

    @property
    def paths(self) -> None:
        return None

    def head(self, n: int | None) -> HFRows:
        """The first n rows (--limit-train/--limit-test): indices stay 0..n-1."""
        if n is None or n >= len(self):
            return self
        return replace(self, images=self.images.select(range(n)), labels=self.labels[:n])

    def name(self, i: int) -> str:
        return f"in row {i} of split '{self.split}' of {self.where}"

    def cells(self, idx: list[int]) -> list[dict | None]:
        """The stored image of each row: {"bytes": bytes or None, "path": str or None}."""
        return self.images[idx][self.column]

    def image_bytes(self, i: int, cell: dict | None) -> bytes:
        """Row i's encoded image: its stored bytes, else the file its path names."""
        if cell is not None and cell.get("bytes") is not None:
            return cell["bytes"]
        if cell is None or not cell.get("path"):
            raise KDError(f"no image {self.name(i)} (neither bytes nor a path stored): fix or remove the row; a "
                          "skipped row would shift every sample after it")
        try:
            return Path(cell["path"]).read_bytes()
        except OSError as e:
            raise KDError(f"cannot read image file {cell['path']} (named {self.name(i)}): {e.strerror or e}") from None

    def identity(self) -> str:
        """The rows' identity in words (HFSplit.fingerprint): the dataset's fingerprint and row count."""
        rows = f"rows 0-{len(self) - 1} of {self.total}" if len(self) < self.total else f"{self.total} rows"
        classes = hashlib.sha256("\0".join(self.classes).encode()).hexdigest()[:8]
        return (f"split {self.split}: fingerprint {self.fingerprint}; {rows}; columns {self.column}/"
                f"{self.label_column}; {len(self.classes)} classes {classes}")


class HFDataset(FolderDataset):
    """A folder's worker-side dataset (crops, resize, flip, whatever else streamed.FolderDataset
    makes of a batch) reading rows of a table: each batch's cells are taken from the table at
    once, then decoded one by one."""

    @classmethod
    def reading(cls, rows: HFRows, folder: FolderDataset) -> HFDataset:
        """`folder` (the split's FolderDataset, made by FolderSplit.dataset_for with every setting
        it takes) reading the rows instead of files."""
        new = cls.__new__(cls)
        new.__dict__.update(folder.__dict__)
        new.rows, new.ledger, new._cells = rows, None, {}
        return new

    def __len__(self):
        return len(self.rows)

    def _path(self, i):
        return self.rows.name(i)

    def __getitems__(self, keys):
        idx = [int(k[1]) if isinstance(k, (tuple, list)) else int(k) for k in keys]
        self._cells = dict(zip(idx, self.rows.cells(idx)))  # one take from the table per batch
        try:
            return super().__getitems__(keys)
        finally:
            self._cells = {}

    def _read(self, i):
        """(image uint8 [C, H, W], 0): decoded as a folder's file is (decode.py); no digest: a
        dataset's identity is its fingerprint, not a ledger of each file's bytes."""
        cell = self._cells[i] if i in self._cells else self.rows.cells([i])[0]
        return _decode(self._path(i), self.channels, self.rows.image_bytes(i, cell)), 0


class HFSplit(FolderSplit):
    """One split of a Hugging Face dataset: an image folder's split (batches, crops, views,
    workers: streamed.FolderSplit) whose samples are the rows of a table."""

    dataset = DATASET

    def __init__(self, rows: HFRows, split: str, channels: int, view: View = View(),
                 workers: int | None = None) -> None:
        super().__init__(rows, split, channels, view, workers)

    def subset(self, n: int | None) -> HFSplit:
        return HFSplit(self.index.head(n), self.split, self.channels, self.view, self.workers)

    def at(self, prep: dict[str, Any]) -> HFSplit:
        new = copy.copy(self)
        new.view = super().at(prep).view  # the folder's reading of a preprocessing record
        return new

    def fingerprint(self) -> str:
        """The dataset's identity in words (its fingerprint, rows, columns, classes) and how it is
        read (channels, the decoder's version): what a cache, checkpoint or model stamps, so that a
        change is refused naming the fingerprints and row counts."""
        return f"{DATASET} {self.index.identity()}; channels {self.channels}; decoder {DECODER_VERSION}"

    def dataset_for(self, *args: Any, **kwargs: Any) -> HFDataset:
        """The folder's dataset for these crops (and what else FolderSplit.dataset_for takes), reading rows."""
        return HFDataset.reading(self.index, super().dataset_for(*args, **kwargs))

    # the folder's records of its files (listing, ledger) have no counterpart: the fingerprint says it all
    def remember(self, run_dir: Path | str) -> None:
        """Nothing to keep: the fingerprint names the dataset's state."""

    def use_records(self, run_dir: Path | str) -> None:
        """Nothing to check as rows are read: the dataset's fingerprint was checked."""

    def expect_content(self, soft: Any) -> None:
        """Nothing: a cache's data fingerprint names the dataset's."""

    def explain_change(self, run_dir: Path | str, old_fingerprint: str) -> str | None:
        return None  # the stamps' fingerprints say it, in words

    def identity_columns(self) -> dict[str, Any]:
        return {}

    def explain_identity(self, stored: dict[str, Any]) -> str | None:
        return None

    def check_options(self, channels: int | None, num_workers: int | None, train_subset: int | None) -> None:
        if train_subset:
            raise KDError("--train-subset is for the in-memory data sets; for a Hugging Face dataset, save the "
                          "labelled subset as a dataset of its own (Dataset.select)")

    def check_augment(self, spec: Any) -> None:
        if spec.name not in ("none", "rrc"):
            raise KDError(f"--augment {spec.name} is for the in-memory data sets; a Hugging Face dataset takes rrc "
                          "(RandomResizedCrop + flip) or none")


# --- the splits and their columns -------------------------------------------------------------------


def _split(found, split, where):
    names = SPLITS[split]
    for name in names:
        if name in found:
            return name
    raise KDError(f"{where} has no {' or '.join(repr(n) for n in names)} split (its splits: "
                  f"{', '.join(found) or 'none'}): kd_accel {'trains' if split == 'train' else 'evaluates'} on it")


def _column(table, given, candidates, kind, here):
    """The image or label column: `given` (--image-column / --label-column), else the first of
    `candidates` the split has; one line when it has none."""
    columns = list(table.column_names)
    if given:
        if given in columns:
            return given
        raise KDError(f"{here} has no column {given!r} (--{kind}-column; its columns: {', '.join(columns)})")
    for name in candidates:
        if name in columns:
            return name
    raise KDError(f"{here} has no {kind} column (looked for {', '.join(candidates)}; its columns: "
                  f"{', '.join(columns)}): name it with --{kind}-column")


def _first_null(column):
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _labels(table, column, here):
    """[N] int64 labels of a split, or one line naming the first row without one."""
    values = table.with_format("arrow")[column]
    if values.null_count:
        raise KDError(f"row {_first_null(values)} of {here} has no label (column {column!r})")
    return np.array(values.to_numpy(), dtype=np.int64)  # a copy: arrow's is read-only


def _classes(library, feature, column, labels, here):
    """The class names: a ClassLabel's names, or "0".."C-1" for integer labels (C = the largest + 1)."""
    if isinstance(feature, library.ClassLabel):
        return tuple(feature.names)
    if isinstance(feature, library.Value) and feature.dtype.startswith(("int", "uint")):
        return tuple(str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0))
    raise KDError(f"column {column!r} of {here} holds {feature}, not class labels (a ClassLabel or integers): name "
                  "the label column with --label-column")


def _check_range(labels, classes, here):
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(bad):
        value = int(labels[bad[0]])
        unlabeled = "; -1 is a row without a label" if value == -1 else ""
        raise KDError(f"row {int(bad[0])} of {here}: label {value} is outside the {len(classes)} classes (0 to "
                      f"{len(classes) - 1}){unlabeled}; {len(bad)} such rows")


def _rows(library, table, where, split, image, label, classes=None):
    """HFRows of one split: its columns found and checked (an Image column; class labels in range,
    each row with an image and a label). `classes`: the training split's, for the test split."""
    here = f"split '{split}' of {where}"
    image = _column(table, image, IMAGE_COLUMNS, "image", here)
    label = _column(table, label, LABEL_COLUMNS, "label", here)
    feature = table.features[image]
    if not isinstance(feature, library.Image):
        raise KDError(f"column {image!r} of {here} holds {feature}, not images (a datasets.Image feature): name the "
                      "image column with --image-column")
    stored = table.with_format("arrow")[image]
    if stored.null_count:
        raise KDError(f"no image in row {_first_null(stored)} of {here}: fix or remove the row; a skipped row would "
                      "shift every sample after it")
    labels = _labels(table, label, here)
    own = _classes(library, table.features[label], label, labels, here)
    if classes is not None and isinstance(table.features[label], library.ClassLabel) and own != classes:
        raise KDError(f"the class names of {here} differ from the training split's ({len(own)} vs {len(classes)} "
                      "classes): label c must mean the same class in both")
    classes = classes if classes is not None else own
    _check_range(labels, classes, here)
    images = table.select_columns([image]).cast_column(image, library.Image(decode=False))  # the bytes as stored
    return HFRows(where, split, images, image, label, labels, tuple(classes), table._fingerprint, len(table))


def load_hf(dataset: str, data_dir: str | Path | None = None, channels: int | None = 3, workers: int | None = None,
            image_column: str | None = None, label_column: str | None = None) -> tuple[HFSplit, HFSplit]:
    """(train, test) of a Hugging Face dataset (module docstring): the test split is
    "validation", else "test", labelled by the training split's classes; the columns are named,
    or found, on the training split and read from both."""
    library = _library()
    found, where = _open(dataset, data_dir)
    train_name, test_name = _split(found, "train", where), _split(found, "test", where)
    train = _rows(library, found[train_name], where, train_name, image_column, label_column)
    test = _rows(library, found[test_name], where, test_name, train.column, train.label_column, train.classes)
    channels = channels or 3  # RGB, as an image folder's
    return HFSplit(train, "train", channels, workers=workers), HFSplit(test, "test", channels, workers=workers)
