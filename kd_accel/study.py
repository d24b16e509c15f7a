"""Multi-seed comparisons of students (does distillation help, and by how much) and the
temperature inspection of a cache. Tables are plain text/markdown; plots need matplotlib
(`pip install -e '.[plots]'`) and are skipped with a note without it."""
import dataclasses
import re
from dataclasses import dataclass

import torch

from .augment import SPECS as AUGMENTS
from .errors import KDError
from .losses import TEMPERATURE_RANGE, loss_name
from .stats import mean, paired_ci, std


@dataclass(frozen=True)
class Variant:
    """One kind of student: 'baseline' (hard labels), or a KD loss with its T and alpha; either
    with its own augmentation (and, distilled, where its soft targets come from) when given."""

    name: str
    kd_loss: str = None
    temperature: float = None
    alpha: float = None
    hints: dict = None  # FitNets: {"hint_mode", "hint_epochs", "hint_beta"}
    views: dict = None  # {"augment", "teacher_mode", "views"}: those given, overriding the run's

    @property
    def distilled(self):
        return self.kd_loss is not None

    def apply(self, cfg):
        cfg = dataclasses.replace(cfg, **(self.views or {}))
        if not self.distilled:
            return cfg
        return dataclasses.replace(cfg, kd_loss=self.kd_loss, temperature=self.temperature, alpha=self.alpha,
                                   **(self.hints or {}))


_SPEC = re.compile(r"^(baseline|hinton|notebook-mse|seed-mse|fitnets)(?::(.*))?$")  # seed-mse: old name
_HINT_KEYS = {"mode": ("hint_mode", str), "beta": ("hint_beta", float), "hint_epochs": ("hint_epochs", int)}
# augmentation keys, for every kind (teacher and K only for distilled ones)
_VIEW_KEYS = {"augment": ("augment", str), "teacher": ("teacher_mode", str), "K": ("views", int)}
_TEACHER_MODES = ("cache", "fixed", "online")


def _views_suffix(views):
    """' augment=shift teacher=cache K=20' for the keys given, in a fixed order."""
    return "".join(f" {key}={views[field]}" for key, (field, _) in _VIEW_KEYS.items() if field in views)


def parse_variant(spec, cfg):
    """'baseline', 'hinton' (the run's T/alpha), 'hinton:T=4,alpha=0.9', 'notebook-mse' (the
    notebook's loss, also by its old name 'seed-mse'; T=1.5, alpha=0.6 unless given),
    'fitnets[:T=..,alpha=..,mode=two-stage|joint,hint_epochs=..,beta=..]' (hints + Hinton KD).
    Any of them may add augment=NAME, and a distilled one teacher=cache|fixed|online and K=views,
    e.g. 'baseline:augment=shift' or 'hinton:T=4,alpha=0.9,augment=shift,teacher=cache,K=20'."""
    m = _SPEC.match(spec)
    if not m:
        raise KDError(f"bad variant {spec!r}: use baseline, hinton[:T=..,alpha=..], notebook-mse[:...] or fitnets[:...]")
    kind, args = loss_name(m.group(1)), m.group(2)
    t, a = (1.5, 0.6) if kind == "notebook-mse" else (cfg.temperature, cfg.alpha)
    hints = {"hint_mode": cfg.hint_mode, "hint_epochs": cfg.hint_epochs, "hint_beta": cfg.hint_beta}
    views = {}
    for part in filter(None, (args or "").split(",")):
        key, _, val = (x.strip() for x in part.partition("="))
        try:
            if key in _VIEW_KEYS and (kind != "baseline" or key == "augment"):
                field, cast = _VIEW_KEYS[key]
                views[field] = cast(val)
            elif kind == "baseline":
                raise ValueError
            elif key in ("T", "temperature"):
                t = float(val)
            elif key in ("a", "alpha"):
                a = float(val)
            elif kind == "fitnets" and key in _HINT_KEYS:
                field, cast = _HINT_KEYS[key]
                hints[field] = cast(val)
            else:
                raise ValueError
        except ValueError:
            raise KDError(f"bad variant {spec!r}: unknown or malformed {part!r}") from None
    if views.get("augment", "none") not in AUGMENTS or views.get("teacher_mode", "cache") not in _TEACHER_MODES \
            or views.get("views", 1) < 1:
        raise KDError(f"bad variant {spec!r}: augment is one of {', '.join(AUGMENTS)}, teacher one of "
                      f"{', '.join(_TEACHER_MODES)}, K >= 1")
    suffix = _views_suffix(views)
    if kind == "baseline":
        return Variant("baseline" + suffix, views=views or None)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi or not 0 <= a <= 1 or not 0 <= hints["hint_beta"] < float("inf"):  # nan fails each
        raise KDError(f"bad variant {spec!r}: need {lo:g} <= T <= {hi:g}, 0 <= alpha <= 1 and beta >= 0")
    if kind != "fitnets":
        return Variant(f"{kind} T={t:g} a={a:g}{suffix}", kind, t, a, views=views or None)
    if hints["hint_mode"] not in ("two-stage", "joint") or hints["hint_epochs"] < 1:
        raise KDError(f"bad variant {spec!r}: mode is two-stage or joint, hint_epochs >= 1")
    how = f"{hints['hint_epochs']} hint epochs" if hints["hint_mode"] == "two-stage" else f"joint beta={hints['hint_beta']:g}"
    return Variant(f"fitnets ({how}) T={t:g} a={a:g}{suffix}", "hinton", t, a, hints, views or None)


