"""Data sets as in-memory tensors, batched by index.

MNIST-sized sets are a few tens of MB, so (as in airbench) they live as one uint8 tensor and a
batch is `images[idx]`: no PIL, no ToTensor, no per-sample Python work in the training loop.
Every batch carries the dataset indices of its samples, so anything keyed by sample index (the
teacher-logits cache) is looked up by index, never by batch position.
"""
import gzip
import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import KDError
from .hashing import tensor_digest

DATA_DIR_ENV = "KD_ACCEL_DATA_DIR"
DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's IDX files live under the data dir, and what they hold."""

    name: str
    folder: str  # torchvision's layout: <data_dir>/<folder>/raw/<file>
    files: dict  # split -> (images file, labels file)
    num_classes: int
    torchvision_class: str  # for the optional download
    system_dirs: tuple = ()  # where a distribution package puts the files (flat layout)
    image_size: tuple = (28, 28)  # (H, W) every image file of the set must have


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# New data sets register here; CIFAR-10 (3x32x32, pickled batches) would add its own reader.
DATASETS = {
    "mnist": DatasetSpec("mnist", "MNIST", _IDX_FILES, 10, "MNIST"),
    # Debian's dataset-fashion-mnist installs the gzipped files flat in this folder
    "fashion-mnist": DatasetSpec("fashion-mnist", "FashionMNIST", _IDX_FILES, 10, "FashionMNIST",
                                 ("/usr/share/datasets/fashion-mnist",)),
}


