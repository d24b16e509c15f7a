"""The augmentation study's tables from compare.py's results.json files (docs/augmentation.md).

    python docs/study/augment/make_tables.py runs/study3/mnist20/results.json [...]

Per variant: mean ± std over seeds, the paired gain over the run's reference (the augmented
baseline) with its 95% t interval and p, test errors (of 10,000), the share of the reference's
error gap to the teacher that the variant closes, (reference errors - variant errors) /
(reference errors - teacher errors), and the mean time per epoch (training and evaluation, as
fit measures it; jobs ran side by side, one thread each)."""
import json
import sys


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
    lines = [f"{data['dataset']}, {epochs} epochs, teacher {teacher:.2f}% ({teacher_err:.0f} errors), "
             f"reference: {ref}", "",
             "| variant | test acc (mean ± std) | errors | gain over reference [95% CI] | p | gap closed | s / epoch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in summary.items():
        g = r.get("gain")
        gain = f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "-"
        p = ("< 0.001" if g["p"] < 0.001 else f"{g['p']:.3f}") if g else "-"
        closed = (ref_err - errors(r["mean"])) / (ref_err - teacher_err) if name != ref else 0.0
        lines.append(f"| {name} | {r['mean']:.3f} ± {r['std']:.3f} (n={r['n']}) | {errors(r['mean']):.0f} | {gain} | {p} "
                     f"| {100 * closed:+.0f}% | {r['train_time_s'] / epochs:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(table(p) for p in sys.argv[1:]))
