"""The three entry points behind launch/*.py. Each is the pipeline's steps in order."""
import platform

import torch

from . import __version__
from .config import build_parser, parse
from .io import write_json
from .pipeline import (
    CACHE_FILE, TEACHER_FILE, load_data, precompute, resolve_cache, resolve_teacher, setup,
    train_student, train_teacher,
)
from .reporting import print_summary

COMMON = ["dataset", "data_dir", "output_dir", "run_name", "seed", "limit_train", "limit_test", "mixed_precision",
          "channels_last", "compile"]
RECIPE = ["epochs", "batch_size", "lr", "schedule", "grad_accum", "checkpoint_every", "keep_checkpoints", "resume"]


def train_teacher_main(argv=None):
    parser = build_parser("Train the teacher on hard labels; writes <output-dir>/teacher.safetensors.",
                          COMMON + RECIPE)
    cfg, _ = parse(parser, argv)
    accelerator = setup(cfg, "train_teacher")
    train, test = load_data(accelerator, cfg)
    info = train_teacher(accelerator, cfg, train, test, cfg.run_dir / TEACHER_FILE)
    accelerator.print(f"teacher: {info['test_accuracy']:.2f}% test accuracy, saved {cfg.run_dir / TEACHER_FILE}")


def precompute_main(argv=None):
    parser = build_parser("Run a teacher checkpoint once over the training set; write its logits cache.",
                          COMMON + ["teacher", "out", "cache_dtype", "batch_size"])
    cfg, _ = parse(parser, argv)
    if not cfg.teacher:
        parser.error("--teacher PATH is required")
    accelerator = setup(cfg, "precompute_logits")
    train, _ = load_data(accelerator, cfg)
    precompute(accelerator, cfg, cfg.teacher, train, cfg.out or cfg.run_dir / CACHE_FILE)


def distill_main(argv=None):
    def extra(p):
        p.add_argument("--no-baseline", dest="baseline", action="store_false",
                       help="skip the baseline student (same recipe, hard labels only)")

    parser = build_parser(
        "The whole experiment: teacher (train or reuse) -> logits cache (reuse or precompute) -> "
        "distilled student -> baseline student -> summary.",
        COMMON + RECIPE + ["teacher_epochs", "teacher_lr", "teacher_schedule", "kd_loss", "temperature",
                           "alpha", "teacher", "logits", "cache_dtype"],
        extra,
    )
    cfg, _ = parse(parser, argv)
    accelerator = setup(cfg, "distill")
    train, test = load_data(accelerator, cfg)

    teacher_path, teacher = resolve_teacher(accelerator, cfg, train, test)
    logits, hit, cache_path = resolve_cache(accelerator, cfg, teacher_path, teacher["fingerprint"], train)

    student = train_student(accelerator, cfg, train, test, logits, "student")
    baseline = train_student(accelerator, cfg, train, test, None, "baseline") if cfg.baseline else None

    metrics = {
        "dataset": cfg.dataset,
        "run_dir": str(cfg.run_dir),
        "num_train": len(train),
        "num_test": len(test),
        "teacher": {**teacher, "path": str(teacher_path)},
        "student": {**student, "note": f"{cfg.kd_loss} T={cfg.temperature:g} alpha={cfg.alpha:g}"},
        "baseline": baseline and {**baseline, "note": "hard labels only"},
        "gain_over_baseline": baseline and student["test_accuracy"] - baseline["test_accuracy"],
        "cache": {"hit": hit, "path": str(cache_path), "dtype": cfg.cache_dtype},
        "environment": {
            "kd_accel": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "processes": accelerator.num_processes, "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
        },
    }
    if accelerator.is_main_process:
        write_json(cfg.run_dir / "metrics.json", metrics)
    print_summary(accelerator, metrics)
    accelerator.end_training()
