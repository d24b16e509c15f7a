"""GPU speed check, ready to run in under five minutes: the notebook-style distillation loop vs
kd_accel's cached step on the same device, and a precompute.

    bash bench/gpu.sh                 # = python bench/gpu.py --device cuda --json bench/results/gpu.json
    python bench/gpu.py --device cpu --steps 5 --synthetic --modes eager    # the path tests/test_bench.py runs

Cases, in one process, alternated rep by rep (a warm-up epoch of each first, not timed):
  nb_distill_epoch   the notebook as a user runs it on a GPU: torchvision MNIST + ToTensor +
                     DataLoader(batch_size=100, shuffle=True, pin_memory), the teacher run online
                     in every step, loss.item() every step.
  kd_fit_epoch       kd_accel.training.fit as the launch scripts call it (the cache's logits
                     and the data moved to the device by fit), 1 epoch.
  kd_step_<mode>     kd_accel's cached step with nothing else: images (as floats), labels and
                     teacher logits resident on the device, a batch gathered there by the
                     epoch's permutation (data.EpochPermutation: the same order as fit), the same
                     model, loss (losses.hinton_kd_loss), Adam and memory format, loss parts summed
                     on the device, no host sync until the epoch ends. mode: eager; graph (the
                     whole step, gather + forward + backward + Adam, captured once in a CUDA graph
                     and replayed: a model this small is launch-bound); compile
                     (torch.compile(mode="reduce-overhead") of the model, Adam eager).
  bare_forward       the floor of a precompute: the teacher over float tensors on the device.
  kd_precompute      kd_accel's precompute: evaluation.predict_logits + cache.save_cache.
  resume check       kd_accel's fit under --deterministic, SIGKILLed after step 7 (checkpoints every
                     5), resumed with --resume latest: the same weights as an uninterrupted run?
                     Three processes of their own, synthetic data (--no-resume-check skips it).
  folder pipeline    (own data) images/s of kd_accel's image-folder pipeline from synthetic JPEGs
                     with N workers, and with torchvision's GPU JPEG decoder where it works; in a
                     process of its own, in the budget left (--no-folder skips it).
  zoo pair           (own models) a ResNet-18 student trained by fit at 224 px, bf16, channels-last,
                     on synthetic images resident on the device: images/s on hard labels, from
                     cached logits and with a ResNet-50 teacher online; peak GPU memory; model
                     FLOP utilisation against --peak-tflops. In a process of its own, in the
                     budget left (--no-zoo skips it).

Each epoch is --steps steps of batch 100 (600: all of MNIST). The ratios printed: notebook /
kd_accel per epoch (target on a GPU: >= 10, aim 30) and precompute / bare forward (<= 1.2).
Untrained teacher: speed does not depend on the weights' values.
"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the tree's own package first: a bare copy of the tree runs without `pip install -e .`
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from machine import machine_info  # noqa: E402

from kd_accel.checkpointing import Checkpointer  # noqa: E402
from kd_accel.data import EpochPermutation, TensorData, load_split, to_float  # noqa: E402
from kd_accel.errors import KDError, first_line  # noqa: E402
from kd_accel.losses import hinton_kd_loss  # noqa: E402
from kd_accel.models import Student, Teacher  # noqa: E402

BATCH, T, ALPHA, LR = 100, 4.0, 0.5, 1e-3
MODES = ("eager", "graph", "compile")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- data
def load_data(args):
    """uint8 images [N, 1, 28, 28], labels [N], N = steps * 100 (real MNIST or synthetic)."""
    n = args.steps * BATCH
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n,), generator=g))
    try:
        train = load_split("mnist", "train", args.data_dir)
    except KDError as e:  # a machine without the MNIST files: the same work on random pixels
        print(f"warning: {e}\nusing synthetic images instead (--synthetic); the per-sample work is the same", flush=True)
        args.synthetic = True
        return load_data(args)
    return train.images[:n], train.labels[:n]


class NotebookDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST(transform=ToTensor()) does per sample: a PIL image from
    the uint8 array, then ToTensor. Used for --synthetic; real data goes through torchvision."""

    def __init__(self, images, labels):
        from torchvision import transforms

        self.images, self.labels, self.tf = images, labels, transforms.ToTensor()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i, 0].numpy(), mode="L")), int(self.labels[i])