def summarize(runs, baseline="baseline"):
    """runs: {variant name: {seed: info}} -> {variant: stats}; gains are paired by seed."""
    out = {}
    base = runs.get(baseline, {})
    for name, by_seed in runs.items():
        accs = [by_seed[s]["test_accuracy"] for s in sorted(by_seed)]
        row = {"n": len(accs), "mean": mean(accs), "std": std(accs), "accuracies": accs,
               "train_time_s": mean([by_seed[s]["train_time_s"] for s in by_seed])}
        shared = sorted(set(by_seed) & set(base))
        if name != baseline and shared:
            diffs = [by_seed[s]["test_accuracy"] - base[s]["test_accuracy"] for s in shared]
            row["gain"] = paired_ci(diffs)
        out[name] = row
    return out


def markdown_table(summary, title=""):
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | seeds | test acc (mean ± std) | gain over baseline [95% CI] | p (paired t) | train time |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, r in summary.items():
        g = r.get("gain")
        gain = f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "-"
        p = ("< 0.001" if g["p"] < 0.001 else f"{g['p']:.3f}") if g else "-"
        lines.append(f"| {name} | {r['n']} | {r['mean']:.3f} ± {r['std']:.3f} | {gain} | {p} | {r['train_time_s']:.1f}s |")
    return "\n".join(lines) + "\n"


_HINTON = re.compile(r"^hinton T=([0-9.e+-]+) a=([0-9.e+-]+)$")


def grid_matrix(summary):
    """The Hinton cells of a comparison as a T x alpha matrix of 'gain (p)' in markdown, or ''
    when fewer than two such cells were run. Bold: significant at 5% (paired t)."""
    cells = {}
    for name, r in summary.items():
        m = _HINTON.match(name)
        if m and "gain" in r:
            cells[float(m.group(1)), float(m.group(2))] = r["gain"]
    if len(cells) < 2:
        return ""
    ts, alphas = sorted({t for t, _ in cells}), sorted({a for _, a in cells})
    lines = ["Gain of Hinton KD over the baseline, percentage points (p, paired t); **bold**: p < 0.05", "",
             "| T \\ α | " + " | ".join(f"{a:g}" for a in alphas) + " |", "| --- |" + " --- |" * len(alphas)]
    for t in ts:
        row = []
        for a in alphas:
            g = cells.get((t, a))
            txt = f"{g['mean']:+.3f} ({'<0.001' if g['p'] < 0.001 else format(g['p'], '.3f')})" if g else "-"
            row.append(f"**{txt}**" if g and g["p"] < 0.05 else txt)
        lines.append(f"| {t:g} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def curve_variants(runs, baseline="baseline", most=6):
    """Which variants a curve plot shows: all of them up to `most`, else the baseline and the
    best `most - 1` by final mean accuracy (a plot of 15 bands is unreadable)."""
    if len(runs) <= most:
        return list(runs)
    final = {k: mean([v["test_accuracy"] for v in by_seed.values()]) for k, by_seed in runs.items() if k != baseline}
    best = sorted(final, key=final.get, reverse=True)[: most - (baseline in runs)]
    return [k for k in runs if k == baseline or k in best]


def plot_curves(runs, path, title=""):
    """Test accuracy per epoch, mean over seeds with a min-max band, one line per variant
    (the baseline and the best five when more were compared)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .io import atomic_path

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


def temperature_stats(logits, temperatures):
    """Mean entropy (nats) and mean max-probability of softmax(logits / T) for each T."""
    x = logits.float()
    rows = []
    for t in temperatures:
        logp = torch.log_softmax(x / t, dim=-1)
        p = logp.exp()
        rows.append({"T": t, "mean_entropy": float(-(p * logp).sum(-1).mean()),
                     "mean_max_prob": float(p.max(-1).values.mean())})
    return rows


def plot_temperature(rows, num_classes, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .io import atomic_path

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
