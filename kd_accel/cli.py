"""The entry points behind launch/*.py: each parses its flags and calls the pipeline's steps.

The flags are config.py's settings; the choices that come from registries (data sets, losses,
augmentations, cache dtypes, trackers) and the checks against files are added here, where the
command line is built."""
from __future__ import annotations

import argparse
import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import export, outputs, recipes, runlock, study, tracking
from .augment import SPECS as AUGMENTS
from .cache import DTYPES, check_cache_file, open_cache, read_metadata
from .checkpointing import parse_every
from .config import (
    ALL_GROUPS, GROUPS, PRESETS, Recipe, add_flags, check_bounds, check_setting, flag_fields, from_args, group_default,
    layered_defaults, settings_with_flags,
)
from .models import check_arch, user
from .models.files import meta_record
from .optim import check_recipes
from .data import DATA_DIR_ENV, NAMES as DATA_NAMES, data_files
from .errors import KDError
from .io import write_json
from .losses import KD_LOSSES, loss_name, loss_settings
from .pipeline import (
    RESULT_FILES, TEACHER_FILE, check_against_data, teacher_arch, check_resume_target, load_data, resolve_teacher,
    set_aside_previous_result, setup, train_student, train_teacher, write_config,
)
from .reporting import experiment_metrics, print_summary
from .runfolder import EXPORT_DIR
from .roles import TeacherId, check_fitnets
from .teaching import cache_path, ignored_cache_settings, precompute, resolve_soft_targets

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from accelerate import Accelerator

    from .config import Config, Groups
    from .study import Variant

    Main = Callable[[Sequence[str] | None], None]  # a launch script's entry point: its flags

# which groups of settings each script takes ({Config field: flag prefix, None: the group's own})
ALL = ALL_GROUPS
CACHE = ("cache_dtype", "cache_topk", "views", "augment_seed")


def registries() -> tuple[dict[str, list[str]], dict[str, Callable[[str], object]]]:
    """Choices and types of the flags whose values are registered elsewhere in the package."""
    choices = {"dataset": DATA_NAMES,  # sorted; any hf:NAME is in it too
               "kd_loss": sorted(KD_LOSSES), "augment": list(AUGMENTS),
               "teacher_augment": list(AUGMENTS), "cache_dtype": sorted(DTYPES), "report_to": list(tracking.REPORT_TO)}
    return choices, {"kd_loss": loss_name}  # an old loss name ('seed-mse') is the same loss


def build_parser(description: str, groups: Groups, extra: Callable[[argparse.ArgumentParser], object] | None = None,
                 defaults: Mapping[str, object] | None = None,
                 only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """An argparse parser for the settings of `groups` (all their flags, or those named in `only`)."""
    # no abbreviations: distill.py's --out would silently mean --output-dir
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    if only is None or "arch" in only or "teacher_arch" in only:
        parser.add_argument("--list-models", metavar="PATTERN", nargs="?", const="*", action=ListModels,
                            help="list the architectures --arch/--teacher-arch take whose name matches the glob "
                                 "PATTERN (e.g. 'resnet*', 'timm:*mobile*'), and exit")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="recipe defaults: 'notebook' reproduces the notebook (default: %(default)s)")
    recipes.add_config_flag(parser)
    choices, types = registries()
    add_flags(parser, groups, choices, types, defaults, only)
    if extra:
        extra(parser)
    return parser


