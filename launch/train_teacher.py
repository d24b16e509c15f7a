"""`accelerate launch launch/train_teacher.py --help`: see README."""
from kd_accel.cli import train_teacher_main
from kd_accel.errors import run_cli

if __name__ == "__main__":
    run_cli(train_teacher_main)
