import subprocess
import sys
from pathlib import Path

import pytest

from kd_accel import memory

SCRIPT = Path(__file__).parent / "scripts" / "page_faults.py"


@pytest.mark.parametrize("env, chosen", [
    ({}, None),
    ({"MALLOC_MMAP_THRESHOLD_": "1000000"}, "MALLOC_MMAP_THRESHOLD_"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES"),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, None),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
    ({"KD_ACCEL_KEEP_FREED_MEMORY": "0"}, "KD_ACCEL_KEEP_FREED_MEMORY=0"),
])
def test_a_users_allocator_choice_is_left_alone(env, chosen):
    assert memory.user_chose_allocator(env) == chosen


def faults_per_step(mode):
    out = subprocess.run([sys.executable, str(SCRIPT), mode], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a process of its own, measuring page faults over many steps (13 s on the AVX2 machine)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_means_no_page_fault_storm_per_step():
    """With keep_freed_memory a teacher step reuses its freed activation buffers: fewer page
    faults a step than one 5 MB activation has pages (1,280). glibc's default takes thousands."""
    kept = faults_per_step("keep")
    assert kept < 1280, kept
    print(f"page faults a step: kept {kept:.0f}, glibc default {faults_per_step('default'):.0f}")
