"""Image folders as a streamed data source: the files are decoded in DataLoader worker processes,
batch by batch, and nothing holds the data set (the second kind beside memory.py's tensors).

    DIR/train/<class>/**/<image>     DIR/val/<class>/**/<image>     (torchvision's ImageFolder)

A worker turns sample indices into a batch as torchvision's reference pipeline would, in
uint8 until the end: read the file, decode it (decode.py: as PIL's convert gives it), crop,
resize to the model's size, flip; the float conversion and normalisation happen on the training
device (augment.make_inputs). What a worker returns is what a batch of the in-memory kind holds:
"images" uint8 [B, C, H, W], "labels" and "idx" [B] int64, plus "crops" uint16 [B, 5] (the view's
parameters, below) and "rows" (the indices again, as a numpy array: a host-side copy that
device placement leaves alone, for gathering index-keyed columns without a device sync).

The view of a sample (crops.py): with augmentation, RandomResizedCrop + flip whose parameters
are a pure function of (seed, view, index) and the image's size, kept as fractions of the image
in uint16 (x / 65535: 0.02 px at 1300 px), so a stored crop replays exactly and at any
resolution. The crops plan says where they come from: drawn in the worker (DrawnCrops), read
from a K-view cache (CachedCrops: the student replays the teacher's view e mod K), or none
(CentreCrop: resize the short side, centre-crop; torchvision's evaluation transform).

A mix (mixing.py; DrawnMixes, CachedMixes) adds each sample's partner: the worker sends the
partner's own view of the epoch beside the batch, to be mixed on the training device
(augment.make_inputs), with "mix" int32 [B, 7], "partner_pos" [B] (the partner's row in the
batch's images stacked over "partner_images" [E, ...]), "mix_labels" and "mix_lam" [B]. The
epoch keeps each pair in one batch (loading.pair_order), so the partner's view is one the batch
holds already and E is 0; a partner outside the batch (an odd batch size, an odd N) is decoded
too.

Training order: FolderPermutation yields (epoch, index) keys, so the worker knows the epoch's
view without any state shared with the main process (persistent workers keep their own copy of
the dataset). Bad files stop the run with one line naming the file, also from a worker
(errors.run_cli unwraps the worker's traceback): a dropped sample would shift every
index-keyed logit after it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import KDError
from .crops import crop_boxes as fraction_boxes, draw_crops
from .decode import DECODER_VERSION, _decode
from .content import Ledger, digest, ledger_path
from .folder import differences, load_listing, paths_from_tensors, save_listing, scan
from .loading import EpochPermutation, pair_order
from .mixing import MIX_COLUMNS, MixSpec, draw_mix, label_share, partners

if TYPE_CHECKING:
    from collections.abc import Callable

    from accelerate import Accelerator

    from .folder import FolderIndex
    from .source import CropPlan, MixPlan, ViewPlan

DATASET = "imagefolder"
SPLIT_DIRS = {"train": "train", "test": "val"}
FOLDER_SIZE = 224  # the model input side when neither --image-size nor the weights say one (torchvision, timm)
CROP_LEVELS = 65535  # crop fractions stored as uint16 x / 65535
CROP_COLUMNS = 5  # top, left, height, width, flip (crops.COLUMNS)


def quantize(fractions: torch.Tensor | np.ndarray) -> torch.Tensor:
    """[B, 5] float (top, left, height, width fractions, flip) -> uint16 [B, 5], as stored."""
    f = torch.as_tensor(fractions, dtype=torch.float64).clamp(0, 1)
    return torch.round(f * CROP_LEVELS).to(torch.int32).to(torch.uint16)  # torch has few uint16 ops: made last


def dequantize(q: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(q).to(torch.float64) / CROP_LEVELS


def crop_pixels(q: torch.Tensor | np.ndarray, height: int, width: int) -> tuple[int, ...]:
    """(top, left, h, w) in pixels of a stored crop (uint16 [5]) on a height x width image."""
    return tuple(int(v[0]) for v in crop_boxes(torch.as_tensor(q)[None], [height], [width]))


def crop_boxes(q: torch.Tensor | np.ndarray, heights: torch.Tensor | np.ndarray | list[int],
               widths: torch.Tensor | np.ndarray | list[int]) -> tuple[np.ndarray, ...]:
    """crops.crop_boxes of stored uint16 crops [B, 5]: (top, left, h, w) in pixels, each int64 [B]."""
    return fraction_boxes(dequantize(q), heights, widths)


# --- where a view's crop comes from (picklable: they travel to the workers) ------------------------


@dataclass(frozen=True)
class CentreCrop:
    """No augmentation: the evaluation transform."""

    def params(self, epochs: list[int] | None, idx: np.ndarray, heights: torch.Tensor, widths: torch.Tensor) -> None:
        return None


@dataclass(frozen=True)
class DrawnCrops:
    """RandomResizedCrop + flip drawn from (seed, view, index): view = the key's epoch (a fresh
    view per epoch), or the fixed `view` (a precompute's view v)."""

    seed: int
    view: int = None
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)

    def params(self, epochs: list[int] | None, idx: np.ndarray, heights: torch.Tensor,
               widths: torch.Tensor) -> torch.Tensor:
        views = np.asarray([self.view] * len(idx) if self.view is not None else epochs)
        out = np.empty((len(idx), 5), dtype=np.uint16)
        for v in np.unique(views).tolist():  # one view per batch in practice
            sel = np.flatnonzero(views == v)
            out[sel] = quantize(draw_crops(self.seed, v, torch.from_numpy(idx[sel]), heights[sel], widths[sel],
                                           self.scale, self.ratio)).numpy()
        return torch.from_numpy(out)


