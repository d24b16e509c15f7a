"""Run configuration: four small dataclasses, each setting declared once.

A field is a setting and a command-line flag at once: its metadata holds the help text and
whatever argparse needs beyond the type (choices, bounds). `Config` groups them: the data, two
recipes (the student's, and the teacher's as a second `Recipe` under --teacher-*), the
distillation and the run. The flag of a field is its name with dashes (--batch-size), the
teacher's recipe adds "teacher-" (--teacher-epochs).

This module imports nothing from kd_accel: the choices that come from registries (data sets,
losses, augmentations, cache dtypes) and the checks against files and installed trackers are
added where the command line is built (cli.py). Presets and per-data-set defaults sit under
explicit flags; the resolved configuration is saved as config.json beside the run's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

    Groups = Mapping[str, str | None]  # Config field -> flag prefix (None: the group's own)
    Setting = dataclasses.Field[Any]


def setting(default: Any, help: str, **flag: Any) -> Any:  # Any, as dataclasses.field's
    """A field that is also a flag. `flag`: argparse keywords (choices, metavar), plus
    low/high (inclusive bounds), positive (> 0), default_text (what --help says when the
    default is None or depends on something) and path=True (a file or folder name, checked
    before any work: cli.check_path_names)."""
    return field(default=default, metadata={"help": help, **flag})


# A setting is stamped on every phase that reads its group (pipeline.PHASE_GROUPS) unless its
# declaration says why it cannot shape a result: `unstamped=REASON`; or names the only phases
# that read it: `phases=(...)` (of "teacher", "baseline", "student", "fitnets"). So a new
# setting is stamped by default, and tests/test_stamps.py checks every exemption against the
# weights it leaves unchanged.
PATH = "a path: what it names is stamped by content (data fingerprint, teacher weights, cache key)"



# kd_accel/optim.py builds them (the defaults: adam, cosine, as before these settings existed)
SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class Data:
    dataset: str = setting("mnist", "data set")
    data_dir: Optional[str] = setting(None, "folder with the data set's files", default_text="$KD_ACCEL_DATA_DIR or "
                                      "./data, downloaded there if online", unstamped=PATH, path=True)
    limit_train: Optional[int] = setting(None, "use only the first N training samples (smoke tests)", low=1)
    limit_test: Optional[int] = setting(None, "use only the first N test samples (smoke tests)", low=1)
    # limited labels: students see the hard labels of a fixed class-balanced subset only (the
    # teacher always trains on the whole set)
    train_subset: Optional[int] = setting(None, "students see hard labels of a fixed class-balanced subset of N "
                                          "samples only", low=1, phases=("baseline", "student", "fitnets"))
    # image folders (--dataset imagefolder): how the files are read (kd_accel/data/streamed.py)
    channels: Optional[int] = setting(None, "image folders: decode to 3 (RGB) or 1 (grey) channels", choices=(1, 3),
                                      default_text="3, as torchvision's ImageFolder")
    num_workers: Optional[int] = setting(None, "image folders: DataLoader worker processes decoding images, per "
                                         "process", low=0, default_text="the cores per process, at most 8",
                                         unstamped="how many processes decode the files, not what they decode")
    # Hugging Face datasets (--dataset hf, hf:NAME): which columns are read (kd_accel/data/hf.py)
    image_column: Optional[str] = setting(None, "Hugging Face datasets: the image column", default_text="image or img",
                                          unstamped="the data's fingerprint names the columns read")
    label_column: Optional[str] = setting(None, "Hugging Face datasets: the label column (a ClassLabel, or integers)",
                                          default_text="label, labels or fine_label",
                                          unstamped="the data's fingerprint names the columns read")


@dataclass
class Recipe:
    """How one model is trained. The student's defaults: 20 epochs, the best student of the study
    (docs/study.md, "How the defaults were chosen"); the teacher's are TEACHER below."""

    epochs: int = setting(20, "training epochs; a teacher's 0 takes its --teacher-weights as they are", low=0)
    batch_size: int = setting(100, "per-process batch size", low=1)
    # beyond 10 a run only fails later as "non-finite loss" (lr=1e3 blows Adam's weights up)
    lr: float = setting(1e-3, "learning rate: the peak one, reached after --warmup-epochs", positive=True, high=10.0)
    # losses.hard_term: every hard cross-entropy (teacher, baseline, the students' hard term)
    label_smoothing: float = setting(0.0, "label smoothing of the hard-label cross-entropy", low=0.0, high=1.0)
    schedule: str = setting("cosine", "learning-rate schedule", choices=SCHEDULES)
    # the optimizer and the schedule's shape (kd_accel/optim.py; combinations: optim.check_recipe)
    opt: str = setting("adam", "optimizer (adam: L2 weight decay, adamw: decoupled)", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "--opt sgd: momentum", low=0.0, high=1.0)
    nesterov: bool = setting(False, "--opt sgd: Nesterov momentum")
    weight_decay: float = setting(0.0, "weight decay, not applied to biases and norm layers (parameters of 1 "
                                  "dimension, as timm)", low=0.0)
    milestones: Optional[list[int]] = setting(None, "--schedule step: the epochs at which the lr is multiplied by "
                                              "--gamma", low=1, metavar="EPOCH", default_text="none")
    gamma: float = setting(0.1, "--schedule step: the lr's factor at each milestone", positive=True, high=1.0)
    warmup_epochs: int = setting(0, "epochs of linear lr warm-up from about 0 (per optimizer step) before the "
                                 "schedule", low=0)
    clip_grad: Optional[float] = setting(None, "clip the gradients' global L2 norm to this", positive=True,
                                         default_text="off")
    # BN statistics lag the weights by ~1/momentum steps (optim.SLOW_BN_MOMENTUM)
    precise_bn: int = setting(0, "re-estimate BatchNorm statistics on N training batches before each evaluation "
                              "and before saving (0: off)", low=0)
    # kd_accel/augment.py; the teacher's None means: the student's --augment
    augment: Optional[str] = setting("none", "augmentation of the training images")
    # function matching (Beyer et al. 2022; kd_accel/data/mixing.py): drawn per view like the
    # crops and stored in a K-view cache. The teacher's (--teacher-mix) does not follow the students'
    mix: str = setting("none", "mixing of each training view with a partner sample's own view: mixup blends the "
                       "two, cutmix pastes a box of the partner's; drawn per view like the crops, stored in a K-view "
                       "cache and replayed", choices=("none", "mixup", "cutmix"))
    mix_alpha: float = setting(1.0, "Beta(alpha, alpha) of the mixing weight lambda (1: uniform in [0, 1], "
                               "function matching)", positive=True, high=100.0)
    # a distilled student's hard term only: the teacher and the baseline learn the mixed labels
    mix_labels: str = setting("mixed", "hard labels of a distilled student's mixed image: mixed (both labels by their "
                              "shares, as timm's mixup) or none (no hard term; --alpha 1 is KL only either way)",
                              choices=("mixed", "none"), phases=("student", "fitnets"))
    # kd_accel/models: the spec is checked where the command line is built (cli.py). These five
    # are the teacher's too (--teacher-arch ...), and the student's under --student-arch as well
    arch: str = setting("notebook:student", "architecture: torchvision:NAME, timm:NAME[.TAG], notebook:teacher|"
                        "student (list them with --list-models PATTERN), or model code: module.path:callable or "
                        "path/to/file.py:callable", role_flag=True)
    # stamped by content: pipeline.resolved_settings puts the file's digest in its place
    weights: Optional[str] = setting(None, "initial weights from a local file: .pth/.pt/.bin (torch.save) or "
                                     ".safetensors; a state dict, or one under 'state_dict' or 'model'",
                                     path=True, role_flag=True)
    image_size: Optional[int] = setting(None, "input side in pixels: each view is resized to it",
                                        default_text="the weights' known size, else the data's", low=4, role_flag=True)
    normalize: Optional[str] = setting(None, "input normalisation: the data set's mean/std, or the weights' known ones",
                                       choices=("data", "weights"), default_text="the weights' where known, else the "
                                       "data's", role_flag=True)
    # models/user.py; stamped as canonical JSON (keys sorted) by pipeline.resolved_settings
    arch_kwargs: Optional[str] = setting(None, "keyword arguments of the architecture's builder or model code, a JSON "
                                         "object: '{\"depth\": 20}'", metavar="JSON", default_text="none",
                                         role_flag=True)


