"""`accelerate launch launch/compare.py --help`: see README."""
from kd_accel.cli import compare_main
from kd_accel.errors import run_cli

if __name__ == "__main__":
    run_cli(compare_main)