class ListModels(argparse.Action):
    """--list-models [PATTERN]: print the matching "SOURCE:NAME" specs, one a line, and exit."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, pattern: str,
                 option_string: str | None = None) -> None:
        from .models import list_models

        names = list_models(pattern)
        print("\n".join(names) if names else f"no architecture matches {pattern!r}")
        parser.exit(0 if names else 1)


def parse(parser: argparse.ArgumentParser, groups: Groups,
          argv: Sequence[str] | None = None) -> tuple[Config, dict[str, Any]]:
    """Flags over a --config file's over the preset's over the data set's defaults; a Config,
    checked; and the raw dict."""
    pre, _ = parser.parse_known_args(argv)
    from_file = recipes.read_config(parser, pre.config, groups) if pre.config else {}
    if from_file:  # the file's data set and preset choose the layers under it, unless flags do
        parser.set_defaults(**from_file)
        pre, _ = parser.parse_known_args(argv)
    known = {a.dest for a in parser._actions}
    layered = layered_defaults(getattr(pre, "dataset", None), pre.preset)
    parser.set_defaults(**{**{k: v for k, v in layered.items() if k in known}, **from_file})
    args = vars(parser.parse_args(argv))
    cfg = from_args(args, groups)
    validate(cfg, groups)
    return cfg, args


def validate(cfg: Config, groups: Groups = ALL, variant: bool = False) -> None:
    """One clear line per bad value, before any work starts. `variant`: a compare.py variant's
    settings, whose own cache settings study.parse_variant checks (the run's --views may serve
    other variants than this one)."""
    try:
        check_bounds(cfg, groups)  # finite, within each setting's declared range
    except ValueError as e:
        raise KDError(str(e)) from None
    check_path_names(cfg, groups)  # before any path is used: a teacher trained, then unreadable
    check_recipes(cfg, groups)  # optimizer and schedule combinations (--milestones of --schedule step, ...)
    loss_settings(cfg.kd)  # a loss setting the loss has no use for (--logit-standardization of notebook-mse)
    for line in [] if variant else ignored_cache_settings(cfg).values():  # e.g. --views without --augment
        raise KDError(line)
    check_models(cfg, groups)
    parse_every(cfg.run.checkpoint_every)
    tracking.resolve(cfg.run.report_to)  # a tracker that is not installed: one line, before any work
    resume, teacher, data_dir = cfg.run.resume, cfg.run.teacher, cfg.data.data_dir
    if resume not in (None, "latest") and not os.path.isdir(resume):
        raise KDError(f"--resume: checkpoint folder not found: {resume}")
    if teacher and os.path.isdir(teacher):
        raise KDError(f"--teacher {teacher} is a folder; give the teacher checkpoint file (teacher.safetensors)")
    if teacher and not os.path.isfile(teacher):
        raise KDError(f"teacher checkpoint not found: {teacher}")
    if data_dir and not os.path.isdir(data_dir):
        raise KDError(f"data dir not found: {data_dir} (the data sets' folder, or set ${DATA_DIR_ENV})")
    if cfg.run.logits:
        check_cache_file(cfg.run.logits, "--logits")


def _recorded_arch(path: str) -> dict[str, Any]:
    """{"arch": spec, "arch_kwargs": kwargs} a kd_accel model file records; {} for a file that
    cannot be read here (loading it later says why, in one line)."""
    try:
        record = meta_record(read_metadata(path), path)
    except KDError:  # not there, not safetensors, no record: the teacher's load names it
        return {}
    return {"arch": record["spec"], "arch_kwargs": record.get("kwargs") or {}}


def check_models(cfg: Config, groups: Groups = ALL) -> None:
    """The architectures by name, their weights files and epochs, before any work (the weights'
    fit to the architecture and the preprocessing are checked once the data are read:
    pipeline.check_against_data)."""
    for group in ("student", "teacher"):
        if group not in groups:
            continue
        recipe, prefix = getattr(cfg, group), groups[group] if groups[group] is not None else GROUPS[group][1]
        def flag(name: str) -> str:
            return "--" + (prefix + name).replace("_", "-")
        check_arch(recipe.arch, recipe.arch_kwargs, flag("arch_kwargs"))  # model code imported, its callable found
        if recipe.weights and not os.path.isfile(recipe.weights):
            what = "is a folder" if os.path.isdir(recipe.weights) else "not found"
            raise KDError(f"{flag('weights')} {recipe.weights}: {what}; give a weights file (.pth, .bin, .safetensors)")
        if recipe.epochs == 0 and group == "student":
            raise KDError(f"{flag('epochs')} must be >= 1 for a student, got 0")
        if recipe.epochs == 0 and not recipe.weights:
            raise KDError(f"{flag('epochs')} 0 uses the teacher as {flag('weights')} give it, untrained: give "
                          f"{flag('weights')} FILE, or epochs >= 1")
    if "teacher" in groups and groups["teacher"] != "" and cfg.run.teacher:
        recorded = _recorded_arch(cfg.run.teacher)  # a recipe's --teacher-arch that is the file's own is no conflict
        given = [f"--teacher-{name.replace('_', '-')}" for name in ("arch", "weights", "image_size", "normalize",
                                                                     "arch_kwargs")
                 if getattr(cfg.teacher, name) != getattr(group_default("teacher"), name)
                 and not (name in recorded and recorded[name] == (user.parse_kwargs(cfg.teacher.arch_kwargs)
                                                                  if name == "arch_kwargs" else cfg.teacher.arch))]
        if given:
            raise KDError(f"--teacher {cfg.run.teacher} is a trained teacher file, which says its architecture and "
                          f"preprocessing; {', '.join(given)} would be ignored: give one or the other")


def check_path_names(cfg: Config, groups: Groups = ALL) -> None:
    """Refuse, before any work, a path setting (declared path=True) whose name is not valid UTF-8.
    On Linux such bytes arrive as lone surrogates ('bad\\udcff'); the run would train and save a
    teacher, then fail where the path goes into JSON or safetensors metadata (UTF-8 only)."""
    for _, flag, f, value in settings_with_flags(cfg, groups):
        if f.metadata.get("path") and isinstance(value, str) and not is_utf8(value):
            raise KDError(f"{flag} {value!r} is not valid UTF-8; kd_accel writes its paths into JSON and safetensors "
                          "metadata, which need UTF-8: rename it")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def ends_training(main: Main) -> Main:
    """accelerator.end_training() on every way out of a script (done, KDError, Ctrl-C, a crash):
    the trackers --report-to opened in pipeline.setup finish and keep what was logged, and the run
    folder's lock taken there is released (in-process callers run again, or another script, at once)."""
    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> None:
        failed = True
        try:
            result, failed = main(argv), False
            return result
        finally:
            try:
                tracking.end(after_error=failed)  # the error that stopped the script is the one to report
            finally:
                runlock.release()
    return wrapped


