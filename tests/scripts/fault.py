"""Fault injection for the crash/resume tests, as a wrapper around a launch script:

  python tests/scripts/fault.py PHASE:STEP -- launch/distill.py ARGS...

installs a training step hook that SIGKILLs this process right after optimizer step STEP of phase
PHASE (e.g. baseline:27), then runs the script as `python launch/distill.py ARGS...` would. The
package itself has no fault injection; only the tests use this."""
import os
import runpy
import signal
import sys

from kd_accel import training

spec, sep, script, *args = sys.argv[1:]
assert sep == "--", __doc__
phase, _, step = spec.rpartition(":")


def kill(label, global_step):
    if label == phase and global_step == int(step):
        os.kill(os.getpid(), signal.SIGKILL)


training.HOOKS.step.append(kill)
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
