"""`accelerate launch launch/inspect_logits.py --help`: see README."""
from kd_accel.cli import inspect_main
from kd_accel.errors import run_cli

if __name__ == "__main__":
    run_cli(inspect_main)