def notebook_loader(args, images, labels, device):
    if args.synthetic:
        ds = NotebookDataset(images, labels)
    else:
        import torchvision
        from torchvision import transforms

        ds = torchvision.datasets.MNIST(args.data_dir, train=True, download=False, transform=transforms.ToTensor())
        ds = torch.utils.data.Subset(ds, range(len(labels))) if len(labels) < len(ds) else ds
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, pin_memory=device.type == "cuda")


# ---------------------------------------------------------------- the notebook's side
class NotebookDistill:
    def __init__(self, args, images, labels, device):
        self.device, self.loader = device, notebook_loader(args, images, labels, device)
        self.teacher = Teacher().to(device).eval()
        self.student = Student().to(device)
        self.opt = torch.optim.Adam(self.student.parameters(), LR)

    def epoch(self):
        self.student.train()
        running = 0.0
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            with torch.no_grad():
                t = self.teacher(x)
            loss = hinton_kd_loss(self.student(x), y, t, T, ALPHA)["loss"]
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            running += loss.item()  # the notebook's per-step host sync
        return running


# ---------------------------------------------------------------- kd_accel's side
class ResidentKDStep:
    """kd_accel's cached distillation step, everything resident on the device.

    Same math as training.fit with make_objective("hinton", T, alpha), a constant lr and
    channels-last (tests/test_bench.py checks eager mode against fit: same weights)."""

    def __init__(self, images, labels, logits, device, mode="eager", seed=0, channels_last=True, student=None):
        if mode == "graph" and device.type != "cuda":
            raise ValueError("graph mode needs a CUDA device")
        self.device, self.mode = device, mode
        self.mf = torch.channels_last if channels_last else torch.contiguous_format
        self.x = to_float(images.to(device))  # elementwise: x[idx] == to_float(images[idx]) exactly
        self.y, self.t = labels.to(device), logits.to(device=device, dtype=torch.float32)
        self.order = EpochPermutation(len(labels), seed)
        self.model = (student or Student()).to(device).to(memory_format=self.mf).train()
        capturable = mode == "graph"
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, capturable=capturable)
        self.forward = torch.compile(self.model, mode="reduce-overhead" if device.type == "cuda" else "default") \
            if mode == "compile" else self.model
        self.sums = torch.zeros(3, device=device)  # loss, hard, soft: summed on the device
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.steps, self.graph = 0, None

    def _step(self, idx):
        x = self.x.index_select(0, idx).contiguous(memory_format=self.mf)
        parts = hinton_kd_loss(self.forward(x), self.y.index_select(0, idx), self.t.index_select(0, idx), T, ALPHA)
        parts["loss"].backward()
        self.opt.step()
        vals = torch.stack([parts["loss"].detach(), parts["hard"].detach(), parts["soft"].detach()])
        self.sums.add_(vals)
        self.nonfinite.logical_or_(~torch.isfinite(vals).all())

    def _capture(self, idx0):
        """Warm up on a side stream (3 steps, as CUDA graphs require), then capture one step."""
        self.static_idx = idx0.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self._step(self.static_idx)
        torch.cuda.current_stream().wait_stream(side)
        self.sums.zero_()
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step(self.static_idx)  # grads are written (not accumulated) in every replay

    def epoch(self, epoch=0, max_steps=None):
        perm = self.order.permutation(epoch).to(self.device)  # one copy per epoch
        n = len(perm) // BATCH if max_steps is None else max_steps
        for i in range(n):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            if self.mode == "graph":
                if self.graph is None:
                    self._capture(idx)
                self.static_idx.copy_(idx)  # device to device: no host sync
                self.graph.replay()
            else:
                self._step(idx)
                self.opt.zero_grad(set_to_none=True)
            self.steps += 1
        return self.sums  # read (one sync) by the caller when the epoch is over

    def check(self):
        if bool(self.nonfinite):
            raise RuntimeError("non-finite loss")