# The teacher's recipe in distill.py and compare.py (--teacher-*): 5 epochs of the notebook's
# teacher; FOLLOWS None follows the students' flag (the same batch size and augmentation unless
# told otherwise; not the mix: a teacher mixes only with --teacher-mix). --teacher-epochs 0 takes
# the teacher as --teacher-weights give it.
TEACHER = Recipe(epochs=5, batch_size=None, augment=None, arch="notebook:teacher")
FOLLOWS = ("batch_size", "augment")


@dataclass
class Distillation:
    kd_loss: str = setting("hinton", "distillation loss; seed-mse is the old name of notebook-mse")
    # T=4, alpha=0.9: the study's best MNIST student; Fashion-MNIST keeps T=2 (DATASET_DEFAULTS)
    # below 0.01 softmax(s/T) overflows (T=1e-40 gives a non-finite loss); far above 1000 every
    # target is uniform. Also the bounds of compare's variants (study.parse_variant).
    temperature: float = setting(4.0, "softmax temperature T", low=0.01, high=1000.0)
    alpha: float = setting(0.9, "weight of the soft loss: (1-alpha)*CE + alpha*soft (hinton, notebook-mse; dkd and "
                           "dist weigh CE by 1, as published)", low=0.0, high=1.0)
    # kd_accel/losses.py; the published defaults (docs/usage.md, "Losses"). Stamped on every
    # distilled student, as the others here, though only their own loss reads them
    logit_standardization: bool = setting(False, "z-score the teacher's and the student's logits per sample before "
                                          "the soft loss's softmax (Sun et al. 2024; they use T=2): hinton, dkd, dist")
    dkd_alpha: float = setting(1.0, "dkd: weight of the target-class term (TCKD)", low=0.0)
    dkd_beta: float = setting(8.0, "dkd: weight of the non-target term (NCKD)", low=0.0)
    dkd_warmup: int = setting(20, "dkd: epochs over which its loss ramps up linearly (0: none)", low=0)
    dist_beta: float = setting(1.0, "dist: weight of the inter-class (per-sample) Pearson term", low=0.0)
    dist_gamma: float = setting(1.0, "dist: weight of the intra-class (per-class, over the batch) Pearson term",
                                low=0.0)
    soft_targets: str = setting("all", "with --train-subset: soft targets on the whole set or the subset",
                                choices=("all", "subset"))
    # where an augmented student's soft targets come from: a K-view cache (consistent: the student
    # sees the view the teacher saw), one clean view (fixed: inconsistent), or the teacher run on
    # every batch (online)
    teacher_mode: str = setting("cache", "soft targets of an augmented student: cache (K stored views, the student "
                                "sees the teacher's view), fixed (one clean view), online (teacher every step)",
                                choices=("cache", "fixed", "online"))
    views: Optional[int] = setting(None, "augmented views per image in the cache; epoch e uses view e mod K", low=1,
                                   default_text="one per epoch")
    augment_seed: int = setting(0, "seed of the cache's augmented views")
    cache_dtype: Optional[str] = setting(None, "storage dtype of cached logits",
                                         default_text="fp32 for one un-augmented view, fp16 for augmented views")
    cache_topk: Optional[int] = setting(None, "store only the top-k teacher log-probabilities per view, the rest of "
                                        "the mass spread evenly (large label spaces)", low=1, default_text="full logits")
    # FitNets hints
    hint_mode: str = setting("two-stage", "FitNets: hint stage then KD, or both at once",
                             choices=("two-stage", "joint"), phases=("fitnets",))
    hint_epochs: int = setting(2, "FitNets two-stage: epochs of hint regression", low=1, phases=("fitnets",))
    hint_beta: float = setting(1.0, "FitNets joint: weight of the hint loss", low=0.0, phases=("fitnets",))
    baseline: bool = setting(True, "also train the baseline student (same recipe, hard labels only)",
                             unstamped="which phases run, not how one trains")


