"""Multi-seed comparisons of students (does distillation help, and by how much) and the
temperature inspection of a cache. Tables are plain text/markdown; plots need matplotlib
(`pip install -e '.[plots]'`) and are skipped with a note without it."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .augment import SPECS as AUGMENTS
from .config import ALL_GROUPS, GROUPS, check_setting, flag_fields, setting_choices, with_flags
from .errors import KDError
from .io import atomic_path, write_json
from .losses import KD_LOSSES, LOSS_ALIASES, loss_name
from .models import parse_arch
from .pipeline import train_student
from .recipes import declared, flag_value, setting_actions
from .reporting import epoch_accuracies
from .roles import TeacherId
from .stats import mean, paired_ci, std
from .teaching import cache_path, cache_views, ignored_cache_settings, resolve_soft_targets

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from accelerate import Accelerator

    from .config import Config
    from .data import DataSource

    Runs = Mapping[str, Mapping[int, Mapping[str, Any]]]  # variant name -> seed -> the phase's info
    Summary = Mapping[str, Mapping[str, Any]]  # variant name -> its row (summarize)


@dataclass(frozen=True)
class Hints:
    """FitNets: hint stage then KD ('two-stage', `epochs` of hints) or both at once ('joint',
    the hint loss weighted by `beta`)."""

    mode: str = "two-stage"
    epochs: int = 2
    beta: float = 1.0


@dataclass(frozen=True)
class Variant:
    """One kind of student in a comparison, as a record: 'baseline' (hard labels), a KD loss
    ('hinton', 'notebook-mse') with its T and alpha, or 'fitnets' (hints + Hinton KD); each with
    its own augmentation and, distilled, the source of its soft targets when given (None: the
    run's)."""

    kind: str
    temperature: float | None = None
    alpha: float | None = None
    hints: Hints | None = None
    augment: str | None = None
    teacher_mode: str | None = None
    views: int | None = None
    topk: int | None = None  # soft targets from a top-k cache (cache.compress_topk)
    arch: str | None = None  # the student's architecture (models/zoo.py spec); None: the run's --student-arch
    # any other declared student or distillation setting, by flag dest, in the spec's order
    # (('opt', 'sgd'), ('weight_decay', 0.0005)); list values as tuples, so the record stays hashable
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def distilled(self) -> bool:
        return self.kind != "baseline"

    @property
    def kd_loss(self) -> str | None:
        return {"baseline": None, "fitnets": "hinton"}.get(self.kind, self.kind)

    @property
    def name(self) -> str:
        """The name tables, plots and checkpoint folders use (stable: published results use it)."""
        suffix = "".join(f" {key}={value}" for key, value in (("augment", self.augment),
                         ("teacher", self.teacher_mode), ("K", self.views), ("topk", self.topk), ("arch", self.arch))
                         if value is not None)
        suffix += "".join(f" {dest.replace('_', '-')}={_shown(value)}" for dest, value in self.settings)
        if not self.distilled:
            return "baseline" + suffix
        kd = f"T={self.temperature:g} a={self.alpha:g}{suffix}"
        if self.hints is None:
            return f"{self.kind} {kd}"
        how = f"{self.hints.epochs} hint epochs" if self.hints.mode == "two-stage" else f"joint beta={self.hints.beta:g}"
        return f"fitnets ({how}) {kd}"

    def apply(self, cfg: Config) -> Config:
        """The run's Config with this variant's settings."""
        student = dataclasses.replace(cfg.student, **{k: v for k, v in (("augment", self.augment), ("arch", self.arch))
                                                      if v is not None})
        kd = cfg.kd
        if self.distilled:
            kd = dataclasses.replace(kd, kd_loss=self.kd_loss, temperature=self.temperature, alpha=self.alpha,
                                     **({"teacher_mode": self.teacher_mode} if self.teacher_mode else {}),
                                     **({"views": self.views} if self.views else {}),
                                     **({"cache_topk": self.topk} if self.topk else {}))
        if self.hints:
            kd = dataclasses.replace(kd, hint_mode=self.hints.mode, hint_epochs=self.hints.epochs,
                                     hint_beta=self.hints.beta)
        cfg = dataclasses.replace(cfg, student=student, kd=kd)
        return with_flags(cfg, **{dest: list(v) if isinstance(v, tuple) else v for dest, v in self.settings})


def _shown(value):
    """A setting's value in a variant's name: as the spec writes it (lists with commas)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(_shown, value))
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


# the heads of a spec besides the KD losses (losses.KD_LOSSES, and their old names): a new loss
# is a variant head with nothing to add here
_HEADS = ("baseline", "fitnets")
# spec key -> (Variant field or Hints field, type, kinds that take it)
_KEYS = {"T": ("temperature", float), "temperature": ("temperature", float), "a": ("alpha", float),
         "alpha": ("alpha", float), "augment": ("augment", str), "teacher": ("teacher_mode", str), "K": ("views", int),
         "topk": ("topk", int), "arch": ("arch", str)}
_STUDENT_KEYS = ("augment", "arch")  # what a baseline takes too
_HINT_KEYS = {"mode": ("mode", str), "hint_epochs": ("epochs", int), "beta": ("beta", float)}
_TEACHER_MODES = setting_choices("kd", "teacher_mode")  # declared once, with --teacher-mode
# the settings (flag dests) the keys above stand for: their flag names reach the same fields, so a
# variant's name and its shared cache stay one whichever spelling a spec uses
_KEY_OF = {"teacher_mode": "teacher", "views": "K", "cache_topk": "topk", "hint_mode": "mode", "hint_beta": "beta"}
_LOSS_KEYS = ("loss", "kd_loss")  # hinton:loss=dkd is dkd; the head names the loss otherwise
NOT_PER_VARIANT = ("baseline",)  # --baseline: which phases distill.py runs, not how a student trains


def variant_heads() -> list[str]:
    """What a variant spec may begin with, as its refusal lists them."""
    return ["baseline", *KD_LOSSES, *LOSS_ALIASES, "fitnets"]


def variant_settings(distilled: bool) -> list[str]:
    """The flag dests a variant may set by flag name: every declared student setting (a
    baseline's too) and, distilled, every distillation setting; less those with a key of their
    own above and NOT_PER_VARIANT."""
    groups = ("student", "kd") if distilled else ("student",)
    return [GROUPS[g][1] + f.name for g in groups for _, f, _ in flag_fields(g)
            if f.name not in (*_KEY_OF, *_KEYS, *_HINT_KEYS, *_LOSS_KEYS, *NOT_PER_VARIANT)]


def _kind(spec, head, parts):
    """The variant's kind: its head (a loss by its current name), or the loss a loss= key names."""
    kind, heads = loss_name(head), [*_HEADS, *KD_LOSSES]
    if kind not in heads:
        raise KDError(f"bad variant {spec!r}: begins with one of {', '.join(variant_heads())}, then ':key=value,...'")
    losses = [val for key, _, val in parts if key.replace("-", "_") in _LOSS_KEYS]
    if losses and kind in _HEADS:
        raise KDError(f"bad variant {spec!r}: loss= chooses the loss of a KD variant (hinton:loss=dkd), not of {kind}")
    if losses and loss_name(losses[-1]) not in KD_LOSSES:
        raise KDError(f"bad variant {spec!r}: loss is one of {', '.join(KD_LOSSES)}")
    return loss_name(losses[-1]) if losses else kind


@functools.cache
def _flags():
    """{dest: argparse action} of compare.py's flags: a variant's setting is converted and checked
    as its flag would be (type, choices, bounds). Imported here: cli imports this module."""
    from .cli import compare_parser

    return {a.dest: a for a in setting_actions(compare_parser())}


def _setting(spec, kind, key, val):
    """(dest, value) of a generic `key=val` of a variant spec, or KDError naming it."""
    dest, distilled = key.replace("-", "_"), kind != "baseline"
    if dest not in variant_settings(distilled):
        if dest in variant_settings(True):
            raise KDError(f"bad variant {spec!r}: {key} is a distillation setting; a baseline takes student settings "
                          "only")
        keys = [*(_KEYS if distilled else _STUDENT_KEYS), *(d.replace("_", "-") for d in variant_settings(distilled))]
        close = difflib.get_close_matches(key, keys, n=3)
        raise KDError(f"bad variant {spec!r}: unknown setting {key}" + (f"; did you mean {', '.join(close)}?" if close
                                                                        else ""))
    value = flag_value(_flags()[dest], val, f"bad variant {spec!r}: {key}", declared(ALL_GROUPS).get(dest))
    return dest, tuple(value) if isinstance(value, list) else value


def parse_variant(spec: str, cfg: Config) -> Variant:
    """A Variant from its spec: 'baseline', 'hinton' (the run's T/alpha), 'hinton:T=4,alpha=0.9',
    'notebook-mse' (the notebook's loss, also by its old name 'seed-mse'; T=1.5, alpha=0.6 unless
    given), any other KD loss by name ('dkd:T=4'; or 'hinton:loss=dkd'),
    'fitnets[:T=..,alpha=..,mode=two-stage|joint,hint_epochs=..,beta=..]' (hints + Hinton
    KD). Any may add augment=NAME, a distilled one teacher=cache|fixed|online, K=views and
    topk=k (soft targets stored as the top k log-probabilities), e.g.
    'baseline:augment=shift' or 'hinton:T=4,alpha=0.9,augment=shift,teacher=cache,K=20'; and any
    arch=SPEC, the student's architecture ('baseline:arch=torchvision:mobilenet_v3_small'), so one
    study compares student architectures (their own baselines beside them). Any other student
    setting, and a distilled one's distillation settings, by flag name, converted and checked as
    the flag is: 'hinton:opt=sgd,weight-decay=5e-4', 'baseline:mix=mixup', 'baseline:milestones=3 6'
    (variant_settings)."""
    head, _, args = spec.partition(":")
    parts = [tuple(x.strip() for x in part.partition("=")) for part in filter(None, args.split(","))]
    kind = _kind(spec, head, parts)
    k = cfg.kd
    values = dict(zip(("temperature", "alpha"), (1.5, 0.6) if kind == "notebook-mse" else (k.temperature, k.alpha)))
    hints = {"mode": k.hint_mode, "epochs": k.hint_epochs, "beta": k.hint_beta}
    settings, seen = {}, set()
    for key, eq, val in parts:
        norm = key.replace("-", "_")
        name = _KEY_OF.get(norm) or (norm if norm in _HINT_KEYS else key)  # a flag name of a keyed field: its key
        if not (key and eq):
            raise KDError(f"bad variant {spec!r}: {key!r} is not key=value")
        if norm in _LOSS_KEYS:
            continue
        try:
            if name in _KEYS and (kind != "baseline" or name in _STUDENT_KEYS):
                field, cast = _KEYS[name]
                values[field] = cast(val)
            elif name in _HINT_KEYS and kind == "fitnets":
                hint, cast = _HINT_KEYS[name]
                hints[hint], field = cast(val), f"hint {hint}"  # its own name in `seen`: hint epochs, not epochs
            else:
                field, settings[field] = _setting(spec, kind, key, val)
        except ValueError:
            raise KDError(f"bad variant {spec!r}: unknown or malformed {key}={val}") from None
        if field in seen:
            raise KDError(f"bad variant {spec!r}: {key} sets what an earlier key set; give it once")
        seen.add(field)
    if values.get("augment", "none") not in AUGMENTS or values.get("teacher_mode", "cache") not in _TEACHER_MODES \
            or values.get("views", 1) < 1 or values.get("topk", 1) < 1:
        raise KDError(f"bad variant {spec!r}: augment is one of {', '.join(AUGMENTS)}, teacher one of "
                      f"{', '.join(_TEACHER_MODES)}, K >= 1, topk >= 1")
    if "arch" in values:
        try:
            parse_arch(values["arch"])
        except KDError as e:
            raise KDError(f"bad variant {spec!r}: {e}") from None
    if kind == "baseline":
        return Variant("baseline", augment=values.get("augment"), arch=values.get("arch"),
                       settings=tuple(settings.items()))
    try:  # the bounds --temperature, --alpha and --hint-beta have (config.py)
        check_setting("kd", "temperature", values["temperature"], f"bad variant {spec!r}: T")
        check_setting("kd", "alpha", values["alpha"], f"bad variant {spec!r}: alpha")
        check_setting("kd", "hint_beta", hints["beta"], f"bad variant {spec!r}: beta")
    except ValueError as e:
        raise KDError(str(e)) from None
    if kind == "fitnets" and (hints["mode"] not in ("two-stage", "joint") or hints["epochs"] < 1):
        raise KDError(f"bad variant {spec!r}: mode is two-stage or joint, hint_epochs >= 1")
    variant = Variant(kind, hints=Hints(**hints) if kind == "fitnets" else None, settings=tuple(settings.items()),
                      **values)
    # K= and topk= where this variant reads no K-view cache or no cache at all (K is --views)
    ignored = ignored_cache_settings(variant.apply(cfg))
    for key, name in (("views", "views"), ("topk", "cache_topk")):
        if key in values and name in ignored:
            raise KDError(f"bad variant {spec!r}: {ignored[name]}")
    return variant


def summarize(runs: Runs, baseline: str = "baseline") -> dict[str, dict[str, Any]]:
    """runs: {variant name: {seed: info}} -> {variant: stats}; gains are paired by seed."""
    out = {}
    base = runs.get(baseline, {})
    for name, by_seed in runs.items():
        accs = [by_seed[s]["test_accuracy"] for s in sorted(by_seed)]
        row = {"n": len(accs), "mean": mean(accs), "std": std(accs), "accuracies": accs,
               "train_time_s": mean([by_seed[s]["train_time_s"] for s in by_seed])}
        best = [epoch_accuracies(by_seed[s]).get("best_test_accuracy") for s in sorted(by_seed)]
        if None not in best:  # the accuracies above are the last epoch's: the result; these are optimistic
            row["best_epoch_mean"] = mean(best)
        shared = sorted(set(by_seed) & set(base))
        if name != baseline and shared:
            diffs = [by_seed[s]["test_accuracy"] - base[s]["test_accuracy"] for s in shared]
            row["gain"] = paired_ci(diffs)
        out[name] = row
    return out


def markdown_table(summary: Summary, title: str = "") -> str:
    """The comparison's table: accuracies of the last epoch (the result), and, where each seed's
    history is known, the mean of the best epochs' in a last column, said to be optimistic."""
    best = any("best_epoch_mean" in r for r in summary.values())
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | seeds | test acc (mean ± std) | gain over baseline [95% CI] | p (paired t) | train time |"
              + " best-epoch acc (mean) |" * best, "| --- | --- | --- | --- | --- | --- |" + " --- |" * best]
    for name, r in summary.items():
        g = r.get("gain")
        gain = "-" if not g else f"{g['mean']:+.3f}" + (f" [{g['low']:+.3f}, {g['high']:+.3f}]" if g["p"] is not None else "")
        p = "-" if not g or g["p"] is None else "< 0.001" if g["p"] < 0.001 else f"{g['p']:.3f}"
        cells = f"| {name} | {r['n']} | {r['mean']:.3f} ± {r['std']:.3f} | {gain} | {p} | {r['train_time_s']:.1f}s |"
        lines.append(cells + (f" {r['best_epoch_mean']:.3f} |" if "best_epoch_mean" in r else " - |") * best)
    if best:
        lines += ["", "Test accuracies are the last epoch's. Best-epoch: each seed's highest test accuracy over its "
                      "epochs, picked on the test set, so optimistic (as published best-epoch figures)."]
    return "\n".join(lines) + "\n"


def grid_matrix(summary: Summary, variants: Iterable[Variant]) -> str:
    """The plain Hinton variants of a comparison (no hints, no augmentation keys) as a T x alpha
    matrix of 'gain (p)' in markdown, or '' when fewer than two such cells were run. Bold:
    significant at 5% (paired t)."""
    cells = {}
    for v in variants:
        plain = v.kind == "hinton" and v.augment is None and v.teacher_mode is None and v.views is None \
            and not v.settings
        if plain and "gain" in summary.get(v.name, {}):
            cells[v.temperature, v.alpha] = summary[v.name]["gain"]
    if len(cells) < 2:
        return ""
    ts, alphas = sorted({t for t, _ in cells}), sorted({a for _, a in cells})
    lines = ["Gain of Hinton KD over the baseline, percentage points (p, paired t); **bold**: p < 0.05", "",
             "| T \\ α | " + " | ".join(f"{a:g}" for a in alphas) + " |", "| --- |" + " --- |" * len(alphas)]
    for t in ts:
        row = []
        for a in alphas:
            g = cells.get((t, a))
            p = "-" if not g or g["p"] is None else "<0.001" if g["p"] < 0.001 else format(g["p"], ".3f")
            txt = f"{g['mean']:+.3f} ({p})" if g else "-"
            row.append(f"**{txt}**" if g and g["p"] is not None and g["p"] < 0.05 else txt)
        lines.append(f"| {t:g} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def curve_variants(runs: Runs, baseline: str = "baseline", most: int = 6) -> list[str]:
    """Which variants a curve plot shows: all of them up to `most`, else the baseline and the
    best `most - 1` by final mean accuracy (a plot of 15 bands is unreadable)."""
    if len(runs) <= most:
        return list(runs)
    final = {k: mean([v["test_accuracy"] for v in by_seed.values()]) for k, by_seed in runs.items() if k != baseline}
    best = sorted(final, key=final.get, reverse=True)[: most - (baseline in runs)]
    return [k for k in runs if k == baseline or k in best]


def plot_curves(runs: Runs, path: Path | str, title: str = "") -> bool:
    """Test accuracy per epoch, mean over seeds with a min-max band, one line per variant
    (the baseline and the best five when more were compared)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = curve_variants(runs)
    if len(shown) < len(runs):
        title += f" (baseline + best {len(shown) - 1} of {len(runs) - 1})"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in shown:
        by_seed = runs[name]
        curves = torch.tensor([[e["test_accuracy"] for e in info["epochs"]] for info in by_seed.values()])
        epochs = range(1, curves.shape[1] + 1)
        ax.plot(epochs, curves.mean(0), marker="o", label=f"{name} (n={len(curves)})")
        ax.fill_between(epochs, curves.min(0).values, curves.max(0).values, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def temperature_stats(logits: torch.Tensor, temperatures: Iterable[float]) -> list[dict[str, float]]:
    """Mean entropy (nats) and mean max-probability of softmax(logits / T) for each T."""
    x = logits.float()
    rows = []
    for t in temperatures:
        logp = torch.log_softmax(x / t, dim=-1)
        p = logp.exp()
        rows.append({"T": t, "mean_entropy": float(-(p * logp).sum(-1).mean()),
                     "mean_max_prob": float(p.max(-1).values.mean())})
    return rows


def plot_temperature(rows: Sequence[Mapping[str, float]], num_classes: int, path: Path | str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ts = [r["T"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(ts, [r["mean_entropy"] for r in rows], "o-", color="C0", label="mean entropy (nats)")
    ax1.axhline(torch.log(torch.tensor(float(num_classes))).item(), color="C0", ls=":", label="uniform")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("temperature T")
    ax1.set_ylabel("entropy (nats)")
    ax2 = ax1.twinx()
    ax2.plot(ts, [r["mean_max_prob"] for r in rows], "s--", color="C1", label="mean max probability")
    ax2.set_ylabel("max probability")
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize="small")
    ax1.set_title("Teacher's softened outputs flatten as T grows")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# compare.py: the seed x variant loop, and what it writes


def add_comparison_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    parser.add_argument("--variants", nargs="+", default=["baseline", "hinton", "notebook-mse"],
                        help=f"baseline, a KD loss ({'|'.join(KD_LOSSES)})[:T=..,alpha=..] (notebook-mse's old "
                             "name: seed-mse), fitnets[:...]; each may add augment=NAME and, distilled, "
                             "teacher=cache|fixed|online, K=VIEWS, and any student setting by flag name (opt=sgd, "
                             "weight-decay=5e-4), a distilled one any distillation setting too (default: %(default)s)")
    parser.add_argument("--reference", help="the variant gains are measured against, as the table names it "
                                            "(default: the first baseline listed)")


def variants_from_flags(specs: Sequence[str], reference: str | None, cfg: Config) -> tuple[list[Variant], str]:
    """(variants, reference name): a plain baseline is added when none is listed and no other
    reference is named (e.g. full logits as the reference of top-k ones)."""
    variants = [parse_variant(v, cfg) for v in specs]
    _check_distinct_names(specs, variants)
    if not any(not v.distilled for v in variants) and not reference:
        variants.insert(0, Variant("baseline"))
    names = [v.name for v in variants]
    reference = reference or next(v.name for v in variants if not v.distilled)
    if reference not in names:
        raise KDError(f"--reference {reference!r} is not one of the variants: {', '.join(names)}")
    return variants, reference


def _check_distinct_names(specs, variants):
    """Results are keyed by Variant.name: two specs with one name would share a row and a
    checkpoint folder, the second overwriting the first."""
    seen = {}
    for spec, v in zip(specs, variants):
        if v.name in seen:
            first, other = seen[v.name]
            if other == v:
                raise KDError(f"--variants {first!r} and {spec!r} are the same variant, {v.name!r}; list it once")
            raise KDError(f"--variants {first!r} and {spec!r} would share one row, {v.name!r} (names show T and "
                          "alpha to 6 significant digits, a FitNets variant only its mode's hint setting); "
                          "make them differ there")
        seen[v.name] = spec, v


def check_seeds(seeds: Sequence[int]) -> None:
    """Each seed once (a repeat overwrites its own run: fewer seeds than listed, and one seed
    leaves NaN p-values), each within --seed's declared bounds."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise KDError(f"--seeds lists {', '.join(map(str, repeated))} more than once; give distinct seeds")
    try:
        for seed in seeds:
            check_setting("run", "seed", seed, "--seeds")
    except ValueError as e:
        raise KDError(str(e)) from None


def comparison_label(variant: Variant, seed: int) -> str:
    """compare.py's phase label (and checkpoint/output subfolder) of one variant and seed."""
    return "compare/" + re.sub(r"[^A-Za-z0-9.=-]+", "_", variant.name) + f"/seed{seed}"


def comparison_phases(cfg: Config, variants: Iterable[Variant], seeds: Iterable[int]) -> list[str]:
    """Every phase a comparison runs, in order (what --resume PATH may name)."""
    phases = ["teacher"] * (not cfg.run.teacher)
    for seed in seeds:
        for v in variants:
            hint_stage = v.hints is not None and v.hints.mode == "two-stage"
            phases += [f"{comparison_label(v, seed)} hints"] * hint_stage + [comparison_label(v, seed)]
    return phases


def run_comparison(accelerator: Accelerator, cfg: Config, variants: Sequence[Variant], seeds: Iterable[int],
                   train: DataSource, test: DataSource, teacher_path: Path | str,
                   teacher: Mapping[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """Train every variant for every seed (seeds outer: a stopped comparison has whole seeds).
    The soft targets are resolved once per kind (one cache per augmentation and K, or the online
    teacher) and shared. Returns {variant name: {seed: info}}."""
    sources, fp = {}, TeacherId.of(teacher)

    def soft_targets(v, vcfg):
        spec, views = cache_views(vcfg)
        # a variant's own student settings (mix=, epochs=, ...) may shape what the teacher saw, so
        # they choose their own source (a valid cache found again is only opened); its own KD
        # settings change the loss alone (those that shape a cache are named here)
        own = tuple((dest, value) for dest, value in v.settings if dest in variant_settings(False))
        key = (vcfg.kd.teacher_mode, spec.describe(), views, vcfg.kd.cache_topk, vcfg.kd.augment_seed,
               vcfg.kd.cache_dtype, str(cache_path(vcfg)), own)
        if key not in sources:
            sources[key] = resolve_soft_targets(accelerator, vcfg, teacher_path, fp, train)[:2]
        return sources[key]

    runs = {v.name: {} for v in variants}
    for seed in seeds:
        for v in variants:
            vcfg = v.apply(cfg)
            vcfg = dataclasses.replace(vcfg, run=dataclasses.replace(vcfg.run, seed=seed))
            label = comparison_label(v, seed)
            soft, online = soft_targets(v, vcfg) if v.distilled else (None, None)
            # a FitNets student: another objective (hints from the teacher's block 2), the same phase
            info = train_student(accelerator, vcfg, train, test, soft, label, fp, online,
                                 hints_from=teacher_path if v.hints else None)
            runs[v.name][seed] = info = {**info, **epoch_accuracies(info)}
            accelerator.print(f"{v.name} seed {seed}: {info['test_accuracy']:.2f}%", flush=True)
    return runs


def write_comparison(accelerator: Accelerator, cfg: Config, variants: Iterable[Variant], reference: str, runs: Runs,
                     teacher: Mapping[str, Any]) -> None:
    """results.json, results.md (table and, for a Hinton grid, the T x alpha matrix) and
    results.png in the run folder; the table printed. Main process only."""
    summary = summarize(runs, reference)
    d = cfg.data
    title = f"{d.dataset}, {cfg.student.epochs} epochs ({cfg.student.schedule} lr), teacher " \
            f"{teacher['test_accuracy']:.2f}%" + (
                f", {d.train_subset} labelled samples (soft targets: {cfg.kd.soft_targets})" if d.train_subset else "")
    table = markdown_table(summary, title)
    grid = grid_matrix(summary, variants)
    table += "\n" + grid if grid else ""
    if not accelerator.is_main_process:
        return
    write_json(cfg.run_dir / "results.json", {"config": cfg.to_json(), "teacher": teacher, "reference": reference,
                                              "summary": summary,
                                              "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()}})
    with atomic_path(cfg.run_dir / "results.md") as tmp:
        tmp.write_text(table)
    plotted = plot_curves(runs, cfg.run_dir / "results.png", title)
    print(table)
    print(f"wrote {cfg.run_dir}/results.json, results.md" + (", results.png" if plotted else
          " (no plot: pip install -e '.[plots]' for matplotlib)"))