def kd_fit_epoch(args, images, labels, logits, device):
    """kd_accel's own training.fit, one epoch, the cached logits as its teacher_logits column.
    Timed by fit itself ({"seconds": its train_time_s}): its epoch, not the Accelerator's set-up
    nor free_memory's emptying of the CUDA cache before it."""
    from kd_accel.config import from_flags
    from kd_accel.data import Split
    from kd_accel.pipeline import columns, make_accelerator
    from kd_accel.training import TrainSpec, fit, make_objective

    cfg = from_flags(epochs=1, batch_size=BATCH, schedule="constant", lr=LR)
    accelerator = make_accelerator(cfg, cpu=device.type == "cpu")
    split = Split("mnist", "train", images, labels, 10)
    _, hist = fit(accelerator, Student(), TensorData(columns(split, teacher_logits=logits)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("hinton", T, ALPHA), "student")
    return {"seconds": hist["train_time_s"]}


# ---------------------------------------------------------------- precompute
def bare_forward(teacher, xf):
    with torch.inference_mode():
        for i in range(0, len(xf), 1000):
            teacher(xf[i : i + 1000])


def kd_precompute(teacher, images, labels, device, workdir):
    from kd_accel.cache import CacheKey, save_cache
    from kd_accel.config import from_flags
    from kd_accel.data import Split
    from kd_accel.evaluation import predict_logits
    from kd_accel.pipeline import make_accelerator

    accelerator = make_accelerator(from_flags(), cpu=device.type == "cpu")
    split = Split("mnist", "train", images, labels, 10)
    logits = predict_logits(accelerator, teacher, split)
    save_cache(Path(workdir) / "cache.safetensors", logits, labels, CacheKey("mnist", "train", len(labels), 10, "t", "d"))
    return logits


# ---------------------------------------------------------------- the zoo pair (own models)
ZOO_CASES = ("ce", "kd", "online")


def zoo_child(args):
    """In a process of its own (its own Accelerator in bf16, its own peak memory): a
    --zoo-student trained by kd_accel's fit on synthetic --zoo-size images resident on the device,
    on hard labels (ce), from cached logits (kd) and from the frozen --zoo-teacher run on every
    batch (online); bf16, channels-last; the first round a warm-up. One JSON line: images/s and
    peak GPU memory per case, and the student's forward FLOPs per image."""
    from kd_accel.augment import SPECS
    from kd_accel.config import from_flags
    from kd_accel.data import Split
    from kd_accel.pipeline import columns, make_accelerator
    from kd_accel.roles import build, inputs_for
    from kd_accel.training import TrainSpec, fit, make_objective, online_objective

    device = torch.device(args.device)
    cfg = from_flags(epochs=1, batch_size=args.zoo_batch, lr=LR, arch=args.zoo_student, teacher_arch=args.zoo_teacher,
                     image_size=args.zoo_size, teacher_image_size=args.zoo_size, mixed_precision="bf16")
    accelerator = make_accelerator(cfg, cpu=device.type == "cpu")
    n, s, classes = args.zoo_steps * args.zoo_batch, args.zoo_size, 1000
    g = torch.Generator().manual_seed(0)
    train = Split("synthetic", "train", torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g),
                  torch.randint(0, classes, (n,), generator=g), classes)
    quiet = lambda line: None  # noqa: E731
    teacher, _ = build(cfg.teacher, train, "teacher", quiet)
    teacher = teacher.to(device).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    kd = make_objective("hinton", T, ALPHA)
    logits = torch.randn(n, classes) * 5
    out = {"teacher": args.zoo_teacher, "student": args.zoo_student, "image_size": s, "batch": args.zoo_batch,
           "steps": args.zoo_steps, "cases": {c: [] for c in ZOO_CASES}}
    for rnd in range(args.reps + 1):
        for case in ZOO_CASES:
            torch.manual_seed(0)
            student, record = build(cfg.student, train, "student", quiet)
            inputs = inputs_for(SPECS["none"], record["preprocessing"])
            cols = columns(train, teacher_logits=logits) if case == "kd" else columns(train)
            objective = {"ce": make_objective("ce"), "kd": kd, "online": online_objective(teacher, kd)}[case]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _, hist = fit(accelerator, student, TensorData(cols), None, TrainSpec.of(cfg.student, cfg.run), objective, "student", inputs=inputs)
            if rnd:  # round 0: warm-up (cuDNN autotune, allocator)
                out["cases"][case].append({"images_per_s": n / hist["train_time_s"],
                                           "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20
                                           if device.type == "cuda" else None})
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops, torch.no_grad():
        student.eval()(torch.zeros(1, 3, s, s, device=device).to(memory_format=torch.channels_last))
    out["student_forward_flops"] = flops.get_total_flops()
    print(json.dumps(out), flush=True)


