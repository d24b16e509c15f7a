"""A run that pauses mid-training, for the tests of two runs on one folder (tests/test_runlock.py):

  python tests/scripts/pause.py PHASE:STEP FOLDER -- launch/distill.py ARGS...

after optimizer step STEP of phase PHASE, writes FOLDER/paused.<rank> and waits until FOLDER/go
exists (at most MAX_WAIT_S, so a failed test never leaves it running), then carries on. FOLDER
must not be the run folder: the test compares that folder before and after a refused run. Runs
the script as `python launch/distill.py ARGS...` would (also under accelerate launch)."""
import os
import runpy
import sys
import time
from pathlib import Path

from kd_accel import training

MAX_WAIT_S = 300

spec, folder, sep, script, *args = sys.argv[1:]
assert sep == "--", __doc__
phase, _, step = spec.rpartition(":")
folder = Path(folder)


def pause(label, global_step):
    if label == phase and global_step == int(step):
        (folder / f"paused.{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
        deadline = time.monotonic() + MAX_WAIT_S
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


training.HOOKS.step.append(pause)
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