@dataclass(frozen=True)
class CachedCrops:
    """The crops a K-view cache stores: epoch e replays view e mod `views`, read from the cache
    file (memory-mapped in each worker on first use; the main process checked it)."""

    column: object  # () -> the cache's params [K, N, 5] uint16, memory-mapped (picklable: cache.CacheColumn)
    views: int

    def params(self, epochs: list[int] | None, idx: np.ndarray, heights: torch.Tensor,
               widths: torch.Tensor) -> torch.Tensor:
        params = self.column().numpy()
        return torch.from_numpy(params[np.asarray(epochs) % self.views, idx, :CROP_COLUMNS])  # a mix's columns follow


@dataclass(frozen=True)
class DrawnMixes:
    """Mixes drawn from (seed, view, index) of n samples (mixing.draw_mix): view = the key's
    epoch, or the fixed `view`, as DrawnCrops."""

    seed: int
    spec: MixSpec
    n: int
    view: int = None

    def params(self, epochs: list[int] | None, idx: np.ndarray) -> torch.Tensor:
        views = np.asarray([self.view] * len(idx) if self.view is not None else epochs)
        out = torch.empty(len(idx), len(MIX_COLUMNS), dtype=torch.int32)
        for v in np.unique(views).tolist():
            sel = np.flatnonzero(views == v)
            out[sel] = draw_mix(self.spec, self.seed, v, torch.from_numpy(idx[sel]), self.n).to(torch.int32)
        return out


@dataclass(frozen=True)
class CachedMixes:
    """The mixes a K-view cache stores (its params' MIX_COLUMNS from `offset`): epoch e replays
    view e mod `views`, as CachedCrops."""

    column: object  # () -> the cache's params [K, N, P], memory-mapped (cache.CacheColumn)
    views: int
    offset: int

    def params(self, epochs: list[int] | None, idx: np.ndarray) -> torch.Tensor:
        params = self.column().numpy()
        rows = params[np.asarray(epochs) % self.views, idx, self.offset:self.offset + len(MIX_COLUMNS)]
        return torch.from_numpy(rows.astype(np.int32))