def run_zoo(args, seconds):
    """zoo_child in its own process, given `seconds`; its JSON, or {"error": why}."""
    return run_child(args, seconds, "--zoo-child", [f"--zoo-{k}={getattr(args, 'zoo_' + k)}"
                                                    for k in ("teacher", "student", "size", "batch", "steps")])


# ---------------------------------------------------------------- the folder pipeline (own data)
def folder_child(args):
    """In a process of its own: --folder-images synthetic JPEGs (varied sizes around 400x300)
    written to a temporary folder, then images/s of kd_accel's folder pipeline (data/streamed.py:
    workers decoding, RandomResizedCrop + flip drawn there, 224 px uint8 batches moved to the
    device and normalised there, as fit's step does) with each --folder-workers count; and, where
    TorchCodec's GPU JPEG decoder works, the same crops from files decoded on the device
    (torchcodec.decoders.decode_jpeg(device="cuda"), batched: nvJPEG; torchvision.io's, used
    until issue 28, is deprecated). The files are written by PIL (quality 90). First epoch of each
    a warm-up. One JSON line."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from kd_accel.data import load_folder
    from kd_accel.data.streamed import DrawnCrops, crop_pixels, folder_loader

    device, n, size = torch.device(args.device), args.folder_images, args.folder_size
    out = {"images": n, "size": size, "batch": BATCH, "workers": {}, "cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as root:
        g = torch.Generator().manual_seed(0)
        base = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8, generator=g)  # smooth: JPEG-like sizes
        for i in range(n):
            h, w = 300 + 8 * (i % 13), 400 - 8 * (i % 7)
            img = torch.nn.functional.interpolate(base[None].float(), size=(h, w), mode="bilinear")[0]
            img = (img + torch.randint(0, 16, (3, h, w), generator=g)).clamp(0, 255).to(torch.uint8)
            path = Path(root) / "train" / f"c{i % 10}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, quality=90)
        split = load_folder(root, "train").at({"image_size": [size, size], "resize_size": None,
                                               "interpolation": "bilinear"})
        mean = torch.tensor([0.485, 0.456, 0.406], device=device)[:, None, None]
        for workers in args.folder_workers:
            loader = folder_loader(split.dataset_for(DrawnCrops(0)), BATCH, workers, device, shuffle=True)
            rates = []
            for epoch in range(args.reps + 1):
                loader.sampler.set_epoch(epoch)
                sync(device)
                t = time.perf_counter()
                for batch in loader:
                    x = batch["images"].to(device, non_blocking=True).float().div_(255).sub_(mean)
                sync(device)
                if epoch:
                    rates.append(n / (time.perf_counter() - t))
            out["workers"][str(workers)] = statistics.median(rates)
            del loader, x
        if device.type == "cuda":
            try:  # TorchCodec's GPU decoder: read on the host, decode and crop on the device
                from torchcodec.decoders import decode_jpeg

                paths = [os.path.join(split.index.root, p) for p in split.index.paths]
                crops = DrawnCrops(0)
                rates = []
                for epoch in range(args.reps + 1):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    for b in range(0, n, BATCH):
                        datas = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
                                 for p in paths[b:b + BATCH]]
                        imgs = decode_jpeg(datas, device="cuda")
                        idx = torch.arange(b, min(b + BATCH, n))
                        q = crops.params([epoch] * len(idx), idx.numpy(), torch.tensor([i.shape[-2] for i in imgs]),
                                         torch.tensor([i.shape[-1] for i in imgs]))
                        views = [TF.resized_crop(img, *crop_pixels(q[j], img.shape[-2], img.shape[-1]), [size, size],
                                                 antialias=True) for j, img in enumerate(imgs)]
                        torch.stack(views).float().div_(255).sub_(mean)  # the step's input, as above
                    torch.cuda.synchronize()
                    if epoch:
                        rates.append(n / (time.perf_counter() - t))
                out["gpu_decode"] = statistics.median(rates)
            except Exception as e:  # no TorchCodec or nvJPEG here, or another failure: say which
                out["gpu_decode_error"] = f"{type(e).__name__}: {first_line(e)}"
    print(json.dumps(out), flush=True)


def run_child(args, seconds, flag, extra):
    """This script again with `flag` (a case in a process of its own), given `seconds`: its last
    stdout line as JSON, or {"error": why}."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), flag, "--device", args.device, "--reps", str(args.reps), *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(seconds, 1))
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {seconds:.0f}s (the budget left)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_folder(args, seconds):
    return run_child(args, seconds, "--folder-child", [f"--folder-images={args.folder_images}",
                                                       f"--folder-size={args.folder_size}", "--folder-workers",
                                                       *map(str, args.folder_workers)])