@dataclass
class Run:
    output_dir: Optional[str] = setting(None, "run folder", default_text="runs/<run-name>", unstamped=PATH,
                                        path=True, output="folder")
    run_name: Optional[str] = setting(None, "name of the run folder under runs/", default_text="the data set",
                                      unstamped=PATH, path=True, output="folder")
    # numpy's seeding (accelerate's set_seed) takes 0..2**32-1 and crashes outside it
    seed: int = setting(0, "random seed: initial weights, data order, augmented views; 0 to 2**32-1", low=0,
                        high=2**32 - 1)
    teacher: Optional[str] = setting(None, "teacher checkpoint (safetensors)", unstamped=PATH, path=True)
    logits: Optional[str] = setting(None, "teacher-logits cache (safetensors)", unstamped=PATH, path=True)
    out: Optional[str] = setting(None, "where to write the cache", default_text="<output-dir>/teacher_logits*.safetensors",
                                 unstamped=PATH, path=True, output="cache")
    mixed_precision: Optional[str] = setting(None, "override Accelerate's mixed precision", choices=("no", "fp16", "bf16"))
    grad_accum: int = setting(1, "micro-batches per optimizer step, via accelerator.accumulate", low=1)
    checkpoint_every: Optional[str] = setting(None, "save resumable state every N optimizer steps, or 'epoch'",
                                              default_text="off", unstamped="when state is saved, not what")
    keep_checkpoints: int = setting(3, "how many checkpoints to keep per phase", low=1,
                                    unstamped="how many saved states are kept")
    resume: Optional[str] = setting(None, "'latest' (the run folder's newest checkpoint, or a fresh start) or a "
                                    "checkpoint folder", unstamped="continues the same run", path=True)
    # other conv/BN kernels: the weights differ in the last bits (tests/test_stamps.py), so stamped
    channels_last: bool = setting(True, "channels-last memory format for conv/BN (faster kernels on CPU)")
    compile: bool = setting(False, "torch.compile the models (Accelerate's dynamo backend 'inductor')")
    # GPUs only change with it (CPU runs are repeatable as they are); stamped all the same: on a
    # GPU it changes the arithmetic (TF32 convolutions off)
    deterministic: bool = setting(False, "deterministic kernels (cuDNN deterministic, no TF32, torch."
                                  "use_deterministic_algorithms): bit-identical resume and process-count equivalence "
                                  "on GPUs, slower")
    report_to: str = setting("none", "log losses, lr and accuracy per phase to Accelerate trackers; 'all': every one "
                             "installed", unstamped="what is logged, not what is trained")
    quiet: bool = setting(False, "no progress bar (terminal) or progress lines (log files) inside a phase",
                          unstamped="what is printed, not what is trained")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / (self.run_name or "run"))


