"""What every data source is to the rest of kd_accel: one annotated interface (typing.Protocol),
implemented by the in-memory sets (memory.Split: MNIST, Fashion-MNIST, CIFAR-10 held as one
uint8 tensor) and the streamed image folders (streamed.FolderSplit: files decoded in DataLoader
workers). Callers hold a DataSource and never ask which kind it is.

A phase's views come from above the data layer (augment.DrawnViews, augment.CachedViews, the soft
targets): a ViewPlan says, epoch by epoch, which columns change (augmentation and mix parameters
the step applies on the device, a cache's teacher logits) and where a streamed source's workers
take each sample's crop and mix. Each kind takes what applies to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


@runtime_checkable
class CropPlan(Protocol):
    """Where a streamed source's DataLoader workers take each sample's view (picklable: it
    travels to the workers): params(epochs, idx, heights, widths) -> uint16 [B, 5] crops, or None
    for the centre crop."""

    def params(self, epochs: list[int] | None, idx: Any, heights: torch.Tensor,
               widths: torch.Tensor) -> torch.Tensor | None: ...


@runtime_checkable
class MixPlan(Protocol):
    """Where a streamed source's DataLoader workers take each sample's mix (picklable, as
    CropPlan): params(epochs, idx) -> int32 [B, 7] (data/mixing.py's MIX_COLUMNS)."""

    def params(self, epochs: list[int] | None, idx: Any) -> torch.Tensor: ...


@runtime_checkable
class ViewPlan(Protocol):
    """How a phase's samples are viewed, epoch by epoch."""

    def columns(self, epoch: int, n: int, in_workers: bool = False) -> dict[str, torch.Tensor]:
        """Columns [n, ...] for epoch `epoch`, gathered with each batch by sample index: a cache's
        logits and, unless the view is made in a streamed source's workers (`in_workers`), the
        parameters the step applies ("aug_params" [n, P], "mix" [n, 7] int32)."""
        ...

    def crops(self, view: int | None = None) -> CropPlan | None:
        """A streamed source's crops: view `view` of every sample, or epoch e's view in epoch e
        (None); None where the view is not made in the workers."""
        ...

    def mixes(self, n: int, view: int | None = None) -> MixPlan | None:
        """A streamed source's mixes (of n samples), as crops(); None without a mix."""
        ...

    def partners(self, epoch: int, n: int) -> torch.Tensor | None:
        """[n] int64: each sample's mix partner in epoch `epoch`'s view (a streamed source keeps
        pairs in one batch: loading.pair_order); None without a mix."""
        ...


@runtime_checkable
class TrainData(Protocol):
    """What training.fit reads of a source: a loader of batches in a seeded epoch order, the
    epoch's columns, and each batch completed where a source gathers columns outside its loader."""

    def loader(self, accelerator: Accelerator, batch_size: int, seed: int) -> Any: ...

    def set_epoch(self, epoch: int) -> None: ...

    def complete(self, batch: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class DataSource(Protocol):
    """One split of a data set."""

    dataset: str  # the data set's name ("mnist", "imagefolder", ...)
    split: str  # "train" or "test"
    num_classes: int
    labels: torch.Tensor  # [N] int64
    norm: tuple | None  # the data's own (mean, std), None: pixels scaled to [0, 1]

    def __len__(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, int, int]: ...

    def subset(self, n: int | None) -> DataSource:
        """The first n samples (--limit-train/--limit-test); indices stay 0..n-1."""
        ...

    def at(self, prep: dict) -> DataSource:
        """This split as the model of preprocessing record `prep` reads it."""
        ...

    def fingerprint(self) -> str:
        """Its identity, stamped on caches, checkpoints and models."""
        ...

    def check_augment(self, spec: Any) -> None:
        """One line when an augmentation does not apply to this kind of data."""
        ...

    def check_options(self, channels: int | None, num_workers: int | None, train_subset: int | None) -> None:
        """One line when a data setting does not apply to this kind of data."""
        ...

    def inference_loader(self, accelerator: Accelerator, batch_size: int, views: ViewPlan | None = None,
                         view: int = 0) -> Any:
        """Every sample once, in index order (each rank its shard once prepared), as view `view`
        of `views` (None: the samples as they are; an image folder: the centre crop)."""
        ...

    def view_params(self, spec: Any) -> tuple[str, torch.dtype, int] | None:
        """(batch column, dtype, count) of a view's parameters as a cache stores them (the
        in-memory augmentations' float32 "aug_params", an image folder's uint16 "crops"), or
        None when the spec stores none."""
        ...

    def identity_columns(self) -> dict[str, Any]:
        """What a cache keeps of these data beyond their fingerprint, to name a change later (an
        image folder's class list, file hashes and paths); {} where the fingerprint says all."""
        ...

    def explain_identity(self, stored: dict[str, Any]) -> str | None:
        """One line: how these data differ from those a cache's `stored` identity describes."""
        ...

    def train_data(self, views: ViewPlan | None = None, extra: dict[str, torch.Tensor] | None = None) -> TrainData:
        """What training.fit reads: `views` the phase's (None: the samples as they are), `extra`
        columns [N, ...] gathered by sample index."""
        ...

    def remember(self, run_dir: Path) -> None:
        """Keep in the run folder what a later run needs to name a change of these data (main
        process, before the others call use_records)."""
        ...

    def use_records(self, run_dir: Path) -> None:
        """Check what is read from now on against the run folder's records (every process)."""
        ...

    def expect_content(self, soft: Any) -> None:
        """A cache's record of the content it was made from, checked against this run's."""
        ...

    def explain_change(self, run_dir: Path, old_fingerprint: str) -> str | None:
        """One line: how these data differ from those of `old_fingerprint`, where known."""
        ...

    def threads_line(self, device: torch.device) -> str | None:
        """What a run reading these data says of its CPU threads, beyond what the Accelerator's
        set-up said (data.reads_in_workers: a streamed source, whose workers share the cores, says
        the one line itself); None: nothing more."""
        ...