# ---------------------------------------------------------------- kill and resume, --deterministic
KILL_AT, CHECKPOINT_EVERY, RESUME_STEPS = 7, 5, 20  # the kill mid-epoch, after the step-5 checkpoint


def resume_child(args):
    """One run of the resume check (--resume-child whole|killed|resumed WORKDIR): kd_accel's fit
    with --deterministic and a checkpoint every 5 steps, 2 epochs of the cached student step on
    synthetic data (20 steps an epoch); "killed" SIGKILLs itself after step 7 (what it did after the step-5
    checkpoint is lost), "resumed" continues it with --resume latest; whole and resumed save
    their final weights."""
    import signal

    from kd_accel import training
    from kd_accel.config import from_flags
    from kd_accel.data import Split
    from kd_accel.pipeline import columns, make_accelerator
    from kd_accel.training import TrainSpec, fit, make_objective

    how, workdir = args.resume_child
    workdir = Path(workdir)
    device = torch.device(args.device)
    run_dir = workdir / ("whole" if how == "whole" else "killed")
    cfg = from_flags(epochs=2, batch_size=BATCH, lr=LR, checkpoint_every=str(CHECKPOINT_EVERY), deterministic=True,
                     output_dir=str(run_dir), resume="latest" if how == "resumed" else None)
    accelerator = make_accelerator(cfg, cpu=device.type == "cpu")
    g = torch.Generator().manual_seed(0)
    n = RESUME_STEPS * BATCH
    split = Split("mnist", "train", torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n,), generator=g), 10)
    logits = torch.randn(n, 10, generator=g) * 5
    if how == "killed":
        def kill(label, step):
            if step == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
        training.HOOKS.step.append(kill)
    torch.manual_seed(0)
    model, _ = fit(accelerator, Student(), TensorData(columns(split, teacher_logits=logits)), None, TrainSpec.of(cfg.student, cfg.run), make_objective("hinton", T, ALPHA), "student", Checkpointer.of(cfg.run, run_dir / "checkpoints", {"check": "resume"}))
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(workdir / f"{how}.safetensors"))


