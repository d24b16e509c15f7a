"""The augmentation study's tables from compare.py's results.json files (docs/augmentation.md).

    python docs/study/augment/make_tables.py runs/study3/mnist20/results.json [...]
    python docs/study/augment/make_tables.py --pair A.json:VARIANT B.json:VARIANT   # across runs, by seed
    python docs/study/augment/make_tables.py --curves OUT.png A.json [...]          # test accuracy per epoch

Per variant: mean ± std over seeds, the paired gain over the run's reference (the augmented
baseline) with its 95% t interval and p, test errors (of 10,000), the share of the reference's
error gap to the teacher that the variant closes, (reference errors - variant errors) /
(reference errors - teacher errors), and the mean time per epoch (training and evaluation, as
fit measures it; jobs ran side by side, one thread each). --pair gives the paired difference
A - B over the seeds both files hold (e.g. a 100-epoch student against a 20-epoch one)."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from kd_accel.stats import mean, paired_ci, std  # noqa: E402

NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def fmt_p(p):
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def table(path):
    res = json.loads(open(path).read())
    summary, teacher = res["summary"], res["teacher"]["test_accuracy"]
    # the reference is the variant without a gain (results.json of code before a4e0b81's successor
    # has no "reference" key and a flat config)
    ref = res.get("reference") or next(name for name, row in summary.items() if "gain" not in row)
    cfg = res["config"]
    data, student = cfg.get("data", cfg), cfg.get("student", cfg)
    n_test = 10000 if data["limit_test"] is None else data["limit_test"]
    errors = lambda acc: (100 - acc) / 100 * n_test  # noqa: E731
    ref_err, teacher_err = errors(summary[ref]["mean"]), errors(teacher)
    epochs = student["epochs"]
    lines = [f"**{NAMES.get(data['dataset'], data['dataset'])}**, {epochs} epochs, teacher {teacher:.2f}% "
             f"({teacher_err:.0f} errors), reference: {ref}", "",
             "| variant | test acc (mean ± std) | errors | gain over reference [95% CI] | p | gap closed | s / epoch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in summary.items():
        g = r.get("gain")
        gain = f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "-"
        p = fmt_p(g["p"]) if g else "-"
        closed = (ref_err - errors(r["mean"])) / (ref_err - teacher_err) if name != ref else 0.0
        lines.append(f"| {name} | {r['mean']:.3f} ± {r['std']:.3f} (n={r['n']}) | {errors(r['mean']):.0f} | {gain} | {p} "
                     f"| {100 * closed:+.0f}% | {r['train_time_s'] / epochs:.1f} |")
    return "\n".join(lines) + "\n"


def seed_accuracies(spec):
    """'FILE:VARIANT' -> (label, {seed: final test accuracy})."""
    path, _, variant = spec.partition(":")
    runs = json.loads(open(path).read())["runs"]
    if variant not in runs:
        raise SystemExit(f"{path} has no variant {variant!r}; it has {', '.join(runs)}")
    return f"{Path(path).stem}: {variant}", {s: r["test_accuracy"] for s, r in runs[variant].items()}


def pair(a, b):
    (la, xa), (lb, xb) = seed_accuracies(a), seed_accuracies(b)
    seeds = sorted(set(xa) & set(xb), key=int)
    if len(seeds) < 2:
        raise SystemExit(f"{a} and {b} share {len(seeds)} seed(s); a paired test needs 2")
    g = paired_ci([xa[s] - xb[s] for s in seeds])
    return (f"| {la} − {lb} | {mean([xa[s] for s in seeds]):.3f} vs {mean([xb[s] for s in seeds]):.3f} "
            f"| {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] | {fmt_p(g['p'])} | {len(seeds)} |")


def curves(out, paths):
    """Test accuracy after each epoch, mean over seeds (band: ± one std), a panel per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(6 * len(paths), 4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        res = json.loads(open(path).read())
        for variant, seeds in res["runs"].items():
            accs = [[e["test_accuracy"] for e in r["epochs"]] for r in seeds.values()]
            n = min(len(a) for a in accs)
            m = [mean([a[i] for a in accs]) for i in range(n)]
            s = [std([a[i] for a in accs]) if len(accs) > 1 else 0.0 for i in range(n)]
            x = range(1, n + 1)
            ax.plot(x, m, label=f"{variant} (n={len(accs)})")
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
        data = res["config"].get("data", res["config"])["dataset"]
        ax.set(title=f"{NAMES.get(data, data)}: teacher {res['teacher']['test_accuracy']:.2f}%", xlabel="epoch",
               ylabel="test accuracy (%)")
        lo = min(min(r["test_accuracy"] for r in seeds.values()) for seeds in res["runs"].values())
        ax.set_ylim(lo - 1.0, res["teacher"]["test_accuracy"] + 0.3)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A.json:VARIANT", "B.json:VARIANT"))
    ap.add_argument("--curves", metavar="OUT.png")
    a = ap.parse_args()
    if a.curves:
        curves(a.curves, a.results)
    else:
        print("\n".join(table(p) for p in a.results))
    if a.pair:
        print("| A − B | mean A vs B | paired difference [95% CI] | p | seeds |\n| --- | --- | --- | --- | --- |")
        for x, y in a.pair:
            print(pair(x, y))