@dataclass
class Config:
    data: Data = field(default_factory=Data)
    student: Recipe = field(default_factory=Recipe)
    teacher: Recipe = field(default_factory=lambda: dataclasses.replace(TEACHER))
    kd: Distillation = field(default_factory=Distillation)
    run: Run = field(default_factory=Run)
    preset: str = "default"

    def __post_init__(self) -> None:
        # the teacher's unset settings follow the students' (TEACHER: batch size, augmentation)
        unset = {name: getattr(self.student, name) for name in FOLLOWS if getattr(self.teacher, name) is None}
        if unset:
            self.teacher = dataclasses.replace(self.teacher, **unset)
        if self.run.output_dir is None and self.run.run_name is None:
            # hf:user/name -> runs/hf-user-name: one folder, no colon in a path
            self.run = dataclasses.replace(self.run, run_name=self.data.dataset.replace(":", "-").replace("/", "-"))

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}


# Flag groups: Config field -> (dataclass, flag prefix). A flag's dest is prefix + field name.
GROUPS = {"data": (Data, ""), "student": (Recipe, ""), "teacher": (Recipe, "teacher_"), "kd": (Distillation, ""),
          "run": (Run, "")}


def group_default(group: str) -> Data | Recipe | Distillation | Run:
    """A group's declared defaults (the teacher's: TEACHER, whose None values follow the students')."""
    return dataclasses.replace(TEACHER) if group == "teacher" else GROUPS[group][0]()


# The notebook's recipe, loss and hyper-parameters, to reproduce it (docs/usage.md, "Presets"),
# by flag dest.
PRESETS = {
    "default": {},
    "notebook": dict(
        epochs=5, teacher_epochs=5, batch_size=100, lr=1e-3, teacher_lr=1e-3,
        schedule="constant", teacher_schedule="constant",
        kd_loss="notebook-mse", temperature=1.5, alpha=0.6,
    ),
}

