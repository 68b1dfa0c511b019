"""Benchmark :class:`bmc_calib.torch.BMCLoss` (DESIGN §9: forward+backward at batch 4096
within 5 ms on 2 CPU threads and 1 ms on one H100; no host synchronisation; compile-able).

    python benchmarks/bench_loss.py                        # CPU, 2 threads; GPU too if present
    python benchmarks/bench_loss.py --batches 4096 --modes compiled
    python benchmarks/bench_loss.py --devices cuda --cuda-graphs

Data: float32 synthetic poses of a subject the bundle was not fitted on, with 3 mm noise
(so every term and every hull is active: the slow path), against the packaged default
bundle (``bmc_calib/data/default_limits.h5``, 15 hulls of up to ``V`` vertices).

Passes, per device, mode and batch size:

- ``fwd``: the loss under ``torch.no_grad()`` (validation / metrics);
- ``fwd+bwd``: a training step's worth: the loss of a leaf that requires grad, then
  ``backward()`` (gradient with respect to the joints).

Modes: ``eager``; ``compiled`` (``torch.compile(loss)``, inductor, default mode; the compile
time is printed); on CUDA with ``--cuda-graphs`` also ``graphs`` (``mode="reduce-overhead"``,
CUDA graphs). Each timing: ``--warmup`` calls, then ``--repeat`` calls timed one by one;
reported are the median and the minimum in ms per call, and poses/s at the median. On CUDA
the clock is read after ``torch.cuda.synchronize()``.

CPU memory allocator: at batch 4096 every call allocates some 10 MB of temporaries. On a
machine where glibc hands that memory back to the kernel after each call (its default trim
threshold), every call pays page faults again; on the 2-core VM this was measured on, that is
1–3 ms of a 4–5 ms call. PyTorch's CPU tuning guide recommends jemalloc/tcmalloc for this;
the same effect with glibc: ``MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_MMAP_THRESHOLD_=
4294967296``. The header prints which settings were in effect.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from bmc_calib import default_bundle, synthetic
from bmc_calib.torch import BMCLoss

BUDGET_MS = {"cpu": 5.0, "cuda": 1.0}
BUDGET_BATCH = 4096


def poses(batch: int) -> torch.Tensor:
    """``(batch, 21, 3)`` float32 noisy poses (mm) of an unseen synthetic subject."""
    subject = synthetic.make_subjects(1, seed=7)[0]
    joints = synthetic.generate(subject, batch, seed=11, noise_mm=3.0, glitch_fraction=0.0)
    return torch.as_tensor(joints.joints, dtype=torch.float32)


def timed(fn: Callable[[], object], device: str, warmup: int, repeat: int) -> list[float]:
    """Milliseconds of each of ``repeat`` calls of ``fn`` after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def passes(loss: Callable, joints: torch.Tensor) -> dict[str, Callable[[], object]]:
    def forward() -> None:
        with torch.no_grad():
            loss(joints)

    def forward_backward() -> None:
        leaf = joints.detach().requires_grad_(True)
        total, _ = loss(leaf)
        total.backward()

    return {"fwd": forward, "fwd+bwd": forward_backward}


def header(args: argparse.Namespace, loss: BMCLoss) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, CPU {cpu}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")  # fmt: skip
    if torch.cuda.is_available():
        print(f"GPU {torch.cuda.get_device_name()}")
    print(f"allocator settings: {malloc or 'glibc defaults'}")
    print(f"bundle: packaged default, {loss.hull_vertices.shape[0]} hulls, "
          f"V = {loss.hull_vertices.shape[1]} (padded)")  # fmt: skip
    print(f"float32, warm-up {args.warmup}, {args.repeat} timed calls each; ms per call\n")
    print(f"{'device':6s} {'mode':9s} {'batch':>6s} {'pass':8s} {'median':>8s} {'min':>8s} "
          f"{'poses/s':>12s}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled"])  # fmt: skip
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default_devices, choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on CUDA also time torch.compile(mode='reduce-overhead')")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with default_bundle.packaged_path() as path:
        base = BMCLoss.from_bundle(path)
    header(args, base)
    results: dict[tuple[str, str, int, str], float] = {}
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        loss = base.to(device)
        modes = list(args.modes)
        if device == "cuda" and args.cuda_graphs:
            modes.append("graphs")
        for mode in modes:
            for batch in args.batches:
                joints = poses(batch).to(device)
                if mode == "eager":
                    calls = passes(loss, joints)
                else:  # one static-shape graph per batch size, as in a training loop
                    torch._dynamo.reset()
                    compiled = torch.compile(
                        loss, dynamic=False, mode="reduce-overhead" if mode == "graphs" else None
                    )
                    calls = passes(compiled, joints)
                    start = time.perf_counter()
                    for call in calls.values():  # compiles (no-grad and grad graphs differ)
                        call()
                    seconds = time.perf_counter() - start
                    print(f"{device:6s} {mode:9s} {batch:6d} (compiled in {seconds:.1f} s)")
                for name, call in calls.items():
                    times = timed(call, device, args.warmup, args.repeat)
                    median, best = statistics.median(times), min(times)
                    results[(device, mode, batch, name)] = median
                    print(f"{device:6s} {mode:9s} {batch:6d} {name:8s} {median:8.2f} {best:8.2f} "
                          f"{batch / median * 1e3:12,.0f}", flush=True)  # fmt: skip

    print(f"\nbudget: fwd+bwd at batch {BUDGET_BATCH}")
    for (device, mode, batch, name), median in results.items():
        if batch == BUDGET_BATCH and name == "fwd+bwd":
            budget = BUDGET_MS[device]
            verdict = "meets" if median <= budget else f"misses ({median / budget:.1f}x)"
            print(f"  {device} {mode}: {median:.2f} ms (budget {budget:g} ms) {verdict}")


if __name__ == "__main__":
    main()
