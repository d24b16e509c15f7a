"""Data augmentation as batched tensor operations driven by explicit per-sample parameters.

Groundwork for the augmentation-consistent cache (K stored views per image): the parameters of
view v of sample i under augmentation seed s are a pure function of (s, v, i), drawn from a
counter-based hash, so any rank (or a later student run) rebuilds exactly the view the teacher
saw, with no communication and no stored state; they are small enough to store beside the
cached logits anyway. No PIL, no per-sample Python: one gather (or one grid_sample) per batch,
on whatever device the batch lives on.

Specs: `shift` (pad-and-crop translation, +-2 px: digits and clothes), `affine` (shift plus a
small rotation and scale), `crop-flip` (pad-4 random crop plus horizontal flip: 32x32 colour);
`rrc` (RandomResizedCrop + flip) is the image folders', made in their DataLoader workers. A spec
may add a mix (mixup, cutmix: data/mixing.py): each view then blends with its partner's view,
drawn, stored and replayed with it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .data import to_float
from .data.loading import normalize
from .data.mixing import MIX_COLUMNS, NO_MIX, MixSpec, draw_mix, mix_pixels, pairing, partners
from .errors import KDError
from .rng import uniforms  # noqa: F401 - re-exported: augmentation parameters are drawn with it

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .cache import SoftTargets
    from .config import Recipe
    from .data import CropPlan
    from .data.source import MixPlan

@dataclass(frozen=True)
class AugmentSpec:
    name: str  # none | shift | affine | crop-flip
    pad: int = 2  # shift range in pixels (pad-and-crop)
    degrees: float = 0.0  # affine: rotation range +-degrees
    scale: float = 0.0  # affine: scale range 1 +- scale
    flip: bool = False
    mix: MixSpec = NO_MIX  # each view mixed with its partner's (recipe_spec), or not

    @property
    def varies(self) -> bool:
        """Whether a sample's views differ from one another (augmented or mixed): what a K-view
        cache is for."""
        return self.name != "none" or bool(self.mix)

    @property
    def in_workers(self) -> bool:
        """Whether a streamed source's DataLoader workers make the view (rrc's crops), rather than
        the step applying parameters on the device (apply)."""
        return self.name == "rrc"

    def as_metadata(self) -> dict[str, str]:
        return {f"augment_{k}": str(v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One canonical string naming the spec and its ranges: stamped on caches and runs, so a
        cache made with other ranges under the same name is refused too; a mix follows it
        ("shift(...)+mixup(alpha=1)"; the cache stamps the two apart: teaching.cache_key)."""
        crops = self.describe_crops()
        if not self.mix:
            return crops
        return self.mix.describe() if self.name == "none" else f"{crops}+{self.mix.describe()}"

    def describe_crops(self) -> str:
        """describe() without the mix."""
        if self.name == "none":
            return "none"
        if self.name == "rrc":  # data/crops.py's ranges (torchvision's RandomResizedCrop defaults)
            return "rrc(scale=0.08-1,ratio=0.75-1.333,flip=True)"
        return f"{self.name}(pad={self.pad},degrees={self.degrees:g},scale={self.scale:g},flip={self.flip})"


SPECS = {
    "none": AugmentSpec("none", pad=0),
    "shift": AugmentSpec("shift", pad=2),
    "affine": AugmentSpec("affine", pad=2, degrees=10.0, scale=0.1),
    "crop-flip": AugmentSpec("crop-flip", pad=4, flip=True),
    # image folders only: RandomResizedCrop + flip, drawn and applied in the DataLoader workers
    # (data/crops.py, data/streamed.py), never by apply() on in-memory tensors
    "rrc": AugmentSpec("rrc", pad=0, flip=True),
}


def get_spec(name: str) -> AugmentSpec:
    if name not in SPECS:
        raise KDError(f"unknown augmentation {name!r}; choose from {', '.join(SPECS)}")
    return SPECS[name]


def recipe_spec(recipe: Recipe) -> AugmentSpec:
    """The views of a recipe (config.Recipe): its --augment, with its --mix (and --mix-alpha)."""
    spec = get_spec(recipe.augment)
    return replace(spec, mix=MixSpec(recipe.mix, float(recipe.mix_alpha))) if recipe.mix != "none" else spec