# train_teacher.py: --epochs/--lr/--schedule/--augment are the teacher's recipe
TEACHER_GROUPS = {"data": None, "teacher": "", "run": None}


def teacher_parser() -> argparse.ArgumentParser:
    return build_parser("Train the teacher on hard labels; writes <output-dir>/teacher.safetensors.", TEACHER_GROUPS,
                        only=["dataset", "data_dir", "limit_train", "limit_test", "channels", "num_workers", "image_column",
                              "label_column", "epochs",
                              "batch_size", "lr", "schedule", "opt", "momentum", "nesterov", "weight_decay",
                              "milestones", "gamma", "warmup_epochs", "clip_grad", "precise_bn",
                              "augment", "mix", "mix_alpha", "arch", "weights", "image_size", "normalize", "output_dir",
                              "run_name", "seed", "mixed_precision", "grad_accum", "checkpoint_every",
                              "keep_checkpoints", "resume", "channels_last", "compile", "deterministic", "report_to",
                              "quiet"],
                        defaults={name: getattr(Recipe(), name) for name in ("batch_size", "augment")})


def precompute_parser() -> argparse.ArgumentParser:
    return build_parser("Run a teacher checkpoint once over the training set; write its logits cache.", ALL,
                        only=["dataset", "data_dir", "limit_train", "limit_test", "channels", "num_workers", "image_column",
                              "label_column",
                              "batch_size", "augment", "mix", "mix_alpha", "epochs",
                              "teacher_mode", *CACHE, "output_dir", "run_name", "seed", "teacher", "out",
                              "mixed_precision", "channels_last", "compile", "deterministic", "quiet"])


# distill.py and compare.py write their caches in the run folder (or at --logits): --out is
# precompute_logits.py's alone, not a flag they would take and ignore
RUN_FLAGS = [dest for group in GROUPS for dest, _, _ in flag_fields(group) if dest != "out"]


def add_export_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", nargs="+", choices=sorted(export.FORMATS), metavar="FORMAT", default=[],
                        help="at the end, export the distilled student to RUN/export/ as student.onnx and/or "
                             "student.pt2 (torch.export), each checked against torch as launch/export.py --check "
                             "does, with a model card (README.md) beside them: onnx, pt2")