# --- the data set a worker reads --------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What a sample becomes: size (H, W) of the model input; resize_size: the evaluation
    transform's short side before the centre crop (None: the crop's side, no margin);
    interpolation of every resize."""

    size: tuple = (FOLDER_SIZE, FOLDER_SIZE)
    resize_size: int = None
    interpolation: str = "bilinear"


class FolderDataset(Dataset):
    """Map-style: `__getitems__` turns a batch of keys (sample indices, or (epoch, index) from
    FolderPermutation) into one batch, in the worker that draws it."""

    def __init__(self, index: FolderIndex, channels: int, view: View, crops: CropPlan = CentreCrop(),
                 ledger: Ledger | None = None, mixes: MixPlan | None = None) -> None:
        self.root, self.paths, self.labels = index.root, index.paths, index.labels
        self.channels, self.view, self.crops, self.ledger, self.mixes = channels, view, crops, ledger, mixes

    def _path(self, i):
        return os.path.join(self.root, self.paths[i])

    def _read(self, i):
        """(image uint8 [C, H, W], digest of the file's bytes) of sample i."""
        path = self._path(i)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise KDError(f"cannot read image {path}: {e.strerror or e}") from None
        return _decode(path, self.channels, data), digest(data)  # the bytes read once: decoded and hashed

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        return self.__getitems__([key])

    def _resize(self, img, size):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if list(img.shape[-2:]) == list(size):
            return img
        return F.resize(img, list(size), interpolation=InterpolationMode(self.view.interpolation), antialias=True)

    def _centre(self, img):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        h, w = self.view.size
        short = self.view.resize_size or max(h, w)
        if min(img.shape[-2:]) != short:
            img = F.resize(img, [short], interpolation=InterpolationMode(self.view.interpolation), antialias=True)
        return F.center_crop(img, [h, w])

    def __getitems__(self, keys):
        tagged = bool(keys) and isinstance(keys[0], (tuple, list))
        epochs = [k[0] for k in keys] if tagged else None
        idx = np.asarray([k[1] for k in keys] if tagged else keys, dtype=np.int64)
        out, crops, digests = self._views(idx, epochs)
        batch = {"images": out, "labels": torch.from_numpy(self.labels[idx]), "idx": torch.from_numpy(idx), "rows": idx,
                 "digests": torch.from_numpy(digests)}
        if crops is not None:
            batch["crops"] = crops
        if self.mixes is not None:
            batch.update(self._partners(idx, epochs))
        return batch

    def _partners(self, idx, epochs):
        """The batch's mixes and its partners' views (mixing.py): a partner the batch holds is
        pointed at, one it lacks is decoded and made its own view of the same epoch."""
        mix = self.mixes.params(epochs, idx)
        partner = partners(mix).numpy()
        rows = {i: j for j, i in enumerate(idx.tolist())}
        lacking = list(dict.fromkeys(p for p in partner.tolist() if p not in rows))
        views = torch.empty(0, self.channels, *self.view.size, dtype=torch.uint8)
        if lacking:  # each in the view of the epoch of the sample it mixes with
            at = dict(zip(partner.tolist(), epochs)) if epochs is not None else None
            views = self._views(np.asarray(lacking, dtype=np.int64), at and [at[p] for p in lacking])[0]
        rows.update({p: len(idx) + k for k, p in enumerate(lacking)})
        return {"mix": mix, "partner_images": views, "partner_pos": torch.tensor([rows[p] for p in partner.tolist()]),
                "mix_labels": torch.from_numpy(self.labels[partner]), "mix_lam": label_share(mix, *self.view.size)}

    def _views(self, idx, epochs):
        """(views uint8 [B, C, H, W], crops uint16 [B, 5] or None, digests int64 [B]) of samples
        idx, read, checked against the ledger, decoded and cropped as the crops plan says."""
        images, digests = zip(*[self._read(i) for i in idx.tolist()]) if len(idx) else ((), ())
        digests = np.asarray(digests, dtype=np.int64)
        if self.ledger is not None:  # a file whose bytes changed since the run folder read it: refused here
            self.ledger.check(idx, digests, self._path)
        heights = torch.tensor([im.shape[-2] for im in images])
        widths = torch.tensor([im.shape[-1] for im in images])
        crops = self.crops.params(epochs, idx, heights, widths)
        out = torch.empty(len(idx), self.channels, *self.view.size, dtype=torch.uint8)
        if crops is None:
            for j, img in enumerate(images):
                out[j] = self._centre(img)
        else:
            boxes = np.stack(crop_boxes(crops, heights, widths), 1).tolist()  # [B, 4] pixels, one numpy pass
            flips = crops[:, 4].tolist()
            for j, (img, (top, left, h, w)) in enumerate(zip(images, boxes)):
                view = self._resize(img[:, top:top + h, left:left + w], self.view.size)  # crop first: less to resize
                out[j] = view.flip(-1) if flips[j] else view
        return out, crops, digests


def _collate(batch):
    return batch  # __getitems__ already returns the collated batch


def _worker_init(worker_id):
    torch.set_num_threads(1)  # a worker decodes one image at a time; the cores are the workers'


def default_workers() -> int:
    """DataLoader workers per process: the cores this process may use, shared by the processes
    of this machine, at most 8 (what decoding keeps busy), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(1, min(8, cores // local))


class FolderPermutation(EpochPermutation):
    """EpochPermutation's order, each index tagged with its epoch: (epoch, index)."""

    def __iter__(self):
        # in pieces: a whole ImageNet permutation as Python ints is some 50 MB per epoch
        return ((self.epoch, i) for piece in self.permutation().split(1 << 16) for i in piece.tolist())


class FixedOrder(torch.utils.data.Sampler):
    """The samples in one given order [N] (a mixed precompute's pairs side by side)."""

    def __init__(self, order: torch.Tensor) -> None:
        self.order = order

    def __iter__(self):
        return iter(self.order.tolist())

    def __len__(self):
        return len(self.order)


def folder_loader(dataset: FolderDataset, batch_size: int, workers: int | None, device: torch.device | str,
                  shuffle: bool = False, seed: int = 0, pairs: Callable[[int], torch.Tensor | None] | None = None,
                  partner: torch.Tensor | None = None) -> DataLoader:
    """A DataLoader decoding in `workers` worker processes (0: in this process), pinned memory
    on CUDA; ready for accelerator.prepare, which shards it. A training loader (shuffle) keeps
    its workers from epoch to epoch; an evaluation's or a precompute's stop when it ends: the
    Accelerator keeps every prepared loader until the next phase, and their idle workers with
    them. With a mix, the pairs of each sample and its partner side by side: a training loader's
    `pairs` (epoch -> partners [N]) in its epoch's order, an inference loader's `partner` [N] in
    index order (loading.pair_order), so each batch holds its samples' partners."""
    workers = default_workers() if workers is None else workers
    sampler = FolderPermutation(len(dataset), seed, pairs) if shuffle else None
    if partner is not None and not shuffle:
        sampler = FixedOrder(pair_order(partner))
    for plan in (getattr(dataset, "crops", None), getattr(dataset, "mixes", None)):
        if isinstance(plan, (DrawnCrops, DrawnMixes)) and plan.view is None and not shuffle:
            raise ValueError(f"{type(plan).__name__} without a view draws epoch e's view from FolderPermutation's "
                             "(epoch, index) keys: give it a view, or shuffle")
    extra = dict(persistent_workers=shuffle, prefetch_factor=2, worker_init_fn=_worker_init) if workers else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_collate, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", **extra)


# --- the split --------------------------------------------------------------------------------------


class FolderSplit:
    """One split of an image folder, as the pipeline sees a data set: labels, classes, a
    fingerprint; and the batches (train_data, inference_loader), decoded at the size of the
    model they are for (`at(preprocessing)`)."""

    dataset = DATASET
    norm = None  # pixels scaled to [0, 1]; a model's mean/std come from its weights or --normalize

    def __init__(self, index: FolderIndex, split: str, channels: int, view: View = View(), workers: int | None = None,
                 ledger: Ledger | None = None) -> None:
        self.index, self.split, self.channels, self.view, self.workers = index, split, channels, view, workers
        self.ledger = ledger  # content.Ledger: the run folder's digests of these files (use_ledger)
        self.labels = torch.from_numpy(index.labels)
        self.num_classes = len(index.classes)

    def __len__(self):
        return len(self.index)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.view.size)

    def subset(self, n: int | None) -> FolderSplit:
        return FolderSplit(self.index.head(n), self.split, self.channels, self.view, self.workers)

    def at(self, prep: dict[str, Any]) -> FolderSplit:
        """This split decoded for a model of preprocessing record `prep` (its size, the resize
        of its evaluation transform, its interpolation)."""
        view = View(tuple(prep["image_size"]), prep.get("resize_size"), prep.get("interpolation") or "bilinear")
        return FolderSplit(self.index, self.split, self.channels, view, self.workers, self.ledger)

    def fingerprint(self) -> str:
        """The folder's identity (class list, relative paths, sizes: folder.FolderIndex) and how
        it is read (channels, the decoder's version: decode.py's pixels changed for some kinds of
        file in version 2): stamped on caches, checkpoints and models."""
        h = hashlib.sha256(f"{DATASET}/{self.split}/channels={self.channels}/decoder={DECODER_VERSION}/"
                           f"{self.index.fingerprint()}".encode())
        return h.hexdigest()

    def file_hashes(self) -> torch.Tensor:
        return self.index.file_hashes()

    def worker_count(self) -> int:
        """The DataLoader workers per process that decode this split (--num-workers, or the default)."""
        return default_workers() if self.workers is None else self.workers

    def listing_path(self, run_dir: Path | str, fingerprint: str | None = None) -> Path:
        return Path(run_dir) / ".folders" / f"{fingerprint or self.fingerprint()}.safetensors"

    def keep_listing(self, run_dir: Path | str) -> None:
        """Save this folder's listing in the run folder (once per folder state), so that a later
        run refusing this run's checkpoints or models can name the files that changed."""
        path = self.listing_path(run_dir)
        kept = load_listing(path) if path.exists() else None
        if kept is None or kept[2] is None:  # none yet, or one saved before listings kept the paths
            save_listing(path, self.index)
        Ledger.open(ledger_path(path), len(self))

    def use_ledger(self, run_dir: Path | str) -> None:
        """Check every file read from now on against the run folder's ledger of their bytes (made
        by keep_listing, on the main process), recording the ones read first (content.py)."""
        self.ledger = Ledger(ledger_path(self.listing_path(run_dir)), len(self))

    def expect_content(self, soft: Any) -> None:
        """A cache's record of the bytes it was made from (`content`, [N] digests) against the run
        folder's ledger: refused where they differ, taken where the ledger has none; so the
        workers refuse a file changed since the cache was made. Caches made before the column
        existed bring none."""
        content = soft.content()
        if content is None or self.ledger is None:
            return
        self.ledger.merge(content.numpy(), f"logits cache {soft.path}",
                          lambda i: os.path.join(self.index.root, self.index.paths[i]))

    def explain_change(self, run_dir: Path | str, old_fingerprint: str) -> str | None:
        """One line: how this folder differs from the one of `old_fingerprint` (kept in the run
        folder by keep_listing), or None when that one's listing is not there."""
        old = load_listing(self.listing_path(run_dir, old_fingerprint))
        return old and differences(old[0], old[1], self.index, old[2])

    def check_options(self, channels: int | None, num_workers: int | None, train_subset: int | None) -> None:
        if train_subset:
            raise KDError("--train-subset is for the in-memory data sets; for an image folder, make a folder of "
                          "the labelled subset")

    def remember(self, run_dir: Path | str) -> None:
        self.keep_listing(run_dir)

    def use_records(self, run_dir: Path | str) -> None:
        self.use_ledger(run_dir)

    def threads_line(self, device: torch.device | str) -> str | None:
        """The one threads line of a folder run: on a CPU the training threads leave the decoding
        workers their cores (threads.py)."""
        from ..threads import share_with_workers, threads_line

        return (torch.device(device).type == "cpu" and share_with_workers(self.worker_count())) or threads_line()

    def check_augment(self, spec: Any) -> None:
        if spec.name not in ("none", "rrc"):
            raise KDError(f"--augment {spec.name} is for the in-memory data sets; an image folder takes rrc "
                          "(RandomResizedCrop + flip) or none")

    def dataset_for(self, crops: CropPlan = CentreCrop(), mixes: MixPlan | None = None) -> FolderDataset:
        return FolderDataset(self.index, self.channels, self.view, crops, self.ledger, mixes)

    def inference_loader(self, accelerator: Accelerator, batch_size: int, views: ViewPlan | None = None,
                         view: int = 0) -> DataLoader:
        """Every sample once, in index order (with a mix: its pairs side by side), as view `view`
        of `views` (source.ViewPlan: the crops and mixes its workers draw; None, or no crops: the
        centre crop, evaluation's)."""
        crops = (views.crops(view) if views else None) or CentreCrop()
        mixes = views.mixes(len(self), view) if views else None
        partner = views.partners(view, len(self)) if mixes else None
        return accelerator.prepare(folder_loader(self.dataset_for(crops, mixes), batch_size, self.workers,
                                                 accelerator.device, partner=partner))

    def view_params(self, spec: Any) -> tuple[str, torch.dtype, int] | None:
        """(batch column, dtype, count) of a view's parameters as a cache stores them: the
        workers' crops, "crops" uint16 [B, 5] (fractions x 65535, and the flip); None without
        augmentation."""
        return None if spec.name == "none" else ("crops", torch.uint16, 5)

    def identity_columns(self) -> dict[str, Any]:
        """What a cache made from this folder records of its files, to name a later change: the
        class list, each file's hash (path and size) and the relative paths (cache.CacheWriter's
        identity); each batch brings the digests of the bytes it read ("digests")."""
        buffer, offsets = self.index.paths.tensors()
        return {"classes": list(self.index.classes), "file_hashes": self.file_hashes(), "file_paths": buffer,
                "file_path_offsets": offsets}

    def explain_identity(self, stored: dict[str, Any]) -> str | None:
        """One line: how this folder differs from the one a cache recorded (its identity_columns,
        as cache.stored_identity reads them back), or None."""
        paths = (paths_from_tensors(stored["file_paths"].numpy(), stored["file_path_offsets"].numpy())
                 if "file_paths" in stored else None)
        return differences(stored["classes"], stored["file_hashes"], self.index, paths)

    def train_data(self, views: ViewPlan | None = None, extra: dict[str, torch.Tensor] | None = None) -> FolderData:
        """The training data of a phase (FolderData): `views` (source.ViewPlan) None (the centre
        crop every epoch) or the phase's views: the crops the workers draw or replay, and the
        per-epoch columns (a cache's teacher logits of that view); `extra` columns [N, ...]
        gathered by sample index."""
        if views is None:
            return FolderData(self, CentreCrop(), extra or {}, None)
        n = len(self)
        mixes = views.mixes(n)
        return FolderData(self, views.crops() or CentreCrop(), extra or {},
                          lambda epoch: views.columns(epoch, n, in_workers=True), mixes,
                          (lambda epoch: views.partners(epoch, n)) if mixes else None)