# Per-data-set defaults, measured by the study (docs/study.md): on Fashion-MNIST, whose teacher is
# unsure (mean max-prob 0.93 at T=1), T=4 gains nothing over the baseline at 20 epochs and T=2 is
# significantly better (re-run: +0.222, p = 0.020). CIFAR-10 is unusable without random crops and
# flips (the notebook's exercise). A preset and an explicit flag both override these.
DATASET_DEFAULTS = {
    "fashion-mnist": dict(temperature=2.0),
    "cifar10": dict(augment="crop-flip"),
    "cifar100": dict(augment="crop-flip"),  # the CRD/DKD protocol's random crop (pad 4) + flip
    "imagefolder": dict(augment="rrc"),  # torchvision's reference: RandomResizedCrop + flip
    "hf": dict(augment="rrc"),  # Hugging Face datasets (and hf:NAME): read as image folders are
}


def flag_fields(group: str) -> list[tuple[str, Setting, type]]:
    """[(dest, dataclasses.Field, python type)] of one group, in declaration order."""
    cls, prefix = GROUPS[group]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        out.append((prefix + f.name, f, args[0] if args else kind))
    return out


def _help(f, default, dest, per_dataset, prefix):
    meta = f.metadata
    text = meta["help"]
    shown = meta.get("default_text") or (None if default is None else "%(default)s")
    if prefix == "teacher_":  # the teacher's recipe: say so, and that None follows the students' flag
        text = "the teacher's " + text
        shown = f"--{f.name.replace('_', '-')}" if default is None and f.name in FOLLOWS else shown
    extra = "; ".join(f"{v} for {ds}" for ds, v in per_dataset.get(dest, {}).items())
    if shown:
        text += f" (default: {shown}{'; ' + extra if extra else ''})"
    return text


