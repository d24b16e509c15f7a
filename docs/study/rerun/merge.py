"""Merge compare.py results.json files of one study (different seed groups) into one table/plot."""
import json, sys
from pathlib import Path
from kd_accel.study import grid_matrix, markdown_table, plot_curves, summarize
out, parts = Path(sys.argv[1]), sys.argv[2:]
runs, first = {}, None
for p in parts:
    d = json.loads(Path(p).read_text())
    first = first or d
    for v, by_seed in d["runs"].items():
        runs.setdefault(v, {}).update({int(s): r for s, r in by_seed.items()})
runs = {v: dict(sorted(r.items())) for v, r in runs.items()}
summary = summarize(runs)
cfg = first["config"]
title = f"{cfg['dataset']}, {cfg['epochs']} epochs ({cfg['schedule']} lr), teacher {first['teacher']['test_accuracy']:.2f}%"
table = markdown_table(summary, title)
g = grid_matrix(summary)
table += "\n" + g if g else ""
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps({"config": cfg, "teacher": first["teacher"], "summary": summary,
                                              "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()},
                                              "merged_from": parts}, indent=2))
(out / "results.md").write_text(table)
plot_curves(runs, out / "results.png", title)
print(table)