def run_resume_check(args, seconds):
    """whole, killed, resumed in processes of their own: {"same_weights": ...} or {"error": why}."""
    import subprocess

    from safetensors.torch import load_file

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for how in ("whole", "killed", "resumed"):
            left = seconds - (time.perf_counter() - start)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--resume-child", how, workdir]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                return {"error": f"stopped in the {how} run: the budget left ({seconds:.0f}s) ran out"}
            if how == "killed" and proc.returncode != -9:
                return {"error": f"the killed run ended with {proc.returncode}, not SIGKILL"}
            if how != "killed" and proc.returncode != 0:
                return {"error": f"the {how} run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"}
            # a restart from scratch would give the same weights too: the resumed run must say it resumed
            resumed = next((line for line in proc.stdout.splitlines() if "resumed from" in line), "")
            step = re.search(r"step_(\d+)", resumed)
            if how == "resumed" and not (step and 0 < int(step[1]) < KILL_AT):
                return {"error": f"the resumed run did not resume from a checkpoint before step {KILL_AT}: {resumed!r}"}
        a, b = (load_file(str(Path(workdir) / f"{how}.safetensors")) for how in ("whole", "resumed"))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {"same_weights": same, "resumed": resumed.strip(), "killed_after_step": KILL_AT, "checkpoint_every": CHECKPOINT_EVERY,
            "steps": 2 * RESUME_STEPS, "deterministic": True}


