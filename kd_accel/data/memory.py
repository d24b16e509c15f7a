"""Data sets as in-memory tensors: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read from their
files.

MNIST-sized sets are a few tens of MB (CIFAR-10 and CIFAR-100 150 MB each), so (as in airbench)
they live as one uint8 tensor and a batch is `images[idx]`: no PIL, no ToTensor, no per-sample
Python work in the training loop.
Every batch carries the dataset indices of its samples, so anything keyed by sample index (the
teacher-logits cache) is looked up by index, never by batch position.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import KDError, first_line
from ..hashing import tensor_digest
from .loading import TensorData, make_loader, to_device

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .source import ViewPlan

DATA_DIR_ENV = "KD_ACCEL_DATA_DIR"
DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's files live under the data dir, how to read them, and what they hold."""

    name: str
    folder: str  # torchvision's layout: <data_dir>/<folder>/<subdir>/<file>
    files: dict  # split -> its files: (images, labels) for "idx", the pickled batches for "cifar"
    num_classes: int
    torchvision_class: str  # for the optional download
    system_dirs: tuple = ()  # where a distribution package puts the files (flat layout)
    image_size: tuple = (28, 28)  # (H, W) every image of the set must have
    reader: str = "idx"  # a key of _READERS
    channels: int = 1
    subdir: str = "raw"  # torchvision's IDX sets sit in <folder>/raw, CIFAR-10 in <folder> itself
    pattern: str = "*-ubyte[.gz]"  # the file names, for the "not found" hint
    # per-channel mean/std of the [0, 1] pixels; None: the pixels are only scaled by 1/255
    mean: tuple = None
    std: tuple = None
    label_key: str = "labels"  # a CIFAR batch's labels (CIFAR-100: "fine_labels", its 100 classes)
    meta: tuple = ()  # (file, key): the pickled dict whose list under key names the classes; a required file
    title: str = ""  # the set's name in messages ("CIFAR-10")

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) per channel for to_float, or None."""
        return None if self.mean is None else (tuple(self.mean), tuple(self.std))


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_FILES = {"train": ("train",), "test": ("test",)}

# New data sets register here (a new file format adds a reader to _READERS).
DATASETS = {
    "mnist": DatasetSpec("mnist", "MNIST", _IDX_FILES, 10, "MNIST"),
    # Debian's dataset-fashion-mnist installs the gzipped files flat in this folder
    "fashion-mnist": DatasetSpec("fashion-mnist", "FashionMNIST", _IDX_FILES, 10, "FashionMNIST",
                                 ("/usr/share/datasets/fashion-mnist",)),
    # torchvision's CIFAR10 unpacks its python-version tarball into <data_dir>/cifar-10-batches-py
    "cifar10": DatasetSpec("cifar10", "cifar-10-batches-py", _CIFAR_FILES, 10, "CIFAR10", image_size=(32, 32),
                           reader="cifar", channels=3, subdir="", pattern="{data_batch_1..5,test_batch}",
                           mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), title="CIFAR-10"),
    # torchvision's CIFAR100 unpacks into <data_dir>/cifar-100-python: train, test and meta, each
    # a pickled dict; the 100 fine classes (fine_labels, meta's fine_label_names), not the 20
    # coarse ones. Mean/std: RepDistiller's and mdistiller's (the CRD/DKD protocol's).
    "cifar100": DatasetSpec("cifar100", "cifar-100-python", _CIFAR100_FILES, 100, "CIFAR100", image_size=(32, 32),
                            reader="cifar", channels=3, subdir="", pattern="{train,test,meta}",
                            mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), label_key="fine_labels",
                            meta=("meta", "fine_label_names"), title="CIFAR-100"),
}


@dataclass
class Split:
    """One split of a data set held as tensors.

    images: uint8 [N, C, H, W]; labels: int64 [N]. Row i is dataset sample i.
    norm: None, or (mean, std) tuples per channel: what to_float(images, norm) subtracts and
    divides by after scaling to [0, 1]."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    norm: tuple = None
    classes: tuple = None  # the class names, where the files say them (CIFAR-100's meta)

    def __len__(self):
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what the models are built for."""
        return tuple(self.images.shape[1:])

    def subset(self, n: int | None) -> Split:
        """The first n samples (for smoke tests); indices stay 0..n-1."""
        if n is None or n >= len(self):
            return self
        return Split(self.dataset, self.split, self.images[:n], self.labels[:n], self.num_classes, self.norm,
                     self.classes)

    def at(self, prep: dict[str, Any]) -> Split:
        """The split for a model of preprocessing `prep`: the same tensors (augment.make_inputs
        resizes and normalises each batch for the model on the device)."""
        return self

    def expect_content(self, soft: Any) -> None:
        """Nothing to check: an in-memory set's content is its fingerprint (the tensors hashed)."""

    def check_options(self, channels: int | None, num_workers: int | None, train_subset: int | None) -> None:
        for flag, value in (("channels", channels), ("num-workers", num_workers)):
            if value is not None:
                raise KDError(f"--{flag} is for image folders (--dataset imagefolder); {self.dataset} is read whole "
                              "into memory")

    def remember(self, run_dir: Path) -> None:
        """Nothing to keep: the fingerprint hashes the tensors themselves."""

    def use_records(self, run_dir: Path) -> None:
        """Nothing to check as batches are read: the tensors are in memory, hashed."""

    def explain_change(self, run_dir: Path, old_fingerprint: str) -> str | None:
        return None

    def threads_line(self, device: torch.device) -> str | None:
        return None

    def check_augment(self, spec: Any) -> None:
        if spec.name == "rrc":
            raise KDError(f"--augment rrc (RandomResizedCrop + flip) is for image folders (--dataset imagefolder); "
                          f"{self.dataset} takes shift, affine, crop-flip or none")

    def inference_loader(self, accelerator: Accelerator, batch_size: int, views: ViewPlan | None = None,
                         view: int = 0) -> DataLoader:
        """Every sample once, in index order, on the device, as view `view` of `views`
        (source.ViewPlan; None: the images as they are): the view's columns (its augmentation
        parameters) ride along."""
        extra = views.columns(view, len(self)) if views else {}
        columns = {"images": self.images, "labels": self.labels, **extra}
        return accelerator.prepare(make_loader(to_device(columns, accelerator.device), batch_size, shuffle=False))

    def view_params(self, spec: Any) -> tuple[str, torch.dtype, int] | None:
        """(batch column, dtype, count) of a view's parameters as a cache stores them: the
        in-memory augmentations' "aug_params", float32 [B, 5]; None without augmentation."""
        return None if spec.name == "none" else ("aug_params", torch.float32, 5)

    def identity_columns(self) -> dict[str, Any]:
        """What a cache records of where these data came from beyond their fingerprint: nothing
        (the fingerprint hashes the tensors themselves)."""
        return {}

    def explain_identity(self, stored: dict[str, Any]) -> str | None:
        return None

    def train_data(self, views: ViewPlan | None = None, extra: dict[str, torch.Tensor] | None = None) -> TensorData:
        """The training data of a phase (loading.TensorData): `views` (source.ViewPlan) None (the
        images as they are) or the phase's views, whose per-epoch columns (augmentation
        parameters, a cache's logits) the step gathers by index; `extra` columns [N, ...] ride
        along."""
        n = len(self)
        per_epoch = None if views is None else (lambda epoch: views.columns(epoch, n))
        return TensorData({"images": self.images, "labels": self.labels, **(extra or {})}, per_epoch)

    def fingerprint(self) -> str:
        """sha256 of the pixels and labels (and the normalisation, when there is one): any change
        to the data changes it. Without a norm the header is the one MNIST fingerprints always had."""
        header = f"{self.dataset}/{self.split}/{tuple(self.images.shape)}"
        if self.norm is not None:
            header += f"/norm={self.norm}"
        return tensor_digest(header, self.images, self.labels)


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path, bool]:
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


