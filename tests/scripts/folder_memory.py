"""Peak anonymous memory (RssAnon, MB) of this process while distill.py precomputes a folder's
cache and trains a student from it: `python folder_memory.py DATA_DIR OUT_DIR`. Decoding in this
process (--num-workers 0) and malloc's defaults (KD_ACCEL_KEEP_FREED_MEMORY=0, set by the
caller), so what is measured is what the run holds, not what workers or a kept heap add.
Prints one JSON line: {"before": MB at the start of the run, "peak": MB, "cache_bytes": ...}."""
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
    from kd_accel import cli

    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], anon_mb())
            time.sleep(0.01)

    before = anon_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cli.distill_main(["--dataset", "imagefolder", "--data-dir", data, "--channels", "1", "--image-size", "8",
                      "--teacher-image-size", "8", "--augment", "none", "--teacher-epochs", "1",
                      "--teacher-arch", "notebook:student", "--epochs", "1", "--no-baseline", "--num-workers", "0",
                      "--batch-size", "200", "--cache-dtype", "fp32", "--output-dir", str(out)])
    stop.set()
    thread.join()
    cache = next(out.glob("teacher_logits*.safetensors"))
    print(json.dumps({"before": before, "peak": peak[0], "cache_bytes": cache.stat().st_size}))


if __name__ == "__main__":
    main()