def distill_parser() -> argparse.ArgumentParser:
    return build_parser("The whole experiment: teacher (train or reuse) -> logits cache (reuse or precompute) -> "
                        "distilled student -> baseline student -> summary [-> exported student].", ALL,
                        extra=add_export_flag, only=RUN_FLAGS)


def compare_parser() -> argparse.ArgumentParser:
    return build_parser("Multi-seed comparison: does distillation beat the baseline, by how much?", ALL,
                        extra=study.add_comparison_flags, only=RUN_FLAGS)


# What each script reads and writes, for outputs.check before any work: no output over an input,
# over another output, or over a file of another kind.
CHECKPOINTS = {"checkpoints": "folder"}


def run_inputs(cfg: Config) -> list[outputs.Input]:
    r = cfg.run
    resume = r.resume if r.resume not in (None, "latest") else None
    return [*(outputs.Input("--data-dir", p) for p in data_files(cfg.data.dataset, cfg.data.data_dir)),
            outputs.Input("--teacher", r.teacher and Path(r.teacher)), outputs.Input("--resume", resume and Path(resume)),
            outputs.Input("--weights", cfg.student.weights and Path(cfg.student.weights)),
            outputs.Input("--teacher-weights", cfg.teacher.weights and Path(cfg.teacher.weights))]


def run_outputs(cfg: Config, files: Mapping[str, str]) -> list[outputs.Output]:
    """{name: kind} of the files a script writes in the run folder, as outputs; and the lock it
    holds there while it runs (pipeline.setup)."""
    files = {runlock.LOCK_NAME: "lock", **files}
    return [outputs.Output("--output-dir", cfg.run_dir / name, kind) for name, kind in files.items()]


def cache_output(cfg: Config) -> list[outputs.Output]:
    """The cache a run reads, or precomputes when it is missing or its own and stale (none online)."""
    if cfg.kd.teacher_mode == "online":
        return []
    return [outputs.Output("--logits" if cfg.run.logits else "--output-dir", cache_path(cfg), "cache")]


def recipe_output(script: str) -> dict[str, str]:
    return {recipes.recipe_file(script): "recipe"}


def write_recipe(accelerator: Accelerator, cfg: Config, script: str, parser: argparse.ArgumentParser,
                 args: Mapping[str, Any]) -> None:
    """The run's recipe file (recipes.recipe_file) beside its config, as --config takes it back;
    main process only."""
    if accelerator.is_main_process:
        recipes.write_recipe(cfg.run_dir / recipes.recipe_file(script), script, recipes.recipe_of(parser, args))


def teacher_output(cfg: Config) -> dict[str, str]:
    return {} if cfg.run.teacher else {TEACHER_FILE: "model"}


def distill_outputs(cfg: Config) -> list[outputs.Output]:
    results = {name: ("json" if name.endswith(".json") else "recipe" if name.endswith(".yaml") else "model")
               for name in RESULT_FILES}
    files = {**teacher_output(cfg), **results, "previous": "cleared folder", **CHECKPOINTS,
             **{f"previous/{name}": kind for name, kind in results.items()},  # the last result, set aside
             EXPORT_DIR: "folder", f"previous/{EXPORT_DIR}": "folder"}
    return [*run_outputs(cfg, files), *cache_output(cfg)]


def compare_outputs(cfg: Config, variants: Iterable[Variant], seeds: Sequence[int]) -> list[outputs.Output]:
    files = {**teacher_output(cfg), "results.json": "json", "results.md": "results table", "results.png": "png",
             "config.compare.json": "json", **recipe_output("compare"), "compare": "folder", **CHECKPOINTS,
             **{f"{study.comparison_label(v, seed)}.safetensors": "model" for v in variants for seed in seeds}}
    caches = {o.path: o for v in variants if v.distilled for o in cache_output(v.apply(cfg))}
    return [*run_outputs(cfg, files), *caches.values()]


