"""The machine a benchmark ran on, printed with every table and stored in every results JSON:
CPU model, cores, threads, the CPU features that change kernel choices, the torch build, and
the load average (a busy machine makes absolute times unreliable; same-run ratios less so)."""
import os
import platform
import re
import subprocess

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None, set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (model.group(1).strip() if model else None), set(flags.group(1).split() if flags else ())


def cpu_model():
    model, _ = _cpuinfo()
    if model:
        return model
    try:  # lscpu where /proc/cpuinfo has no model name (some ARM machines)
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine_info(device=None):
    from kd_accel.threads import physical_cores

    _, flags = _cpuinfo()
    try:
        import accelerate

        accel = accelerate.__version__
    except ImportError:
        accel = None
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": [f for f in FLAGS if f in flags],
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "accelerate": accel,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    return info


def describe(info):
    """One line for a table's header."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"machine: {info['cpu']} ({info['physical_cores']} cores, {info['logical_cpus']} logical; "
            f"{'/'.join(info['cpu_flags']) or 'no AVX'}), torch {info['torch']} ({info['cpu_capability']}, "
            f"{info['torch_threads']} threads), accelerate {info['accelerate']}, Python {info['python']}{gpu}; "
            f"load average {info['loadavg_1m']:.2f} at the start")
