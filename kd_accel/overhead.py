"""Per-step and per-phase costs that are not arithmetic, removed without changing any number.

1. Accelerate's `AcceleratedOptimizer.step` asks `is_lomo_available()` twice per optimizer step,
   and that is `importlib.util.find_spec("lomo_optim")`: a walk of sys.path with a stat per
   entry, uncached. Profiled on a 2-core AMD EPYC: about 0.4 ms a step, some 5% of a student
   step. Whether a package is installed cannot change while a run trains, so the probe is
   answered once (functools.cache around Accelerate's own function).
2. `accelerator.free_memory()`, called at the start of every phase so that one phase's model and
   optimizer never reach the next one's checkpoints, ends in `gc.collect()`, which walks every
   Python object torch and its imports created: 0.2-0.4 s per phase. `gc.freeze()` after those
   imports moves them to the permanent generation, which collections skip (7 us measured); the
   objects a run creates later are collected as before.

Applied once per process by pipeline.make_accelerator. Both are no-ops for the arithmetic: the
same weights bit for bit (tests/test_overhead.py)."""
from __future__ import annotations

import functools
import gc

_applied = False


def remove_overhead() -> None:
    """Cache Accelerate's per-step package probe and freeze the objects that exist now."""
    global _applied
    if _applied:
        return
    import accelerate.optimizer as accelerated

    if hasattr(accelerated, "is_lomo_available") and not hasattr(accelerated.is_lomo_available, "cache_info"):
        accelerated.is_lomo_available = functools.cache(accelerated.is_lomo_available)
    gc.freeze()
    _applied = True
