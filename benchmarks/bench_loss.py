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
reported are the median, the minimum and the 90th percentile in ms per call, and poses/s at
the median. On CUDA the clock is read after ``torch.cuda.synchronize()``.

CPU memory allocator: at batch 4096 a compiled fwd+bwd call allocates about 8 MB of
temporaries (eager: more). glibc's thresholds adapt: once a process has freed an allocation
of up to 32 MB (any training loop does, e.g. a batch of activations), it keeps up to twice that
much freed memory instead of handing it back to the kernel. A fresh benchmark process has not
done so yet, so it returns the loss's temporaries after every call and pays the page faults
again on the next one (on the 2-core VM this was measured on: 0.3–2 ms of a 4–5 ms call, and
most of the spread between runs). ``--steady-allocator`` first allocates and frees one 30 MB
tensor, the state of a training process; fixed settings do the same
(``MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_MMAP_THRESHOLD_=4294967296``, or jemalloc /
tcmalloc as PyTorch's CPU tuning guide recommends). The header prints which was in effect.
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
    malloc: object = {
        k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"
    }
    if args.steady_allocator:
        malloc = f"{malloc or 'glibc defaults'}, steady state (a 30 MB tensor freed first)"
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, CPU {cpu}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")  # fmt: skip
    if torch.cuda.is_available():
        print(f"GPU {torch.cuda.get_device_name()}")
    print(f"allocator settings: {malloc or 'glibc defaults'}")
    print(f"bundle: packaged default, {loss.hull_vertices.shape[0]} hulls, "
          f"V = {loss.hull_vertices.shape[1]} (padded)")  # fmt: skip
    print(f"float32, warm-up {args.warmup}, {args.repeat} timed calls each; ms per call\n")
    print(f"{'device':6s} {'mode':9s} {'batch':>6s} {'pass':8s} {'median':>8s} {'min':>8s} "
          f"{'p90':>8s} {'poses/s':>12s}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled"])  # fmt: skip
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default_devices, choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--steady-allocator", action="store_true",
                        help="free a 30 MB tensor first, as a training process has")  # fmt: skip
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on CUDA also time torch.compile(mode='reduce-overhead')")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steady_allocator:  # glibc raises its mmap/trim thresholds to the size freed
        ballast = torch.ones(30 * 2**20 // 4)
        del ballast

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
                    p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else best
                    results[(device, mode, batch, name)] = median
                    print(f"{device:6s} {mode:9s} {batch:6d} {name:8s} {median:8.2f} {best:8.2f} "
                          f"{p90:8.2f} {batch / median * 1e3:12,.0f}", flush=True)  # fmt: skip

    print(f"\nbudget: fwd+bwd at batch {BUDGET_BATCH}")
    for (device, mode, batch, name), median in results.items():
        if batch == BUDGET_BATCH and name == "fwd+bwd":
            budget = BUDGET_MS[device]
            verdict = "meets" if median <= budget else f"misses ({median / budget:.1f}x)"
            print(f"  {device} {mode}: {median:.2f} ms (budget {budget:g} ms) {verdict}")


if __name__ == "__main__":
    main()
