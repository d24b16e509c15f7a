"""The three entry points behind launch/*.py. Each is the pipeline's steps in order."""
import dataclasses
import functools
import math
import platform
import re

import torch

from . import __version__, tracking
from .config import Config, build_parser, parse
from .cache import check_cache_target, open_cache
from .errors import KDError
from .io import atomic_path, write_json
from .pipeline import (
    TEACHER_FILE, cache_path, cache_views, check_resume_target, load_data, precompute, resolve_soft_targets, resolve_teacher,
    set_aside_previous_result, setup, train_fitnet_student, train_student, train_teacher, write_config,
)
from .reporting import print_summary
from .study import (Variant, grid_matrix, markdown_table, parse_variant, plot_curves, plot_temperature, summarize,
                    temperature_stats)

COMMON = ["dataset", "data_dir", "output_dir", "run_name", "seed", "limit_train", "limit_test", "mixed_precision",
          "channels_last", "compile", "augment"]
CACHE = ["cache_dtype", "cache_topk", "views", "augment_seed"]
STUDENT = ["teacher_epochs", "teacher_lr", "teacher_schedule", "teacher_augment", "kd_loss", "temperature", "alpha",
           "teacher", "logits", "teacher_mode", *CACHE, "train_subset", "soft_targets", "hint_mode", "hint_epochs",
           "hint_beta"]
RECIPE = ["epochs", "batch_size", "lr", "schedule", "grad_accum", "checkpoint_every", "keep_checkpoints", "resume",
          "report_to"]


def ends_training(main):
    """accelerator.end_training() on every way out of a script (done, KDError, Ctrl-C, a crash):
    the trackers --report-to opened in pipeline.setup finish and keep what was logged."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        finally:
            tracking.end()
    return wrapped


@ends_training
def train_teacher_main(argv=None):
    parser = build_parser("Train the teacher on hard labels; writes <output-dir>/teacher.safetensors.",
                          COMMON + RECIPE)
    # here --epochs/--lr/--schedule are the teacher's: default them to the teacher recipe
    parser.set_defaults(epochs=Config.teacher_epochs, lr=Config.teacher_lr, schedule=Config.teacher_schedule)
    cfg, _ = parse(parser, argv)
    check_resume_target(cfg, "train_teacher.py", ["teacher"])
    accelerator = setup(cfg, "train_teacher")
    train, test = load_data(accelerator, cfg)
    info = train_teacher(accelerator, cfg, train, test, cfg.run_dir / TEACHER_FILE)
    write_config(accelerator, cfg, "train_teacher")
    accelerator.print(f"teacher: {info['test_accuracy']:.2f}% test accuracy, saved {cfg.run_dir / TEACHER_FILE}")


@ends_training
def precompute_main(argv=None):
    parser = build_parser("Run a teacher checkpoint once over the training set; write its logits cache.",
                          COMMON + ["teacher", "out", "batch_size", *CACHE])
    cfg, _ = parse(parser, argv)
    if not cfg.teacher:
        raise KDError("precompute_logits.py needs --teacher PATH (a teacher checkpoint)")
    out = cfg.out or cache_path(cfg)
    check_cache_target(out, cfg.teacher)  # before the teacher runs: nothing written on refusal
    accelerator = setup(cfg, "precompute_logits")
    train, _ = load_data(accelerator, cfg)
    precompute(accelerator, cfg, cfg.teacher, train, out)
    write_config(accelerator, cfg, "precompute_logits")


@ends_training
def distill_main(argv=None):
    def extra(p):
        p.add_argument("--no-baseline", dest="baseline", action="store_false",
                       help="skip the baseline student (same recipe, hard labels only)")

    parser = build_parser(
        "The whole experiment: teacher (train or reuse) -> logits cache (reuse or precompute) -> "
        "distilled student -> baseline student -> summary.",
        COMMON + RECIPE + STUDENT,
        extra,
    )
    cfg, _ = parse(parser, argv)
    check_resume_target(cfg, "distill.py", ["teacher"] * (not cfg.teacher) + ["student"] + ["baseline"] * cfg.baseline)
    accelerator = setup(cfg, "distill")
    train, test = load_data(accelerator, cfg)

    teacher_path, teacher = resolve_teacher(accelerator, cfg, train, test)
    soft, online, cache = resolve_soft_targets(accelerator, cfg, teacher_path, teacher["fingerprint"], train)

    set_aside_previous_result(accelerator, cfg)  # once the teacher and cache are settled, before new students
    student = train_student(accelerator, cfg, train, test, soft, "student", teacher["fingerprint"], online)
    baseline = train_student(accelerator, cfg, train, test, None, "baseline") if cfg.baseline else None

    metrics = {
        "dataset": cfg.dataset,
        "run_dir": str(cfg.run_dir),
        "num_train": len(train),
        "num_test": len(test),
        "teacher": {**teacher, "path": str(teacher_path)},
        "student": {**student, "note": f"{cfg.kd_loss} T={cfg.temperature:g} alpha={cfg.alpha:g}" + (
            f", augment {cfg.augment}, teacher {cfg.teacher_mode}" if cfg.augment != "none" else "")},
        "baseline": baseline and {**baseline, "note": "hard labels only"},
        "gain_over_baseline": baseline and student["test_accuracy"] - baseline["test_accuracy"],
        "cache": cache,
        "environment": {
            "kd_accel": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "processes": accelerator.num_processes, "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
        },
    }
    write_config(accelerator, cfg, "distill")
    if accelerator.is_main_process:
        write_json(cfg.run_dir / "metrics.json", metrics)
    print_summary(accelerator, metrics)


def _compare_label(variant, seed):
    """compare.py's phase label (and checkpoint/output subfolder) of one variant and seed."""
    return "compare/" + re.sub(r"[^A-Za-z0-9.=-]+", "_", variant.name) + f"/seed{seed}"


