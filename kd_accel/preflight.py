"""What is checked before any work: the data read (and, for an image folder, its records kept in
the run folder), the settings bounded by the data, and every model a run will build, so that a
run never stops after its teacher trained for what could be known at its start."""
from __future__ import annotations

from typing import TYPE_CHECKING

from accelerate import Accelerator

from .augment import get_spec
from .cache import check_topk
from .data import DataSource, balanced_subset, ensure_downloaded, open_splits
from .errors import KDError
from .models import build_from_spec, load_weights, meta_record, read_checkpoint
from .models.zoo import HeadReset, check_input_size
from .roles import recipe_record

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .config import Config, Recipe


def load_data(accelerator: Accelerator, cfg: Config, run_folder: bool = True) -> tuple[DataSource, DataSource]:
    """(train, test) splits: tensors, or an image folder's listings (kd_accel/data); the main
    process downloads first if it must. An image folder's listings are kept in the run folder
    (none without one: `run_folder` False, as setup's); its CPU threads line is printed here."""
    d = cfg.data
    with accelerator.main_process_first():
        ensure_downloaded(d.dataset, d.data_dir)
    train, test = open_splits(d.dataset, d.data_dir, d.channels, d.num_workers,  # val labelled by train's classes
                              (d.image_column, d.label_column))
    train, test = train.subset(d.limit_train), test.subset(d.limit_test)
    check_against_data(cfg, train)
    if run_folder:
        # what a later run needs to name a change of the data (an image folder's listings), and
        # what is checked as the data are read (its files' bytes: data/content.py)
        if accelerator.is_main_process:
            for split in (train, test):
                split.remember(cfg.run_dir)
        accelerator.wait_for_everyone()
        for split in (train, test):
            split.use_records(cfg.run_dir)
    line = train.threads_line(accelerator.device)  # a folder run's one threads line (setup left it to here)
    if line:
        accelerator.print(line, flush=True)
    return train, test


def check_against_data(cfg: Config, train: DataSource) -> None:
    """The settings whose bounds are the data's (class count, labels per class), checked as soon
    as the data are read, before any model runs: found later, they would stop a run after its
    teacher trained (compare.py: after earlier variants ran; it checks each variant's here)."""
    if cfg.kd.cache_topk is not None:
        try:
            check_topk(cfg.kd.cache_topk, train.num_classes)
        except KDError as e:
            raise KDError(f"--cache-topk {cfg.kd.cache_topk}: {e}") from None
    train.check_options(cfg.data.channels, cfg.data.num_workers, cfg.data.train_subset)
    if cfg.data.train_subset:
        balanced_subset(train.labels, cfg.data.train_subset)
    for recipe in (cfg.student, cfg.teacher):
        if recipe.augment:
            train.check_augment(get_spec(recipe.augment))
    # each model for these data, before the teacher trains (check_model); a teacher file's classes
    for role, recipe in [("student", cfg.student)] + [("teacher", cfg.teacher)] * (not cfg.run.teacher):
        check_model(recipe, train, role)
    if cfg.run.teacher:
        check_teacher_classes(read_checkpoint(cfg.run.teacher)[1], cfg.run.teacher, train)


# the flag that sets each role's input size (train_teacher.py takes the teacher's unprefixed)
SIZE_FLAGS = {"student": "--image-size", "teacher": "--teacher-image-size (train_teacher.py: --image-size)"}


def check_model(recipe: Recipe, train: DataSource, role: str) -> None:
    """The model `recipe` names, for these data, before any work: its preprocessing (e.g.
    --normalize weights where none is known); its --weights read (finite), fitting the
    architecture; a teacher used as its weights give it (epochs 0) whose classifier they do not
    fit (it would teach from a random head); and the input size: the model must run on the
    preprocessing's size (and train there, unless a teacher used as it is), or it is refused
    naming a size it runs at (zoo.check_input_size); and its logits [B, the data's classes]
    (model code builds its own head)."""
    record = recipe_record(recipe, train)
    model, notes = build_from_spec(record)
    if recipe.weights:
        notes = notes + load_weights(model, recipe.weights)
    used_as_is = role == "teacher" and recipe.epochs == 0
    for note in notes:
        if used_as_is and isinstance(note, HeadReset):
            raise KDError(f"--teacher-weights {recipe.weights} are for {note.n_file} classes, the data have "
                          f"{note.n_model}: the classifier would be re-initialised, and --teacher-epochs 0 uses the "
                          f"teacher untrained (a random teacher); fine-tune it (--teacher-epochs N) or give weights "
                          f"for {note.n_model} classes")
    check_input_size(model, record["spec"], record["input_shape"], SIZE_FLAGS[role], train=not used_as_is,
                     num_classes=record["num_classes"])


def check_teacher_classes(meta: Mapping[str, str], path: Path | str, data: DataSource) -> None:
    """A teacher file (--teacher) made for the data's class count, or one line naming both
    counts: its logits would fill a cache for other classes."""
    n = meta_record(meta, path)["num_classes"]
    if n != data.num_classes:
        raise KDError(f"--teacher {path} is a teacher for {n} classes, the data ({data.dataset}) have "
                      f"{data.num_classes}: its logits cannot teach these classes; give a teacher trained on these "
                      "data, or fine-tune one from its weights (--teacher-arch A --teacher-weights W)")


def teacher_arch(cfg: Config) -> str:
    """The teacher's architecture spec: --teacher's file says it, else --teacher-arch."""
    if not cfg.run.teacher:
        return cfg.teacher.arch
    return meta_record(read_checkpoint(cfg.run.teacher)[1], cfg.run.teacher)["spec"]
