"""`python launch/export.py RUN/student.safetensors --onnx student.onnx --check`: see docs/deploy.md."""
from kd_accel.errors import run_cli
from kd_accel.export import export_main

if __name__ == "__main__":
    run_cli(export_main)