def stream_seed(kind: str, seed: int) -> int:
    """The augmentation seed of one stream of views: 'teacher' and 'student' (fresh view e in epoch
    e, from the run's seed, so a seed varies the views as it varies weights and data order) and
    'cache' (the K stored views, from --augment-seed). sha256 keeps the streams unrelated."""
    digest = hashlib.sha256(f"kd_accel/augment/{kind}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def draw_params(spec: AugmentSpec, seed: int, view: int, index: torch.Tensor) -> torch.Tensor:
    """Per-sample parameters [B, 5] float32: dx, dy (pixels), flip (0/1), angle (degrees),
    scale. Columns a spec does not use are 0 (1 for scale)."""
    u = uniforms(seed, view, index, 5)
    n = 2 * spec.pad + 1
    params = torch.zeros(len(u), 5)
    params[:, 0] = (u[:, 0] * n).floor() - spec.pad
    params[:, 1] = (u[:, 1] * n).floor() - spec.pad
    params[:, 2] = (u[:, 2] < 0.5).float() if spec.flip else 0.0
    params[:, 3] = (2 * u[:, 3] - 1) * spec.degrees
    params[:, 4] = 1 + (2 * u[:, 4] - 1) * spec.scale
    return params


def apply(spec: AugmentSpec, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """images [B, C, H, W] (any dtype) -> the augmented views, same shape and dtype.

    shift / crop-flip: zero-pad by `pad`, then crop an H x W window moved by (dx, dy): pixel
    (y, x) of the view is pixel (y - dy, x - dx) of the image, zero outside; then mirror the
    columns where flip = 1. affine: rotation and scale about the centre by grid_sample
    (bilinear), then the same integer shift."""
    if spec.name == "none":
        return images
    b, c, h, w = images.shape
    params = params.to(images.device)
    x = images
    if spec.degrees or spec.scale:
        x = _rotate_scale(x, params[:, 3], params[:, 4])
    p = spec.pad
    padded = F.pad(x, (p, p, p, p))
    dx, dy = params[:, 0].long(), params[:, 1].long()
    rows = torch.arange(h, device=x.device)[None, :] + p - dy[:, None]  # [B, H]
    cols = torch.arange(w, device=x.device)[None, :] + p - dx[:, None]  # [B, W]
    if spec.flip:
        flipped = cols.flip(1)
        cols = torch.where(params[:, 2:3].bool(), flipped, cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def _rotate_scale(x, degrees, scale):
    theta = degrees * (math.pi / 180)
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    zero = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out.to(x.dtype)


def augment(spec: AugmentSpec, images: torch.Tensor, seed: int, view: int,
            index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The view `view` of the samples `index` (their images given): params drawn, then applied.
    Returns (views, params)."""
    params = draw_params(spec, seed, view, index)
    return apply(spec, images, params), params


# Views of a data set for the training loop: the loop's batches carry sample indices, and these
# turn an epoch into its per-sample parameters and a batch into the model's input.


def make_inputs(spec: AugmentSpec, norm: tuple[Sequence[float], Sequence[float]] | None = None,
                size: Sequence[int] | None = None, interpolation: str = "bilinear") -> Callable[[dict], torch.Tensor]:
    """batch -> the model's float input: each sample's view built from the batch's "aug_params"
    (when the phase augments), mixed with its partner's view where the batch carries a mix
    (mixed_views), then scaled (and normalised per channel: `norm`), then resized to `size` (H,
    W) where the model expects another size than the data's (its preprocessing,
    models/preprocessing.py). Resizing after normalising gives what resizing first would: both
    interpolations are linear, and normalising is per channel; so does mixing before either."""
    def inputs(batch):
        if "partner_pos" in batch:
            x = normalize(mixed_views(spec, batch), norm)
        else:
            images = batch["images"]
            if "aug_params" in batch:
                images = apply(spec, images, batch["aug_params"])
            x = to_float(images, norm)
        if size is None or tuple(x.shape[-2:]) == tuple(size):
            return x
        smooth = interpolation in ("bilinear", "bicubic")
        # antialias only where it shrinks (as torchvision's Resize on tensors)
        return F.interpolate(x, size=tuple(size), mode=interpolation, align_corners=False if smooth else None,
                             antialias=smooth and x.shape[-1] > size[-1])

    return inputs


def mixed_views(spec: AugmentSpec, batch: dict) -> torch.Tensor:
    """float [B, C, H, W] in [0, 1]: each sample's view mixed with its partner's (data/mixing.py).
    The partners' images ([E, ...], E >= 0) are stacked under the batch's own ([B, ...]), made
    into views with their own parameters where the step applies them (an in-memory set's
    "aug_params"; an image folder's workers sent views), and batch["partner_pos"] [B] picks each
    sample's partner among the B + E. Mixed at the images' resolution, before any resize."""
    images = torch.cat([batch["images"], batch["partner_images"]])
    if "aug_params" in batch:
        images = apply(spec, images, torch.cat([batch["aug_params"], batch["partner_aug_params"]]))
    x = to_float(images)
    b = len(batch["images"])
    return mix_pixels(x[:b], x[batch["partner_pos"]], batch["mix"])


class DrawnViews:
    """A fresh view per epoch (view e in epoch e) of every sample, from one stream's
    counter-based generator (the teacher, the baseline, the fixed and online students): the
    in-memory augmentations and mixes as per-epoch columns of parameters the step applies on the
    device, an image folder's crops and mixes drawn in its DataLoader workers (data.ViewPlan)."""

    def __init__(self, spec: AugmentSpec, stream: int):
        self.spec, self.stream = spec, stream

    def columns(self, epoch: int, n: int, in_workers: bool = False) -> dict[str, torch.Tensor]:
        """{"aug_params": [N, 5]} of view `epoch`, and {"mix": [N, 7] int32} with a mix; nothing
        where the workers draw the view (rrc, or `in_workers`: an image folder's)."""
        if in_workers or self.spec.in_workers:
            return {}
        cols = {} if self.spec.name == "none" else {"aug_params": draw_params(self.spec, self.stream, epoch,
                                                                                torch.arange(n))}
        if self.spec.mix:
            cols["mix"] = draw_mix(self.spec.mix, self.stream, epoch, torch.arange(n), n).to(torch.int32)
        return cols

    def crops(self, view: int | None = None) -> CropPlan | None:
        """Where a streamed source's workers take each sample's crop: view `view`, or epoch e's
        view in epoch e (None); None for the in-memory augmentations."""
        from .data.streamed import DrawnCrops  # noqa: PLC0415 - the worker-side half of the same views

        return DrawnCrops(self.stream, view) if self.spec.in_workers else None

    def mixes(self, n: int, view: int | None = None) -> MixPlan | None:
        """Where a streamed source's workers take each sample's mix (of n samples), as crops();
        None without a mix."""
        from .data.streamed import DrawnMixes  # noqa: PLC0415

        return DrawnMixes(self.stream, self.spec.mix, n, view) if self.spec.mix else None

    def partners(self, epoch: int, n: int) -> torch.Tensor | None:
        """[n] each sample's mix partner in view `epoch` (None without a mix)."""
        return pairing(self.stream, epoch, n) if self.spec.mix else None


class CachedViews:
    """View e mod K of a K-view cache in epoch e (K = `views`, the run's: a cache may hold more, of
    which the run uses the first K): the parameters the teacher's view was made with (columns
    for the in-memory augmentations; for an image folder the crops and mixes its workers replay
    from the cache file) and the teacher's logits on it, so the student sees exactly what the
    teacher saw (data.ViewPlan). The stored parameters are the crop's (if any), then the mix's
    (data/mixing.py's 7 columns, if the cache's key names a mix)."""

    def __init__(self, soft: SoftTargets, views: int):
        if not 1 <= views <= soft.views:
            raise ValueError(f"the run reads {views} views, the cache holds {soft.views}")
        self.soft, self.views = soft, views
        # the cache's augmentation, by its key's canonical spec ("rrc(scale=...)": its name first)
        self.replayed_in_workers = get_spec(soft.meta.get("augment", "none").split("(")[0]).in_workers
        self.mixed = soft.meta.get("mix", "none") != "none"
        self.crop_cols = soft.params(0).shape[-1] - (len(MIX_COLUMNS) if self.mixed else 0)

    def columns(self, epoch: int, n: int, in_workers: bool = False) -> dict[str, torch.Tensor]:
        view = epoch % self.views
        cols = dict(self.soft.columns(view))
        if in_workers or self.replayed_in_workers:
            return cols
        params = self.soft.params(view)
        if not self.mixed:
            cols["aug_params"] = params
            return cols
        if self.crop_cols:
            cols["aug_params"] = params[:, :self.crop_cols]
        cols["mix"] = params[:, self.crop_cols:].to(torch.int32)  # a copy: the step reads few uint16 ops
        return cols

    def crops(self, view: int | None = None) -> CropPlan | None:
        if not self.replayed_in_workers:
            return None
        from .data.streamed import CachedCrops  # noqa: PLC0415

        return CachedCrops(self.soft.column("params"), self.views)

    def mixes(self, n: int, view: int | None = None) -> MixPlan | None:
        if not self.mixed:
            return None
        from .data.streamed import CachedMixes  # noqa: PLC0415

        return CachedMixes(self.soft.column("params"), self.views, self.crop_cols)

    def partners(self, epoch: int, n: int) -> torch.Tensor | None:
        if not self.mixed:
            return None
        return partners(self.soft.params(epoch % self.views)[:, self.crop_cols:])
