"""Prints the thread choice kd_accel makes in the process a launcher started, then torch's count."""
import torch

from kd_accel.threads import set_cpu_threads

print(set_cpu_threads())
print("torch_threads", torch.get_num_threads())