@ends_training
def compare_main(argv=None):
    """Baseline and distilled students over several seeds, one shared teacher and cache."""
    def extra(p):
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
        p.add_argument("--variants", nargs="+", default=["baseline", "hinton", "notebook-mse"],
                       help="baseline, hinton[:T=..,alpha=..], notebook-mse[:T=..,alpha=..] (old name: seed-mse), "
                            "fitnets[:...]; each may add augment=NAME and, distilled, teacher=cache|fixed|online, "
                            "K=VIEWS (default: %(default)s)")
        p.add_argument("--reference", help="the variant gains are measured against, as the table names it "
                                           "(default: the first baseline listed)")

    parser = build_parser("Multi-seed comparison: does distillation beat the baseline, by how much?",
                          COMMON + RECIPE + STUDENT, extra)
    cfg, args = parse(parser, argv)
    variants = [parse_variant(v, cfg) for v in args["variants"]]
    if not any(not v.distilled for v in variants):
        variants.insert(0, Variant("baseline"))
    reference = args["reference"] or next(v.name for v in variants if not v.distilled)
    if reference not in [v.name for v in variants]:
        raise KDError(f"--reference {reference!r} is not one of the variants: {', '.join(v.name for v in variants)}")
    phases = ["teacher"] * (not cfg.teacher)
    for seed in args["seeds"]:
        for v in variants:
            hint_stage = v.hints and v.apply(cfg).hint_mode == "two-stage"
            phases += [f"{_compare_label(v, seed)} hints"] * bool(hint_stage) + [_compare_label(v, seed)]
    check_resume_target(cfg, "compare.py", phases)
    accelerator = setup(cfg, "compare")
    train, test = load_data(accelerator, cfg)
    teacher_path, teacher = resolve_teacher(accelerator, cfg, train, test)
    sources = {}  # one cache (or online teacher) per kind of soft targets the variants use

    def soft_targets(vcfg):
        spec, views = cache_views(vcfg)
        key = (vcfg.teacher_mode, spec.describe(), views)
        if key not in sources:
            sources[key] = resolve_soft_targets(accelerator, vcfg, teacher_path, teacher["fingerprint"], train)[:2]
        return sources[key]

    runs = {v.name: {} for v in variants}
    for seed in args["seeds"]:
        for v in variants:
            vcfg = dataclasses.replace(v.apply(cfg), seed=seed)
            label, fp = _compare_label(v, seed), teacher["fingerprint"]
            soft, online = soft_targets(vcfg) if v.distilled else (None, None)
            if v.hints:
                runs[v.name][seed] = train_fitnet_student(accelerator, vcfg, train, test, teacher_path, soft, label, fp,
                                                          online)
            else:
                runs[v.name][seed] = train_student(accelerator, vcfg, train, test, soft, label, fp, online)
            accelerator.print(f"{v.name} seed {seed}: {runs[v.name][seed]['test_accuracy']:.2f}%", flush=True)

    summary = summarize(runs, reference)
    title = f"{cfg.dataset}, {cfg.epochs} epochs ({cfg.schedule} lr), teacher {teacher['test_accuracy']:.2f}%" + (
        f", {cfg.train_subset} labelled samples (soft targets: {cfg.soft_targets})" if cfg.train_subset else "")
    table = markdown_table(summary, title)
    grid = grid_matrix(summary)
    table += "\n" + grid if grid else ""
    write_config(accelerator, cfg, "compare")
    if accelerator.is_main_process:
        write_json(cfg.run_dir / "results.json", {"config": cfg.to_json(), "teacher": teacher, "summary": summary,
                                                  "runs": {k: {str(s): r for s, r in v.items()} for k, v in runs.items()}})
        with atomic_path(cfg.run_dir / "results.md") as tmp:
            tmp.write_text(table)
        plotted = plot_curves(runs, cfg.run_dir / "results.png", title)
        print(table)
        print(f"wrote {cfg.run_dir}/results.json, results.md" + (", results.png" if plotted else
              " (no plot: pip install -e '.[plots]' for matplotlib)"))


def inspect_main(argv=None):
    """Does a higher temperature flatten the teacher's outputs? Read from the cache alone."""
    import argparse

    p = argparse.ArgumentParser(description="Entropy and max-probability of the cached teacher outputs softened by T.")
    p.add_argument("cache", help="a teacher-logits cache (safetensors)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1, 1.5, 2, 4, 8, 16])
    p.add_argument("--plot", help="write a PNG here (needs matplotlib)")
    a = p.parse_args(argv)
    if any(t <= 0 for t in a.temperatures):
        raise KDError("--temperatures must all be > 0")
    soft = open_cache(a.cache)
    logits, meta = soft.logits(0), soft.meta
    rows = temperature_stats(logits, sorted(a.temperatures))
    print(f"{meta.get('dataset')} {meta.get('split')}: {len(logits)} samples x {logits.shape[1]} classes "
          f"(uniform entropy {math.log(logits.shape[1]):.3f} nats)")
    print(f"{'T':>6} {'mean entropy (nats)':>20} {'mean max prob':>14}")
    for r in rows:
        print(f"{r['T']:>6g} {r['mean_entropy']:>20.4f} {r['mean_max_prob']:>14.4f}")
    if a.plot:
        if plot_temperature(rows, logits.shape[1], a.plot):
            print(f"wrote {a.plot}")
        else:
            raise KDError("--plot needs matplotlib: pip install -e '.[plots]'")
