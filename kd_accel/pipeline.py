"""The experiment's steps, shared by the launch scripts: each script is a few lines of these.

teacher (train or reuse) -> teacher-logits cache (reuse if valid, else precompute) ->
distilled student (reads the cache, never the teacher) -> baseline student (hard labels).

Each concern lives in a module of its own; this module gathers their names for the scripts:
- process.py: the Accelerator and the process-wide settings (threads, malloc, determinism);
- runfolder.py: the run's folder (held, its config written when done, a result set aside);
- preflight.py: the data read and everything checked before any work;
- stamps.py: the settings stamped on checkpoints and models, and the resume checks;
- phases.py: the teacher and student phases (soft_targets.py: where a student's targets come
  from; teaching.py: the teacher's logits cache; training.py: the loop).
"""
from .phases import (columns, fitnet_hint, fitnet_training, online_view, resolve_teacher, run_info, student_data,
                     teacher_info_from_checkpoint, train_student, train_teacher)
from .preflight import SIZE_FLAGS, check_against_data, check_model, check_teacher_classes, load_data, teacher_arch
from .process import make_accelerator
from .runfolder import RESULT_FILES, TEACHER_FILE, resolved_config, set_aside_previous_result, setup, write_config
from .stamps import PHASE_GROUPS, check_resume_target, model_stamp, phase_kind, phase_settings, resolved_settings

__all__ = ["columns", "online_view", "resolve_teacher", "run_info", "student_data", "teacher_info_from_checkpoint",
           "fitnet_hint", "fitnet_training", "train_student", "train_teacher", "SIZE_FLAGS", "check_against_data",
           "check_model", "check_teacher_classes", "load_data", "teacher_arch", "make_accelerator", "RESULT_FILES",
           "TEACHER_FILE", "resolved_config", "set_aside_previous_result", "setup", "write_config", "PHASE_GROUPS",
           "check_resume_target", "model_stamp", "phase_kind", "phase_settings", "resolved_settings"]
