"""Batches by index, for every kind of data source: a batch is one gather per column of aligned
tensors, carrying the dataset indices of its samples, in an order that is a pure function of the
run's seed and the epoch (EpochPermutation; with a mix, pairs kept together: pair_order); and
uint8 images to the model's float input."""
from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import KDError
from .mixing import label_share, partners

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from accelerate import Accelerator


class IndexedTensors(Dataset):
    """Map-style dataset over aligned tensors; a batch is one fancy-index per column.

    `__getitems__` receives the sampler's whole batch of indices, so the DataLoader does a single
    gather per column instead of collating N samples. Extra columns (e.g. the teacher logits
    from the cache) are indexed by the same sample index, which is what keeps them aligned
    under shuffling and under sharding across processes."""

    def __init__(self, **columns: torch.Tensor) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise KDError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.n = lengths.pop()

    @property
    def device(self) -> torch.device:
        """Where the columns live (fit moves them all to the training device)."""
        return next(iter(self.columns.values())).device

    def __len__(self):
        return self.n

    # The epoch's order [N] int64 on the columns' device (EpochPositions sets it), or None: the
    # samples in index order. The sampler then yields positions in that order, not indices.
    order = None

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, positions):
        """The batch at `positions` of the order: a run of consecutive positions (every batch
        but a padded last one) is a slice of the order already on the device, so a step copies
        no index from the host (a host-to-device copy from pageable memory waits for the GPU);
        otherwise the positions are copied to the device once."""
        first, n = positions[0], len(positions)
        if positions[-1] - first == n - 1 and all(p == first + j for j, p in enumerate(positions)):
            idx = self.order[first:first + n] if self.order is not None else \
                torch.arange(first, first + n, device=self.device)
        else:
            pos = torch.as_tensor(positions, dtype=torch.long, device=self.device)
            idx = self.order[pos] if self.order is not None else pos
        batch = {k: v[idx] for k, v in self.columns.items()}
        batch["idx"] = idx
        if "mix" in batch:
            batch.update(self.partners(batch["mix"]))
        return batch

    def partners(self, mix: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a batch of mixed views (data/mixing.py) needs of its samples' partners, gathered
        by their sample index as the batch's own rows: "partner_images" [B, ...] and
        "partner_aug_params" (each partner's own parameters of the view, applied with the batch's),
        "partner_pos" [B] (row B + j of the two stacked), "mix_labels" [B] (the partners' labels)
        and "mix_lam" [B] (each own label's share at the images' resolution). Every partner is
        gathered, in the batch or not: a gather on the device, no host sync."""
        p, images = partners(mix), self.columns["images"]
        out = {"partner_images": images[p], "mix_labels": self.columns["labels"][p],
               "partner_pos": torch.arange(len(p), 2 * len(p), device=p.device),
               "mix_lam": label_share(mix, *images.shape[-2:])}
        if "aug_params" in self.columns:
            out["partner_aug_params"] = self.columns["aug_params"][p]
        return out


def balanced_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
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


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for (run seed, epoch): neighbouring seeds and epochs give
    unrelated permutations (sha256 mixes them), and the result depends on nothing else."""
    digest = hashlib.sha256(f"kd_accel/order/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pair_order(partner: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N] int64: the samples with each mutual pair (i, partner[i]) side by side, the pairs in the
    order of `generator` (None: of their smaller index), then the samples of no pair (an odd N's
    last). A batch of even size then holds whole pairs, so a worker that mixes a sample with its
    partner decodes each image once (data/mixing.py)."""
    i = torch.arange(len(partner))
    mutual = (partner[partner] == i) & (partner != i)
    first = i[mutual & (i < partner)]
    single = i[~mutual]
    if generator is not None:
        first = first[torch.randperm(len(first), generator=generator)]
        single = single[torch.randperm(len(single), generator=generator)]
    return torch.cat([torch.stack([first, partner[first]], 1).flatten(), single])


class EpochPermutation(Sampler):
    """The training order: epoch e visits the samples in randperm(n) drawn from
    epoch_seed(seed, e), a pure function of the run's seed and the epoch; with `pairs` (epoch ->
    each sample's mix partner [N], or None), the epoch's pairs side by side in an order drawn
    from the same generator (pair_order).

    This sampler is the one owner of the data order. It is not a RandomSampler, so
    accelerator.prepare keeps it as it is (Accelerate's seedable sampler, seeded once per
    Accelerator, would give every seed trained under one Accelerator the same order); the
    prepared loader's set_epoch reaches it on every rank, so all ranks draw the same global
    permutation and shard it by whole batches, and a resumed epoch replays it exactly."""

    def __init__(self, n: int, seed: int, pairs: Callable[[int], torch.Tensor | None] | None = None) -> None:
        self.n, self.seed, self.epoch, self.pairs = n, int(seed), 0, pairs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        epoch = self.epoch if epoch is None else epoch
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        partner = self.pairs(epoch) if self.pairs is not None else None
        return torch.randperm(self.n, generator=g) if partner is None else pair_order(partner, g)

    def __iter__(self):
        return iter(self.permutation().tolist())

    def __len__(self):
        return self.n


class EpochPositions(EpochPermutation):
    """EpochPermutation's order kept on the columns' device: set_epoch puts the epoch's
    permutation there (one copy per epoch) as the dataset's `order`, and the sampler yields
    positions 0..N-1 in it; a batch is then a slice of the order (IndexedTensors). The samples
    each batch holds are EpochPermutation's, under sharding, skipping and padding alike."""

    def __init__(self, dataset: IndexedTensors, seed: int) -> None:
        super().__init__(len(dataset), seed)
        self.dataset = dataset
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.order = self.permutation().to(self.dataset.device)

    def __iter__(self):
        return iter(range(self.n))


def make_loader(columns: dict[str, torch.Tensor], batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader over IndexedTensors(**columns), ready for accelerator.prepare.

    shuffle=True: the order is EpochPermutation(n, seed), set per epoch with loader.set_epoch and
    kept on the columns' device (EpochPositions). `prepare` shards it across processes: each rank
    takes whole batches in turn, so with R processes a step sees R*batch_size samples of one
    global permutation."""
    dataset = IndexedTensors(**columns)
    sampler = EpochPositions(dataset, seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_as_batch)


def to_device(columns: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The (small, in-memory) columns moved to the device once: a batch is then one gather
    there, not a host-to-device copy per batch (on CPU a no-op: a memory-mapped cache stays mapped)."""
    return {k: v.to(device) for k, v in columns.items()}


class TensorData:
    """What fit trains on from in-memory tensors: aligned columns [N, ...] on the training
    device, a batch one gather per column; per_epoch(epoch) -> the columns that change with the
    epoch (its augmentation parameters; a K-view cache's view), set before its first batch."""

    def __init__(self, columns: dict[str, torch.Tensor],
                 per_epoch: Callable[[int], dict[str, torch.Tensor]] | None = None) -> None:
        self.columns, self.per_epoch, self.dataset, self.device = columns, per_epoch, None, None

    def subset(self, keep: torch.Tensor) -> TensorData:
        """The samples `keep` only (re-indexed 0..len(keep)-1, with every column)."""
        per_epoch = self.per_epoch and (lambda epoch: {k: v[keep] for k, v in self.per_epoch(epoch).items()})
        return TensorData({k: v[keep] for k, v in self.columns.items()}, per_epoch)

    def loader(self, accelerator: Accelerator, batch_size: int, seed: int) -> DataLoader:
        self.device = accelerator.device
        loader = make_loader(to_device(self.columns, self.device), batch_size, shuffle=True, seed=seed)
        self.dataset = loader.dataset  # the prepared loader (and skip_first_batches) index this same object
        return loader

    def set_epoch(self, epoch: int) -> None:
        if self.per_epoch:
            self.dataset.columns.update(to_device(self.per_epoch(epoch), self.device))

    def complete(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch  # every column was gathered with the batch


@functools.lru_cache(maxsize=16)
def _norm_tensors(norm, device):
    """(mean, std) float32 [C, 1, 1] on `device`, made once: no host-to-device copy per batch."""
    with torch.inference_mode(False):  # usable by training steps even when first made in evaluation
        return tuple(torch.tensor(v, dtype=torch.float32, device=device)[:, None, None] for v in norm)


def to_float(images: torch.Tensor, norm: tuple[Sequence[float], Sequence[float]] | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 in [0, 1] (the notebook's only preprocessing, and all that
    MNIST and Fashion-MNIST get). With norm = (mean, std), one value per channel (Split.norm):
    (x - mean) / std, channel by channel, on the images' device."""
    return normalize(images.float().div_(255.0), norm)


def normalize(x: torch.Tensor, norm: tuple[Sequence[float], Sequence[float]] | None = None) -> torch.Tensor:
    """float [B, C, H, W] in [0, 1] -> (x - mean) / std per channel, in place (norm None: x)."""
    if norm is None:
        return x
    mean, std = _norm_tensors(tuple(tuple(map(float, v)) for v in norm), x.device)
    if len(mean) != x.shape[-3] or len(std) != x.shape[-3]:
        raise KDError(f"normalisation for {len(mean)}/{len(std)} channels (mean/std), images have {x.shape[-3]}")
    return x.sub_(mean).div_(std)
