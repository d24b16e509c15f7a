"""Peak anonymous memory (RssAnon, MB) of this process in each phase of a distill.py run from an
image folder: `python folder_memory.py DATA_DIR OUT_DIR`. Decoding in this process
(--num-workers 0) and malloc's defaults (KD_ACCEL_KEEP_FREED_MEMORY=0, set by the caller), so
what is measured is what the run holds, not what workers or a kept heap add. The phase is
tagged by the training loop's batch hook (its label) and around the precompute. Prints one JSON
line: {"peak": {phase: MB}, "cache_bytes": ...}."""
import json
import sys
import threading
import time
from pathlib import Path


def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    data, out = sys.argv[1], Path(sys.argv[2])
    from kd_accel import cli, teaching, training

    phase, peak, stop = ["start"], {}, threading.Event()

    def sample():
        while not stop.is_set():
            peak[phase[0]] = max(peak.get(phase[0], 0.0), anon_mb())
            time.sleep(0.005)

    def tag(label, batch):
        phase[0] = label

    precompute = teaching.precompute_views

    def tagged_precompute(*args, **kwargs):
        phase[0] = "precompute"
        try:
            return precompute(*args, **kwargs)
        finally:
            phase[0] = "after precompute"

    training.HOOKS.batch.append(tag)
    teaching.precompute_views = tagged_precompute
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cli.distill_main(["--dataset", "imagefolder", "--data-dir", data, "--channels", "1", "--image-size", "8",
                      "--teacher-image-size", "8", "--augment", "none", "--teacher-epochs", "1",
                      "--teacher-arch", "notebook:student", "--epochs", "1", "--no-baseline", "--num-workers", "0",
                      "--batch-size", "200", "--cache-dtype", "fp32", "--output-dir", str(out)])
    stop.set()
    thread.join()
    cache = next(out.glob("teacher_logits*.safetensors"))
    print(json.dumps({"peak": peak, "cache_bytes": cache.stat().st_size}))


if __name__ == "__main__":
    main()