@ends_training
def train_teacher_main(argv: Sequence[str] | None = None) -> None:
    parser = teacher_parser()
    cfg, args = parse(parser, TEACHER_GROUPS, argv)
    outputs.check(run_outputs(cfg, {TEACHER_FILE: "model", "config.train_teacher.json": "json",
                                    **recipe_output("train_teacher"), **CHECKPOINTS}), run_inputs(cfg))
    check_resume_target(cfg, "train_teacher.py", ["teacher"])
    accelerator = setup(cfg, "train_teacher")
    train, test = load_data(accelerator, cfg)
    info = train_teacher(accelerator, cfg, train, test, cfg.run_dir / TEACHER_FILE)
    write_config(accelerator, cfg, "train_teacher")
    write_recipe(accelerator, cfg, "train_teacher", parser, args)
    accelerator.print(f"teacher: {info['test_accuracy']:.2f}% test accuracy, saved {cfg.run_dir / TEACHER_FILE}")


@ends_training
def precompute_main(argv: Sequence[str] | None = None) -> None:
    parser = precompute_parser()
    cfg, args = parse(parser, ALL, argv)
    if not cfg.run.teacher:
        raise KDError("precompute_logits.py needs --teacher PATH (a teacher checkpoint)")
    out = Path(cfg.run.out) if cfg.run.out else cache_path(cfg)
    # --out alone names the one file to write: no run folder (its lock, config.precompute_logits.json,
    # an image folder's listings) is made for it, in ./runs or anywhere; the cache's own metadata
    # stamps what made it. --output-dir or --run-name asks for a run folder, which gets them.
    run_folder = not cfg.run.out or args.get("output_dir") is not None or args.get("run_name") is not None
    # before the teacher runs: nothing written on refusal
    outputs.check([outputs.Output("--out" if cfg.run.out else "--output-dir", out, "cache"),
                   *(run_outputs(cfg, {"config.precompute_logits.json": "json", **recipe_output("precompute_logits")})
                     if run_folder else [])],
                  run_inputs(cfg))
    accelerator = setup(cfg, "precompute_logits", run_folder)
    train, _ = load_data(accelerator, cfg, run_folder)
    precompute(accelerator, cfg, cfg.run.teacher, train, out)
    if run_folder:
        write_config(accelerator, cfg, "precompute_logits")
        write_recipe(accelerator, cfg, "precompute_logits", parser, args)


@ends_training
def distill_main(argv: Sequence[str] | None = None) -> None:
    parser = distill_parser()
    cfg, args = parse(parser, ALL, argv)
    exports = export.run_exports(cfg.run_dir / EXPORT_DIR, args["export"])
    export.require_packages("onnx" in args["export"], check=True)  # before hours of training, not after
    outputs.check(distill_outputs(cfg), run_inputs(cfg))
    export.check_outputs(cfg.run_dir / "student.safetensors", exports, "--export")  # e.g. a user's own README.md there
    phases = ["teacher"] * (not cfg.run.teacher) + ["student"] + ["baseline"] * cfg.kd.baseline
    check_resume_target(cfg, "distill.py", phases)
    accelerator = setup(cfg, "distill")
    train, test = load_data(accelerator, cfg)

    teacher_path, teacher = resolve_teacher(accelerator, cfg, train, test)
    soft, online, cache = resolve_soft_targets(accelerator, cfg, teacher_path, TeacherId.of(teacher), train)

    set_aside_previous_result(accelerator, cfg)  # once the teacher and cache are settled, before new students
    student = train_student(accelerator, cfg, train, test, soft, "student", TeacherId.of(teacher), online)
    baseline = train_student(accelerator, cfg, train, test, None, "baseline") if cfg.kd.baseline else None

    metrics = experiment_metrics(accelerator, cfg, train, test, {**teacher, "path": str(teacher_path)}, student,
                                 baseline, cache)
    write_config(accelerator, cfg, "distill")
    write_recipe(accelerator, cfg, "distill", parser, args)
    if accelerator.is_main_process:
        write_json(cfg.run_dir / "metrics.json", metrics)
    print_summary(accelerator, metrics)
    if exports and accelerator.is_main_process:  # the result is saved: a failed export loses none of it
        for line in export.export_files(cfg.run_dir / "student.safetensors", exports, export.DEFAULT_TOLERANCE):
            accelerator.print(line)