@dataclass
class Split:
    """One split of a data set held as tensors.

    images: uint8 [N, C, H, W]; labels: int64 [N]. Row i is dataset sample i."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self):
        return len(self.labels)

    def subset(self, n):
        """The first n samples (for smoke tests); indices stay 0..n-1."""
        if n is None or n >= len(self):
            return self
        return Split(self.dataset, self.split, self.images[:n], self.labels[:n], self.num_classes)

    def fingerprint(self):
        """sha256 of the pixels and labels: any change to the data changes it."""
        return tensor_digest(f"{self.dataset}/{self.split}/{tuple(self.images.shape)}", self.images, self.labels)


def resolve_data_dir(data_dir=None):
    """--data-dir beats $KD_ACCEL_DATA_DIR beats ./data. Returns (path, explicitly_given)."""
    if data_dir:
        return Path(data_dir), True
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]), True
    return Path(DEFAULT_DATA_DIR), False


def _find(raw, fname):
    for cand in (raw / fname, raw / (fname + ".gz")):
        if cand.is_file():
            return cand
    return None


def _read_idx(path):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        body = data[4 + 4 * ndim :]
        if len(body) != math.prod(shape):
            raise ValueError(f"expected {shape} bytes of data, found {len(body)}")
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise KDError(f"cannot read IDX file {path}: {e}") from None
    if not body:  # frombuffer refuses an empty buffer
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _missing_in(raw, spec):
    return [raw / f for pair in spec.files.values() for f in pair if _find(raw, f) is None]


def raw_dir(spec, data_dir):
    """The folder holding the IDX files: <data_dir>/<folder>/raw (torchvision's layout), else
    <data_dir> itself (flat), else a system folder (Debian's package). None if none is complete."""
    for cand in (data_dir / spec.folder / "raw", data_dir, *map(Path, spec.system_dirs)):
        if not _missing_in(cand, spec):
            return cand
    return None


def _missing_files(spec, data_dir):
    return [] if raw_dir(spec, data_dir) else _missing_in(data_dir / spec.folder / "raw", spec)


def _download(spec, data_dir):
    import torchvision.datasets as tvd

    for train in (True, False):
        getattr(tvd, spec.torchvision_class)(str(data_dir), train=train, download=True)


def ensure_downloaded(dataset, data_dir=None, allow_download=True):
    """Make sure the IDX files exist; download with torchvision only into the default ./data.

    Called on the main process first (accelerator.main_process_first) so ranks don't race."""
    spec = get_spec(dataset)
    path, explicit = resolve_data_dir(data_dir)
    missing = _missing_files(spec, path)
    if missing and allow_download and not explicit:
        try:
            _download(spec, path)
        except Exception:  # offline: fall through to the clear message below
            pass
        missing = _missing_files(spec, path)
    if missing:
        names = ", ".join(p.name for p in missing)
        hint = " or install Debian's dataset-fashion-mnist" if spec.system_dirs else ""
        raise KDError(
            f"{spec.name} data not found in {path}/{spec.folder}/raw (missing: {names}); "
            f"pass --data-dir DIR or set {DATA_DIR_ENV}=DIR with DIR/{spec.folder}/raw/*-ubyte[.gz]{hint}"
        )
    return path


def get_spec(dataset):
    if dataset not in DATASETS:
        raise KDError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[dataset]


def load_split(dataset, split, data_dir=None):
    """Read one split into tensors. images: uint8 [N, 1, 28, 28]; labels: int64 [N]."""
    spec = get_spec(dataset)
    raw = raw_dir(spec, ensure_downloaded(dataset, data_dir, allow_download=False))
    img_path, lbl_path = (_find(raw, f) for f in spec.files[split])
    images, labels = _read_idx(img_path), _read_idx(lbl_path).long()
    h, w = spec.image_size
    if images.ndim != 3 or len(images) == 0 or tuple(images.shape[1:]) != (h, w):
        raise KDError(f"{img_path}: images of shape {list(images.shape)}, expected [N, {h}, {w}] with N >= 1")
    if labels.ndim != 1 or len(labels) != len(images):
        raise KDError(f"{lbl_path}: labels of shape {list(labels.shape)}, expected [{len(images)}] "
                      f"(one per image of {img_path.name})")
    bad = ((labels < 0) | (labels >= spec.num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise KDError(f"{lbl_path}: label {int(labels[i])} at index {i} is outside [0, {spec.num_classes}) "
                      f"for {spec.name} ({len(bad)} such labels)")
    return Split(dataset, split, images.unsqueeze(1).contiguous(), labels, spec.num_classes)


class IndexedTensors(Dataset):
    """Map-style dataset over aligned tensors; a batch is one fancy-index per column.

    `__getitems__` receives the sampler's whole batch of indices, so the DataLoader does a single
    gather per column instead of collating N samples. Extra columns (e.g. the teacher logits
    from the cache) are indexed by the same sample index, which is what keeps them aligned
    under shuffling and under sharding across processes."""

    def __init__(self, **columns):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise KDError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.n = lengths.pop()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {k: v[idx] for k, v in self.columns.items()}
        batch["idx"] = idx
        return batch


def balanced_subset(labels, n, seed=0):
    """Indices (sorted) of a fixed, seeded, class-balanced subset of n samples: n // C per class,
    the remainder going one each to the lowest classes. Independent of the run's seed, so every
    seed and variant of a study sees the same labelled samples."""
    classes = int(labels.max()) + 1
    if not 1 <= n <= len(labels):
        raise KDError(f"--train-subset must be between 1 and {len(labels)}, got {n}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(classes):
        want = n // classes + (1 if c < n % classes else 0)
        members = (labels == c).nonzero().flatten()
        if want > len(members):
            raise KDError(f"--train-subset {n}: class {c} has only {len(members)} samples")
        picks.append(members[torch.randperm(len(members), generator=g)[:want]])
    return torch.cat(picks).sort().values


def _as_batch(batch):
    return batch  # __getitems__ already returns the collated batch


def epoch_seed(seed, epoch):
    """A 63-bit generator seed for (run seed, epoch): neighbouring seeds and epochs give
    unrelated permutations (sha256 mixes them), and the result depends on nothing else."""
    digest = hashlib.sha256(f"kd_accel/order/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpochPermutation(Sampler):
    """The training order: epoch e visits the samples in randperm(n) drawn from
    epoch_seed(seed, e), a pure function of the run's seed and the epoch.

    This sampler is the one owner of the data order. It is not a RandomSampler, so
    accelerator.prepare keeps it as it is (Accelerate's seedable sampler, seeded once per
    Accelerator, would give every seed trained under one Accelerator the same order); the
    prepared loader's set_epoch reaches it on every rank, so all ranks draw the same global
    permutation and shard it by whole batches, and a resumed epoch replays it exactly."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def permutation(self, epoch=None):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch if epoch is None else epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        return iter(self.permutation().tolist())

    def __len__(self):
        return self.n


def make_loader(columns, batch_size, shuffle, seed=0):
    """A DataLoader over IndexedTensors(**columns), ready for accelerator.prepare.

    shuffle=True: the order is EpochPermutation(n, seed), set per epoch with loader.set_epoch.
    `prepare` shards it across processes: each rank takes whole batches in turn, so with R
    processes a step sees R*batch_size samples of one global permutation."""
    dataset = IndexedTensors(**columns)
    sampler = EpochPermutation(len(dataset), seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_as_batch)


def to_float(images):
    """uint8 [B, C, H, W] -> float32 in [0, 1] (the notebook's only preprocessing)."""
    return images.float().div_(255.0)