class FolderData:
    """What fit trains on from a folder: batches decoded by the workers; index-keyed columns
    (a cache's teacher logits, memory-mapped) gathered in the main process by each batch's
    sample indices and moved to the device with it."""

    def __init__(self, split: FolderSplit, crops: CropPlan, columns: dict[str, torch.Tensor],
                 per_epoch: Callable[[int], dict[str, torch.Tensor]] | None, mixes: MixPlan | None = None,
                 pairs: Callable[[int], torch.Tensor | None] | None = None) -> None:
        self.split, self.crops, self.columns, self.per_epoch = split, crops, columns, per_epoch
        self.mixes, self.pairs = mixes, pairs
        self.current = dict(columns)
        self.device = None

    def loader(self, accelerator: Accelerator, batch_size: int, seed: int) -> DataLoader:
        self.device = accelerator.device
        return folder_loader(self.split.dataset_for(self.crops, self.mixes), batch_size, self.split.workers,
                             self.device, shuffle=True, seed=seed, pairs=self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.current = {**self.columns, **(self.per_epoch(epoch) if self.per_epoch else {})}

    def complete(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.current:
            rows = torch.from_numpy(np.asarray(batch["rows"]))
            batch.update({k: v[rows].to(self.device, non_blocking=True) for k, v in self.current.items()})
        return batch


def load_folder(data_dir: str | Path | None, split: str, channels: int | None = 3, workers: int | None = None,
                classes: tuple[str, ...] | None = None) -> FolderSplit:
    """The split ("train" or "test": DIR/train, DIR/val) of the image folder DIR. `classes`: the
    training split's class list, for the test split: its samples are labelled by the training
    split's index of their class folder's name, a class it lacks is said in one line (its
    accuracy is then over the classes it has), and one the training split lacks is refused
    (folder.scan)."""
    if not data_dir:
        raise KDError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/<images>, DIR/val/<class>/...)")
    root = os.path.join(str(data_dir), SPLIT_DIRS[split])
    index = scan(root, classes=classes)
    if len(index) == 0:
        raise KDError(f"image folder {root} holds no image file")
    lacking = [c for c, n in zip(index.classes, np.bincount(index.labels, minlength=len(index.classes))) if n == 0]
    if lacking and not int(os.environ.get("RANK") or 0):  # once per run, as rank 0 prints
        print(f"{root} lacks {len(lacking)} of the training split's {len(index.classes)} classes "
              f"({', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}): each of its samples is labelled "
              "with its class's index in the training split; its accuracy covers the classes it has", flush=True)
    return FolderSplit(index, split, channels or 3, workers=workers)
