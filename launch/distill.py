"""`accelerate launch launch/distill.py --help`: see README."""
from kd_accel.cli import distill_main
from kd_accel.errors import run_cli

if __name__ == "__main__":
    run_cli(distill_main)
