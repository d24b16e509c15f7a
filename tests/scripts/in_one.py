"""Several launch-script runs in this one process, each as `python launch/<script> ARGS` runs it
(its sys.argv, its folder first on sys.path, run as __main__): one interpreter start, with its
imports of torch and kd_accel (2-3 s), for them all.

  python tests/scripts/in_one.py launch/a.py ARGS... ++ launch/b.py ARGS... [++ ...]

After each run, `== exit CODE` on stdout and on stderr (CODE: its SystemExit code, None when the
script returned); the process exits with the last run's code. tests/conftest.py's
start_in_one_process and in_one_results start it and split what each run printed."""
import runpy
import sys
from pathlib import Path

SEP = "++"

runs = [[]]
for arg in sys.argv[1:]:
    if arg == SEP:
        runs.append([])
    else:
        runs[-1].append(arg)
code = None
for script, *args in runs:
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    code = None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code
    for stream in (sys.stdout, sys.stderr):
        print(f"== exit {code}", file=stream, flush=True)
sys.exit(code)