@ends_training
def compare_main(argv: Sequence[str] | None = None) -> None:
    """Baseline and distilled students over several seeds, one shared teacher and cache."""
    parser = compare_parser()
    cfg, args = parse(parser, ALL, argv)
    variants, reference = study.variants_from_flags(args["variants"], args["reference"], cfg)
    for v in variants:  # each one's settings as a command line's (schedule=step needs milestones=...)
        try:
            validate(v.apply(cfg), variant=True)
        except KDError as e:
            raise KDError(f"variant {v.name!r}: {e}") from None
    study.check_seeds(args["seeds"])
    outputs.check(compare_outputs(cfg, variants, args["seeds"]), run_inputs(cfg))
    check_resume_target(cfg, "compare.py", study.comparison_phases(cfg, variants, args["seeds"]))
    accelerator = setup(cfg, "compare")
    train, test = load_data(accelerator, cfg)
    for v in variants:  # every variant's settings before the teacher and the first variant run
        try:
            check_against_data(v.apply(cfg), train)
            if v.hints:
                check_fitnets(v.apply(cfg).student.arch, teacher_arch(cfg))
        except KDError as e:
            raise KDError(f"variant {v.name!r}: {e}") from None
    teacher_path, teacher = resolve_teacher(accelerator, cfg, train, test)
    runs = study.run_comparison(accelerator, cfg, variants, args["seeds"], train, test, teacher_path, teacher)
    write_config(accelerator, cfg, "compare")
    write_recipe(accelerator, cfg, "compare", parser, args)
    study.write_comparison(accelerator, cfg, variants, reference, runs, teacher)


def inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Entropy and max-probability of the cached teacher outputs softened by T.",
                                allow_abbrev=False)
    p.add_argument("cache", help="a teacher-logits cache (safetensors)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1, 1.5, 2, 4, 8, 16])
    p.add_argument("--plot", help="write a PNG here (needs matplotlib)").output = "png"
    p.add_argument("--view", type=int, default=0, help="which stored view of a K-view cache (default: %(default)s)")
    return p


def inspect_main(argv: Sequence[str] | None = None) -> None:
    """Does a higher temperature flatten the teacher's outputs? Read from the cache alone."""
    a = inspect_parser().parse_args(argv)
    outputs.check([outputs.Output("--plot", a.plot and Path(a.plot), "png")], [outputs.Input("CACHE", Path(a.cache))])
    try:  # the bounds --temperature has: beyond them softmax(x / T) is nan or uniform
        for t in a.temperatures:
            check_setting("kd", "temperature", t, "--temperatures")
    except ValueError as e:
        raise KDError(str(e)) from None
    soft = open_cache(a.cache)
    logits, meta = soft.logits(a.view), soft.meta
    rows = study.temperature_stats(logits, sorted(a.temperatures))
    mix = f"+{meta['mix']}" if "mix" in meta else ""  # a mixed cache's (cache.CacheKey)
    views = f", view {a.view} of {soft.views} ({meta.get('augment')}{mix})" if soft.views > 1 else ""
    print(f"{meta.get('dataset')} {meta.get('split')}: {len(logits)} samples x {logits.shape[1]} classes{views}, "
          f"{soft.storage} (uniform entropy {math.log(logits.shape[1]):.3f} nats)")
    if meta.get("teacher_input"):  # caches since the teacher's preprocessing was stamped
        print(f"teacher input: {meta['teacher_input']} (teacher weights {meta.get('teacher_fingerprint')})")
    print(f"{'T':>6} {'mean entropy (nats)':>20} {'mean max prob':>14}")
    for r in rows:
        print(f"{r['T']:>6g} {r['mean_entropy']:>20.4f} {r['mean_max_prob']:>14.4f}")
    if a.plot:
        if study.plot_temperature(rows, logits.shape[1], a.plot):
            print(f"wrote {a.plot}")
        else:
            raise KDError("--plot needs matplotlib: pip install -e '.[plots]'")


# Each launch/ script's parser (the tests read every script's flags here).
PARSERS = {"train_teacher.py": teacher_parser, "precompute_logits.py": precompute_parser, "distill.py": distill_parser,
           "compare.py": compare_parser, "inspect_logits.py": inspect_parser}