def add_flags(parser: argparse.ArgumentParser, groups: Groups, choices: Mapping[str, Sequence[object]] | None = None,
              types: Mapping[str, Callable[[str], object]] | None = None, defaults: Mapping[str, object] | None = None,
              only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """Add the flags of `groups` ({Config field: flag prefix or None for the group's own}) to an
    argparse parser: all of them, or those whose dest is in `only`. `choices` / `types` ({dest:
    ...}) come from the registries, which only the command-line builder knows; `defaults`
    overrides declared defaults by dest."""
    choices, types, defaults = choices or {}, types or {}, defaults or {}
    per_dataset = {}
    for ds, values in DATASET_DEFAULTS.items():
        for dest, v in values.items():
            per_dataset.setdefault(dest, {})[ds] = v
    for group, prefix in groups.items():
        base = group_default(group)
        own = GROUPS[group][1] if prefix is None else prefix
        for dest, f, kind in flag_fields(group):
            dest = own + f.name
            if only is not None and dest not in only:
                continue
            default = defaults.get(dest, getattr(base, f.name))
            kw = {k: v for k, v in f.metadata.items() if k in ("choices", "metavar")}
            if dest in choices:
                kw["choices"] = choices[dest]
            if kind is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(kind) in (list, tuple):  # list[int]: --milestones 150 180 210
                kw["nargs"], kw["type"] = "+", types.get(dest, typing.get_args(kind)[0])
            else:
                kw["type"] = types.get(dest, kind)
            flags = ["--" + dest.replace("_", "-")]
            if f.metadata.get("role_flag") and not own:  # the group's own spelling too: --student-arch
                flags.append(f"--{group}-{f.name}".replace("_", "-"))
            action = parser.add_argument(*flags, dest=dest, default=default,
                                         help=_help(f, default, dest, per_dataset, own), **kw)
            action.output = f.metadata.get("output")  # the kind of file or folder it names, for outputs flags
    return parser


ALL_GROUPS = {group: None for group in GROUPS}


def from_args(args: Mapping[str, Any], groups: Groups = ALL_GROUPS) -> Config:
    """A Config from parsed flags (a dict by dest) of `groups` (as add_flags got them); the
    groups without flags keep their defaults."""
    parts = {}
    for group, prefix in groups.items():
        values = {}
        for dest, f, _ in flag_fields(group):
            dest = (prefix + f.name) if prefix is not None else dest
            if dest in args:
                values[f.name] = args[dest]
        parts[group] = dataclasses.replace(group_default(group), **values)
    return Config(**parts, preset=args.get("preset", "default"))


def from_flags(**flags: Any) -> Config:
    """A Config as the command line would give it for these flags (by dest: epochs=1,
    teacher_epochs=2, ...), without parsing, defaults layering or checks: for code and tests."""
    known = {dest for group in GROUPS for dest, _, _ in flag_fields(group)} | {"preset"}
    unknown = set(flags) - known
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    return from_args(flags)


def with_flags(cfg: Config, **flags: Any) -> Config:
    """`cfg` with some settings changed, named by flag dest (epochs=..., teacher_lr=...)."""
    where = {dest: (group, f.name) for group in GROUPS for dest, f, _ in flag_fields(group)}
    unknown = set(flags) - set(where)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    parts = {}
    for dest, value in flags.items():
        group, name = where[dest]
        parts.setdefault(group, {})[name] = value
    return dataclasses.replace(cfg, **{g: dataclasses.replace(getattr(cfg, g), **v) for g, v in parts.items()})


def layered_defaults(dataset: str | None, preset: str) -> dict[str, Any]:
    """The defaults under explicit flags, by dest: the data set's measured ones, then the preset's."""
    family = dataset.split(":")[0] if dataset else dataset  # hf:NAME takes hf's
    return {**DATASET_DEFAULTS.get(family, {}), **PRESETS[preset]}


def _declared(group, name):
    """The metadata one setting was declared with (help, choices, bounds)."""
    return next(f for f in dataclasses.fields(GROUPS[group][0]) if f.name == name).metadata


def setting_choices(group: str, name: str) -> tuple[Any, ...]:
    """The choices a setting declares (e.g. Distillation.teacher_mode), for code that checks the
    same values outside argparse (compare's variants)."""
    return _declared(group, name)["choices"]


def _number(value):
    # integers in full: :g shows 2**32 as 4.29497e+09, which reads as inside the seed's bounds
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_setting(group: str, name: str, value: object, flag: str | None = None) -> None:
    """The declared bounds of one setting (finite, low/high, positive), one line per problem."""
    meta = _declared(group, name)
    flag = flag or "--" + (GROUPS[group][1] + name).replace("_", "-")
    if isinstance(value, (list, tuple)):  # a list setting's bounds are each element's
        for v in value:
            check_setting(group, name, v, flag)
        return
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, float) and not math.isfinite(value):  # inf and nan slip through every comparison
        raise ValueError(f"{flag} must be a finite number, got {value}")
    low, high, shown = meta.get("low"), meta.get("high"), _number(value)
    if meta.get("positive") and not value > 0:
        raise ValueError(f"{flag} must be > 0, got {shown}")
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{flag} must be between {_number(low)} and {_number(high)}, got {shown}")
    if low is not None and not value >= low:
        raise ValueError(f"{flag} must be >= {_number(low)}, got {shown}")
    if high is not None and not value <= high:
        raise ValueError(f"{flag} must be at most {_number(high)}, got {shown}")


def stamped_fields(group: str, phase: str) -> list[str]:
    """The names of the settings of `group` that a `phase` stamps: all but the unstamped ones
    and those declared for other phases only."""
    return [f.name for f in dataclasses.fields(GROUPS[group][0])
            if not f.metadata.get("unstamped") and phase in f.metadata.get("phases", (phase,))]


def settings_with_flags(cfg: Config, groups: Groups = ALL_GROUPS) -> Iterator[tuple[str, str, Setting, Any]]:
    """(group, flag, declared field, value) of every setting of `cfg` in `groups`, each flag
    spelled as `groups` gives it (train_teacher.py's --epochs is the teacher's)."""
    for group, prefix in groups.items():
        own = GROUPS[group][1] if prefix is None else prefix
        for f in dataclasses.fields(GROUPS[group][0]):
            yield group, "--" + (own + f.name).replace("_", "-"), f, getattr(getattr(cfg, group), f.name)


def check_bounds(cfg: Config, groups: Groups = ALL_GROUPS) -> None:
    """Every setting of `cfg` within its declared bounds (ValueError, one line, naming the flag)."""
    for group, flag, f, value in settings_with_flags(cfg, groups):
        check_setting(group, f.name, value, flag)