def _open(path):
    # fname.gz is read as fname: the same bytes, gzipped
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx(path):
    try:
        with _open(path) as f:
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


def _check_labels(labels, path, spec):
    """labels int64 [n] read from `path`: one line naming the first outside [0, num_classes)."""
    bad = ((labels < 0) | (labels >= spec.num_classes)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise KDError(f"{path}: label {int(labels[i])} at index {i} is outside [0, {spec.num_classes}) "
                      f"for {spec.name} ({len(bad)} such labels)")


def _load_idx(spec, raw, split):
    """An IDX split (MNIST, Fashion-MNIST): images uint8 [N, 1, H, W], labels int64 [N]."""
    img_path, lbl_path = (_find(raw, f) for f in spec.files[split])
    images, labels = _read_idx(img_path), _read_idx(lbl_path).long()
    h, w = spec.image_size
    if images.ndim != 3 or len(images) == 0 or tuple(images.shape[1:]) != (h, w):
        raise KDError(f"{img_path}: images of shape {list(images.shape)}, expected [N, {h}, {w}] with N >= 1")
    if labels.ndim != 1 or len(labels) != len(images):
        raise KDError(f"{lbl_path}: labels of shape {list(labels.shape)}, expected [{len(images)}] "
                      f"(one per image of {img_path.name})")
    _check_labels(labels, lbl_path, spec)
    return images.unsqueeze(1).contiguous(), labels


def _numpy_reconstruct():
    # numpy 2 renamed numpy.core to numpy._core; the pickles may name either
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _plain_frombuffer(buf, dtype, *layout):
    # protocol 5 pickles a contiguous array as numpy._core.numeric._frombuffer(its bytes, dtype,
    # shape, order), which only reshapes the bytes; checked first so that nothing but raw bytes
    # becomes an array, and never one of Python objects (an object array's items are pickled
    # objects, not bytes)
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused(f"numpy _frombuffer of a {type(buf).__name__} as {dtype!r}")
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer(buf, dtype, *layout)  # shape, order (and numpy 2's axis_order): a reshape


def _latin1_encode(text, encoding):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"); no other codec
    if encoding != "latin1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes():
    return b""


# Every global a CIFAR-10 or CIFAR-100 batch names: numpy's array reconstruction (Python 2's cPickle wrote
# numpy.core.*, numpy 2 writes numpy._core.*; protocol 5 rebuilds from the raw bytes) and, in
# protocol-2 pickles written by Python 3, the pixel bytes. dicts, lists, str and int are pickle
# opcodes, not globals.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): lambda: _plain_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _plain_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    # ... and an empty bytes object (an empty array's pixels) as bytes()
    ("__builtin__", "bytes"): lambda: _empty_bytes,
    ("builtins", "bytes"): lambda: _empty_bytes,
}


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something a data batch never needs."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR batch holds and nothing else: a pickle that names any other
    callable (os.system, builtins.eval, ...) is refused when the name is looked up, before
    anything is called, so a data file cannot run code."""

    def find_class(self, module, name):
        get = _PICKLE_GLOBALS.get((module, name))
        if get is None:
            raise _Refused(f"{module}.{name}")
        return get()


def _first_line(e):
    return f"{type(e).__name__}: {first_line(e)}"


def _read_batch(path, spec):
    """A pickled batch (or CIFAR-100's meta) as a dict with str keys. Python 2 wrote the real
    files: latin1 turns their str values (numpy's raw pixel bytes among them) into text numpy
    accepts."""
    try:
        with _open(path) as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise KDError(f"{path}: refused to unpickle {e}: a {spec.title} batch needs only numpy arrays, lists "
                      "and dicts, and a data file must not run code") from None
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt pickle fails in many ways
        raise KDError(f"cannot read {spec.title} batch {path} (truncated or not a pickled batch?): "
                      f"{_first_line(e)}") from None
    if not isinstance(batch, dict):
        raise KDError(f"{path}: holds a {type(batch).__name__}, expected a {spec.title} batch "
                      f"(a dict with 'data' and '{spec.label_key}')")
    # keys pickled as bytes (b'data') read like str keys
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _batch_arrays(path, spec):
    """One batch: pixels uint8 [n, C*H*W] (each row the C colour planes in turn, each plane
    H x W row-major) and labels int64 [n]."""
    batch = _read_batch(path, spec)
    missing = [k for k in ("data", spec.label_key) if k not in batch]
    if missing:
        raise KDError(f"{path}: the batch has no {' or '.join(map(repr, missing))} (keys: {sorted(map(str, batch))})")
    data, size = batch["data"], spec.channels * math.prod(spec.image_size)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and len(data)
            and data.shape[1] == size):
        is_array = isinstance(data, np.ndarray)
        what = f"{data.dtype} [{', '.join(map(str, data.shape))}]" if is_array else f"a {type(data).__name__}"
        raise KDError(f"{path}: data is {what}, expected uint8 [N, {size}] with N >= 1")
    try:
        labels = np.asarray(batch[spec.label_key])
    except (ValueError, TypeError):  # ragged lists
        labels = np.asarray(None)
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise KDError(f"{path}: labels are {labels.dtype} of shape {list(labels.shape)}, expected {len(data)} integers "
                      "(one per image)")
    labels = torch.from_numpy(labels.astype(np.int64))
    _check_labels(labels, path, spec)
    return data, labels


def _load_cifar(spec, folder, split):
    """A split of CIFAR-10's or CIFAR-100's pickled batches, concatenated in file order
    (data_batch_1..5 for CIFAR-10's train): images uint8 [N, 3, 32, 32], labels int64 [N]."""
    pixels, labels = zip(*(_batch_arrays(_find(folder, f), spec) for f in spec.files[split]))
    # a row is the colour planes one after another, each row-major: one reshape to [N, C, H, W]
    images = torch.from_numpy(np.concatenate(pixels)).reshape(-1, spec.channels, *spec.image_size)
    return images, torch.cat(labels)


def _class_names(spec, folder):
    """The class names a set's meta file lists (spec.meta: (file, key)), num_classes strings, or
    None for a set without one."""
    if not spec.meta:
        return None
    name, key = spec.meta
    path = _find(folder, name)
    names = _read_batch(path, spec).get(key)
    if not (isinstance(names, list) and len(names) == spec.num_classes and all(isinstance(n, str) for n in names)):
        got = f"{len(names)} items" if isinstance(names, list) else \
            "nothing" if names is None else f"a {type(names).__name__}"
        raise KDError(f"{path}: {key!r} holds {got}, expected the {spec.num_classes} class names of {spec.title}")
    return tuple(names)


_READERS = {"idx": _load_idx, "cifar": _load_cifar}


def _home(spec, data_dir):
    return data_dir / spec.folder / spec.subdir


def _file_names(spec):
    """Every file a set is read from: its splits' and its meta file."""
    return [f for names in spec.files.values() for f in names] + list(spec.meta[:1])


def _missing_in(raw, spec):
    return [raw / f for f in _file_names(spec) if _find(raw, f) is None]


def raw_dir(spec: DatasetSpec, data_dir: Path) -> Path | None:
    """The folder holding the data files: <data_dir>/<folder>/<subdir> (torchvision's layout),
    else <data_dir> itself (flat), else a system folder (Debian's package). None if none is complete."""
    for cand in (_home(spec, data_dir), data_dir, *map(Path, spec.system_dirs)):
        if not _missing_in(cand, spec):
            return cand
    return None


def data_files(dataset: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files an in-memory data set is read from, those that exist (the inputs no output may
    replace; data.data_files answers for every kind)."""
    spec = get_spec(dataset)
    raw = raw_dir(spec, resolve_data_dir(data_dir)[0])
    return [] if raw is None else [_find(raw, f) for f in _file_names(spec)]


def _missing_files(spec, data_dir):
    return [] if raw_dir(spec, data_dir) else _missing_in(_home(spec, data_dir), spec)


def _download(spec, data_dir):
    import torchvision.datasets as tvd

    for train in (True, False):
        getattr(tvd, spec.torchvision_class)(str(data_dir), train=train, download=True)


def ensure_downloaded(dataset: str, data_dir: str | Path | None = None, allow_download: bool = True) -> Path:
    """Make sure the data files exist; download with torchvision only into the default ./data.

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
            f"{spec.name} data not found in {_home(spec, path)} (missing: {names}); "
            f"pass --data-dir DIR or set {DATA_DIR_ENV}=DIR with {_home(spec, Path('DIR')) / spec.pattern}{hint}"
        )
    return path


def get_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise KDError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[dataset]


def load_split(dataset: str, split: str, data_dir: str | Path | None = None) -> Split:
    """Read one split into tensors: images uint8 [N, C, H, W] ([N, 1, 28, 28] for MNIST and
    Fashion-MNIST, [N, 3, 32, 32] for CIFAR-10 and CIFAR-100), labels int64 [N], the set's norm
    and, where its files name them, the class names."""
    spec = get_spec(dataset)
    raw = raw_dir(spec, ensure_downloaded(dataset, data_dir, allow_download=False))
    images, labels = _READERS[spec.reader](spec, raw, split)
    return Split(dataset, split, images, labels, spec.num_classes, spec.norm, _class_names(spec, raw))
