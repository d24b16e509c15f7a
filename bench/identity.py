"""Does this tree train what another commit trains, bit for bit?

    python bench/identity.py --ref 12925bf [--data-dir ../shared/data] [--out /tmp/identity] [--only smoke,folder]

Runs the same set of small commands (below: every teacher mode, K views with top-k storage,
FitNets, an image folder with replayed crops, a zoo teacher from a .pth file, the 2-process
precompute, a kill and --resume latest) once in a git worktree of REF and once in this tree,
each with its own package on PYTHONPATH and one thread, then compares every safetensors file
they wrote tensor by tensor (names, dtypes, bits) and the accuracies in every metrics.json.
Tensors only one side holds are listed (a cache layout that grew columns), never counted as
equal; so are accuracies only this tree reports (a new figure). Exit 0 when everything both
sides hold is identical.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--limit-train", "1200", "--limit-test", "300", "--teacher-epochs", "1", "--epochs", "2", "--batch-size", "100"]


def cases(data, folder, pth):
    """{name: [argv lists run in order; "{out}" is the case's output folder]}."""
    d = ["--data-dir", data]
    distill = ["launch/distill.py", *d, *SMALL, "--output-dir", "{out}"]
    return {
        "smoke": [distill],
        "shift-views-topk": [[*distill, "--augment", "shift", "--views", "3", "--cache-topk", "3", "--epochs", "3"]],
        "online": [[*distill, "--augment", "shift", "--teacher-mode", "online", "--no-baseline"]],
        "fixed": [[*distill, "--augment", "shift", "--teacher-mode", "fixed", "--no-baseline"]],
        "fitnets": [["launch/compare.py", *d, *SMALL, "--output-dir", "{out}", "--seeds", "0", "--variants",
                     "fitnets:hint_epochs=1"]],
        "fitnets-joint": [["launch/compare.py", *d, *SMALL, "--output-dir", "{out}", "--seeds", "0", "--variants",
                           "fitnets:mode=joint,beta=0.5", "--augment", "shift"]],
        "folder-rrc-2views": [["launch/distill.py", "--dataset", "imagefolder", "--data-dir", folder, "--channels", "1",
                               "--image-size", "28", "--teacher-image-size", "28", "--teacher-epochs", "1", "--epochs",
                               "2", "--views", "2", "--batch-size", "50", "--num-workers", "1", "--output-dir", "{out}"]],
        "zoo-pth-teacher": [[*distill, "--teacher-arch", "torchvision:resnet18", "--teacher-weights", pth,
                             "--teacher-epochs", "0", "--no-baseline"]],
        "precompute-2proc": [[*distill, "--epochs", "1", "--no-baseline"],
                             ["ACCELERATE", "launch/precompute_logits.py", *d, "--limit-train", "1200", "--teacher",
                              "{out}/teacher.safetensors", "--out", "{out}/two.safetensors"]],
        "kill-resume": [["KILL:student:7", *distill, "--epochs", "3", "--checkpoint-every", "5"],
                        [*distill, "--epochs", "3", "--checkpoint-every", "5", "--resume", "latest"]],
    }


def run(tree, argv, out, log):
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONHASHSEED": "0"}
    argv = [a.replace("{out}", str(out)) for a in argv]
    if argv[0] == "ACCELERATE":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_cpu_threads_per_process", "1", *argv[1:]]
    elif argv[0].startswith("KILL:"):
        phase_step = argv[0][5:]
        # the tree's own fault script: it hooks that tree's training loop, whose hooks may differ
        cmd = [sys.executable, str(Path(tree) / "tests" / "scripts" / "fault.py"), phase_step, "--", *argv[1:]]
    else:
        cmd = [sys.executable, *argv]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc not in (0, -signal.SIGKILL):
        raise SystemExit(f"{tree}: {' '.join(argv)} failed ({rc}); see {log}")
    return rc


def tensors(folder):
    from safetensors.torch import load_file

    return {str(p.relative_to(folder)): load_file(p) for p in sorted(folder.rglob("*.safetensors"))
            if "checkpoints" not in p.parts and ".folders" not in p.parts and "previous" not in p.parts}


def accuracies(folder):
    out = {}
    for p in sorted(folder.rglob("metrics.json")):
        if "previous" in p.parts:
            continue
        def walk(obj, key=""):
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(v, f"{key}.{k}" if key else k)
            elif key.endswith("test_accuracy") and isinstance(obj, (int, float)):
                out[f"{p.relative_to(folder)}:{key}"] = obj
        walk(json.loads(p.read_text()))
    return out


def compare(a, b):
    import torch

    ta, tb = tensors(a), tensors(b)
    lines, same = [], True
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            lines.append(f"  {name}: only in {'ref' if name in ta else 'this tree'}")
            same = False
            continue
        x, y = ta[name], tb[name]
        common = sorted(set(x) & set(y))
        diff = [k for k in common if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape or not torch.equal(x[k], y[k])]
        extra = sorted(set(x) ^ set(y))
        lines.append(f"  {name}: {len(common) - len(diff)}/{len(common)} tensors identical"
                     + (f"; differ: {diff[:5]}" if diff else "") + (f"; only one side: {extra}" if extra else ""))
        same &= not diff
    acc_a, acc_b = accuracies(a), accuracies(b)
    new = sorted(set(acc_b) - set(acc_a))  # a figure this tree adds (e.g. best_test_accuracy) is not a change
    for k in sorted(set(acc_a) | set(acc_b)):
        if k not in new and acc_a.get(k) != acc_b.get(k):
            lines.append(f"  {k}: {acc_a.get(k)} vs {acc_b.get(k)}")
            same = False
    if new:
        lines.append(f"  new in this tree: {', '.join(new)}")
    return same, lines


def make_inputs(work, data):
    """An MNIST image folder (600 train / 200 val PNGs) and a torchvision resnet18 .pth for 10
    classes (saved by torchvision's model, as a user's file)."""
    import torch
    import torchvision

    folder, pth = work / "folder", work / "resnet18-10.pth"
    if not folder.exists():
        subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "make_folder.py"), "--dataset", "mnist",
                        "--data-dir", data, "--out", str(folder), "--limit-train", "600", "--limit-val", "200"],
                       check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if not pth.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), pth)
    return str(folder), str(pth)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="the commit to compare with")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default="/tmp/kd_identity")
    p.add_argument("--only", default=None, help="comma-separated case names")
    a = p.parse_args()
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    ref_tree = work / "ref-tree"
    if not ref_tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), a.ref], cwd=ROOT, check=True)
    folder, pth = make_inputs(work, os.path.abspath(a.data_dir))
    table = cases(os.path.abspath(a.data_dir), folder, pth)
    names = a.only.split(",") if a.only else list(table)
    ok = True
    for name in names:
        results = {}
        for side, tree in (("ref", ref_tree), ("new", ROOT)):
            out = work / side / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            start = time.perf_counter()
            for argv in table[name]:
                run(tree, argv, out, work / f"{side}-{name}.log")
            results[side] = (out, time.perf_counter() - start)
        same, lines = compare(results["ref"][0], results["new"][0])
        ok &= same
        print(f"{name}: {'IDENTICAL' if same else 'DIFFERENT'} (ref {results['ref'][1]:.0f}s, this tree "
              f"{results['new'][1]:.0f}s)", flush=True)
        for line in lines:
            print(line, flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
