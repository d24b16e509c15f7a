"""Issue 27's study tables (docs/recipes.md) from compare.py's results.json files.

    python docs/study/recipes/make_tables.py RESULTS.json [...] [--against VARIANT ...]

Per file, per variant: mean ± std over seeds, test errors (of the run's test set), and for each
reference (the baseline, and each --against variant, e.g. `hinton T=4 a=0.9`) the paired gain over
the seeds both hold, its 95% t interval and p; and the share of the baseline's error gap to the
teacher that the variant closes, (baseline errors - variant errors) / (baseline errors - teacher
errors), as Hinton et al. count it. A variant name may be given by its start (`hinton T=4`).
`--merge MORE.json` adds the variants and seeds of another comparison of the same recipe run later
(the same teacher; a run both hold, e.g. a reference run copied over, must have the same accuracy,
which is checked), so that one table pairs them all: more variants on the same seeds, or more
seeds (each seed's comparison in its own output folder).

    python docs/study/recipes/make_tables.py T20/results.json --merge T8/results.json

`--epochs 20 40 ...` adds a table of each variant's mean test accuracy at those epochs and its
mean best epoch (a learning curve over the seeds)."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from kd_accel.stats import mean, paired_ci, std  # noqa: E402

NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def fmt_gain(c):
    if c["p"] is None:
        return f"{c['mean']:+.3f} (n={c['n']})"
    p = "< 0.001" if c["p"] < 0.001 else f"{c['p']:.3f}"
    return f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], p {p}"


def by_seed(res, variant):
    return {int(seed): run["test_accuracy"] for seed, run in res["runs"][variant].items()}


def find(res, name):
    hits = [v for v in res["runs"] if v == name] or [v for v in res["runs"] if v.startswith(name)]
    if len(hits) != 1:
        raise SystemExit(f"{name!r}: {len(hits)} variants match in {sorted(res['runs'])}")
    return hits[0]


def merged(path, more):
    """results.json of `path` with the runs (variant, seed) of each file in `more` it lacks; a run
    both hold must have the same accuracy (a copied reference run), or the pairing is off."""
    res = json.loads(Path(path).read_text())
    for other in more:
        add = json.loads(Path(other).read_text())
        if add["teacher"]["test_accuracy"] != res["teacher"]["test_accuracy"]:
            raise SystemExit(f"{other}: another teacher ({add['teacher']['test_accuracy']}%) than {path}'s")
        for v, runs in add["runs"].items():
            mine = res["runs"].setdefault(v, {})
            for seed, run in runs.items():
                if seed in mine and mine[seed]["test_accuracy"] != run["test_accuracy"]:
                    raise SystemExit(f"{other}: {v!r} seed {seed} differs from {path}'s: not the same runs, cannot pair")
                mine.setdefault(seed, run)
    return res


def table(path, against, more=()):
    res = merged(path, more)
    cfg, teacher = res["config"], res["teacher"]["test_accuracy"]
    data, student = cfg.get("data", cfg), cfg.get("student", cfg)
    n_test = 10000 if data.get("limit_test") is None else data["limit_test"]
    errors = lambda acc: (100 - acc) / 100 * n_test  # noqa: E731
    base = res.get("reference") or find(res, "baseline")
    refs = [base, *(find(res, a) for a in against)]
    opt = student.get("opt", "adam")
    head = (f"**{NAMES.get(data['dataset'], data['dataset'])}**, {student['epochs']} epochs, {opt} lr {student['lr']}"
            + (f", weight decay {student['weight_decay']}" if student.get("weight_decay") else "")
            + f"; teacher {teacher:.2f}% ({errors(teacher):.0f} errors); `{path}`"
            + "".join(f" + `{m}`" for m in more))
    cols = ["variant", "test acc (mean ± std)", "errors", *(f"gain over {r} [95% CI], p" for r in refs), "gap closed"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    base_err = errors(mean(list(by_seed(res, base).values())))
    for v in res["runs"]:
        accs = by_seed(res, v)
        m = mean(list(accs.values()))
        row = [v, f"{m:.3f} ± {std(list(accs.values())):.3f} (n={len(accs)})" if len(accs) > 1 else f"{m:.3f}",
               f"{errors(m):.0f}"]
        for r in refs:
            ref = by_seed(res, r)
            seeds = sorted(set(accs) & set(ref))
            row.append("-" if r == v else fmt_gain(paired_ci([accs[s] - ref[s] for s in seeds])))
        gap = base_err - errors(teacher)
        row.append(f"{100 * (base_err - errors(m)) / gap:+.0f}%" if gap > 0 and v != base else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def curve(path, epochs, more=()):
    """Per variant: the mean over seeds of the test accuracy at each of `epochs`, and the mean
    best epoch (where each seed's highest test accuracy came)."""
    res = merged(path, more)
    lines = ["| variant | seeds | " + " | ".join(f"epoch {e}" for e in epochs) + " | best epoch (mean) |",
             "|" + " --- |" * (len(epochs) + 3)]
    for v, runs in res["runs"].items():
        at = [mean([next(h["test_accuracy"] for h in run["epochs"] if h["epoch"] == e) for run in runs.values()])
              for e in epochs]
        best = mean([run["best_epoch"] for run in runs.values()])
        lines.append(f"| {v} | {len(runs)} | " + " | ".join(f"{a:.2f}" for a in at) + f" | {best:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--against", nargs="*", default=[], help="more reference variants (by name or its start)")
    p.add_argument("--merge", nargs="*", default=[], help="results.json of later comparisons of the same recipe")
    p.add_argument("--epochs", nargs="*", type=int, default=[], help="also the mean test accuracy at these epochs")
    a = p.parse_args()
    print("\n".join(table(f, a.against, a.merge) for f in a.results))
    if a.epochs:
        print("\n".join(curve(f, a.epochs, a.merge) for f in a.results))


if __name__ == "__main__":
    main()