# ---------------------------------------------------------------- driver
def json_path(given):
    """--json as the file to write: a folder (existing, or a path ending in /) holds gpu.json;
    its folder is made now, so a path that cannot be written stops the script in one line
    before any case runs (not with a traceback at the first case's save)."""
    if given is None:
        return None
    if not given:
        raise SystemExit("--json '': give a file or a folder")
    path = Path(given) / "gpu.json" if Path(given).is_dir() or given.endswith(("/", os.sep)) else Path(given)
    if path.is_dir():
        raise SystemExit(f"--json {given}: {path} is a folder; give a file or a folder without a gpu.json folder in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SystemExit(f"--json {given}: {path.parent} is a file, not a folder") from None
    except OSError as e:
        raise SystemExit(f"--json {given}: cannot make the folder {path.parent}: {e.strerror or e}") from None
    return str(path)


def timed(fn, device):
    """(seconds, result) of fn(); a case that times itself returns {"seconds": ...}, which is used."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    if isinstance(out, torch.Tensor):
        out = out.tolist()  # the epoch's one host sync
    sync(device)
    seconds = time.perf_counter() - t0
    return (out["seconds"] if isinstance(out, dict) and "seconds" in out else seconds), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default=os.environ.get("KD_ACCEL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--steps", type=int, default=600, help="steps of batch 100 per epoch (600: all of MNIST)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="kd_step modes (default: graph and compile on CUDA, eager and compile on CPU)")
    p.add_argument("--no-fit", action="store_true", help="skip kd_accel's fit case")
    p.add_argument("--synthetic", action="store_true", help="random images instead of MNIST (tests)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the results here: a JSON file, or a folder (one that exists, or a path ending in /) "
                        "to hold gpu.json")
    p.add_argument("--budget-s", type=float, default=240,
                   help="start no further rep after this many seconds (the precompute still runs)")
    p.add_argument("--no-zoo", action="store_true", help="skip the zoo pair (own models)")
    p.add_argument("--zoo-teacher", default="torchvision:resnet50")
    p.add_argument("--zoo-student", default="torchvision:resnet18")
    p.add_argument("--zoo-size", type=int, default=224)
    p.add_argument("--zoo-batch", type=int, default=128)
    p.add_argument("--zoo-steps", type=int, default=20)
    p.add_argument("--zoo-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-folder", action="store_true", help="skip the folder pipeline (own data)")
    p.add_argument("--folder-images", type=int, default=2000)
    p.add_argument("--folder-size", type=int, default=224)
    p.add_argument("--folder-workers", type=int, nargs="+", default=[4, 8])
    p.add_argument("--folder-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-resume-check", action="store_true", help="skip the kill and --resume latest check")
    p.add_argument("--resume-child", nargs=2, metavar=("HOW", "WORKDIR"), help=argparse.SUPPRESS)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's dense bf16 peak, for model FLOP utilisation (H100/H200 SXM: 989)")
    args = p.parse_args(argv)
    if args.zoo_child:
        return zoo_child(args)
    if args.folder_child:
        return folder_child(args)
    if args.resume_child:
        return resume_child(args)
    args.json = json_path(args.json)  # before any case: a path it cannot write is one line, not a lost run

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu to test the script)")
    modes = args.modes or (["eager", "graph", "compile"] if device.type == "cuda" else ["eager", "compile"])
    # which tree's kd_accel ran (a bare copy's own, not an installed one)
    info = {**machine_info(device), "kd_accel_from": str(Path(sys.modules["kd_accel"].__file__).parent)}
    print(json.dumps(info), flush=True)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    images, labels = load_data(args)
    logits = torch.randn(len(labels), 10) * 5  # stands in for the cache: same shape, same gather

    runners = {"nb_distill_epoch": NotebookDistill(args, images, labels, device)}
    errors = {}
    if not args.no_fit:
        runners["kd_fit_epoch"] = None
    for mode in sorted(modes, key=MODES.index):  # compile last: its warm-up is the slowest
        try:
            runners[f"kd_step_{mode}"] = ResidentKDStep(images, labels, logits, device, mode)
        except Exception as e:  # a mode this device lacks: say so, run the others
            errors[f"kd_step_{mode}"] = f"{type(e).__name__}: {e}"
    epoch_of = {name: (lambda r=r: r.epoch()) if r is not None
                else (lambda: kd_fit_epoch(args, images, labels, logits, device)) for name, r in runners.items()}

    results = {name: [] for name in epoch_of}

    zoo_results, resume_result, folder_result = {}, {}, {}

    def save(final=False):  # after every case: a kill or the timeout keeps what was measured before it
        out = report(info, args, results, errors, time.perf_counter() - t_start, final, zoo_results, resume_result,
                     folder_result)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(args.json).with_suffix(".json.tmp")
            tmp.write_text(json.dumps(out, indent=2))
            os.replace(tmp, args.json)
        return out

    for name, fn in list(epoch_of.items()):  # warm-up epoch: compilation, graph capture, cuDNN autotune
        try:
            s, _ = timed(fn, device)
            print(f"warm-up {name}: {s:.2f}s", flush=True)
            results[name + "_warmup"] = [s]
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"{name} failed: {errors[name]}", flush=True)
            del epoch_of[name], results[name]
        save()
    for rep in range(args.reps):
        if time.perf_counter() - t_start > args.budget_s:
            errors["reps"] = f"stopped after {rep} reps: --budget-s {args.budget_s:.0f} reached"
            break
        names = list(epoch_of) if rep % 2 == 0 else list(epoch_of)[::-1]
        for name in names:
            s, _ = timed(epoch_of[name], device)
            results[name].append(s)
            print(f"rep {rep + 1}/{args.reps} {name}: {s:.3f}s", flush=True)
            save()
    for r in runners.values():
        if isinstance(r, ResidentKDStep):
            r.check()

    teacher = Teacher().to(device).requires_grad_(False).eval().to(memory_format=torch.channels_last)
    xf = to_float(images.to(device))
    with tempfile.TemporaryDirectory() as workdir:
        timed(lambda: bare_forward(teacher, xf), device)  # warm-up
        results["bare_forward"], results["kd_precompute"] = [], []
        for rep in range(args.reps):
            results["bare_forward"].append(timed(lambda: bare_forward(teacher, xf), device)[0])
            results["kd_precompute"].append(timed(lambda: kd_precompute(teacher, images, labels, device, workdir), device)[0])
            save()
    if not args.no_resume_check:  # a kill and --resume latest under --deterministic: the same weights
        resume_result.update(run_resume_check(args, args.budget_s + 40 - (time.perf_counter() - t_start)))
        save()
    if not args.no_zoo:  # the zoo pair, in the budget left (a 290 s timeout surrounds the script)
        zoo_results.update(run_zoo(args, args.budget_s + 40 - (time.perf_counter() - t_start)))
        save()
    if not args.no_folder:  # the folder pipeline, in what is left
        folder_result.update(run_folder(args, args.budget_s + 45 - (time.perf_counter() - t_start)))
    return save(final=True)


def zoo_summary(zoo, peak_tflops):
    """Median images/s per zoo case, the ratios the issue aims at, and model FLOP utilisation
    (training ~ 3x the forward's FLOPs) against the device's bf16 peak."""
    if "cases" not in zoo:
        return zoo
    med = {c: statistics.median(r["images_per_s"] for r in runs) for c, runs in zoo["cases"].items() if runs}
    peak = {c: max((r["peak_gpu_mb"] or 0) for r in runs) or None for c, runs in zoo["cases"].items() if runs}
    out = {**{k: v for k, v in zoo.items() if k != "cases"}, "images_per_s": med, "peak_gpu_mb": peak}
    if {"ce", "kd", "online"} <= med.keys():
        out["ratios"] = {"cached KD / CE throughput (aim >= 0.95)": med["kd"] / med["ce"],
                         "cached / online throughput (aim >= 1.6)": med["kd"] / med["online"]}
        tflops = 3 * zoo["student_forward_flops"] * med["kd"] / 1e12
        out["student_tflops_cached_kd"] = tflops
        out["mfu_cached_kd"] = tflops / peak_tflops
    return out


def report(info, args, results, errors, total, final, zoo=None, resume=None, folder=None):
    """What the JSON holds: each case measured so far (median, min, max) and the ratios of those
    present; `final` False while the script is still running (partial)."""
    zoo = zoo_summary(zoo or {}, args.peak_tflops)

    summary = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
               for k, v in results.items() if v}
    ratios = []
    nb = summary.get("nb_distill_epoch")
    for k in summary:
        if nb and (k.startswith("kd_step_") or k == "kd_fit_epoch") and not k.endswith("_warmup"):
            ratios.append({"ratio": f"distillation epoch: notebook / {k}", "value": nb["median_s"] / summary[k]["median_s"],
                           "target": ">= 10 (aim 30) on a GPU"})
    if "kd_precompute" in summary and "bare_forward" in summary:
        ratios.append({"ratio": "precompute / bare teacher forward",
                       "value": summary["kd_precompute"]["median_s"] / summary["bare_forward"]["median_s"],
                       "target": "<= 1.2"})
    if final:
        print(f"\n{'case':<26}{'median s':>10}{'min':>9}{'max':>9}")
        for k, s in summary.items():
            print(f"{k:<26}{s['median_s']:>10.3f}{s['min_s']:>9.3f}{s['max_s']:>9.3f}")
        print()
        for r in ratios:
            print(f"{r['ratio']:<58}{r['value']:>8.2f}x  target {r['target']}")
        for k, e in errors.items():
            print(f"not measured: {k}: {e}")
        if zoo:
            print(f"zoo pair: {json.dumps(zoo)}")
        if resume:
            print(f"kill and --resume latest (--deterministic): {json.dumps(resume)}")
        if folder:
            print(f"folder pipeline (images/s by workers): {json.dumps(folder)}")
        print(f"total {total:.0f}s", flush=True)
    return {"machine": info, "steps_per_epoch": args.steps, "batch_size": BATCH, "synthetic": args.synthetic,
            "cases": summary, "ratios": ratios, "errors": errors, "zoo": zoo,
            "resume": resume or {}, "folder": folder or {}, "total_s": total, "partial": not final}


if __name__ == "__main__":
    main()
