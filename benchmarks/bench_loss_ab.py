"""Interleaved A/B of :class:`bmc_calib.torch.BMCLoss` against another git revision: the way
every performance change of the loss was decided (docs/performance.md).

    python benchmarks/bench_loss_ab.py --against 97ff4e2                # eager, 4096, 2 threads
    python benchmarks/bench_loss_ab.py --against HEAD~1 --threads 1 --clock cpu
    python benchmarks/bench_loss_ab.py --against HEAD~2 --compiled --pairs 300

On a shared VM, medians of separate runs drift by 2x within minutes, which hides a change of
a few per cent. Here both versions run in one process on the same poses, alternating call by
call (which goes first flips every round), so drift hits both alike; what counts is the median
of the paired differences (this checkout − the revision) and their quartiles.

The revision's ``bmc_calib/torch.py`` and ``bmc_calib/torch_chain.py`` are read with
``git show`` into a temporary folder and imported as separate modules (the chain import and
the custom operator's namespace rewritten); everything else (kinematics, skeleton, limits,
the default bundle) is this checkout's, so revisions whose loss needs other changed modules
cannot be compared this way. Data: :func:`bench_loss.poses` (float32, noisy poses of an
unseen synthetic subject), the packaged default bundle. Forward+backward of a leaf that
requires grad, as ``bench_loss.py``'s ``fwd+bwd``; the first pair also prints the two losses
and the largest gradient difference (the same numbers, or what changed them).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from bench_loss import poses, steady_allocator

from bmc_calib import default_bundle
from bmc_calib.torch import BMCLoss

ROOT = Path(__file__).resolve().parents[1]


def load_revision(revision: str, folder: Path) -> ModuleType:
    """``bmc_calib.torch`` as of ``revision`` (module ``ab_base_torch``)."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True,
            capture_output=True, text=True,
        ).stdout  # fmt: skip

    chain = show("bmc_calib/torch_chain.py").replace('"bmc_calib::', '"bmc_calib_ab_base::')
    loss = show("bmc_calib/torch.py").replace(
        "from bmc_calib.torch_chain import", "from ab_base_torch_chain import"
    )
    (folder / "ab_base_torch_chain.py").write_text(chain)
    (folder / "ab_base_torch.py").write_text(loss)
    sys.path.insert(0, str(folder))
    return importlib.import_module("ab_base_torch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="git revision to compare with")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=100, help="timed pairs (after 5 more)")
    parser.add_argument("--compiled", action="store_true", help="both via BMCLoss.compile()")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: the calling thread's CPU time (needs --threads 1)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use --threads 1")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as folder:
        try:
            base_module = load_revision(args.against, Path(folder))
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            print(f"bench_loss_ab: cannot read the loss at {args.against!r}: {detail}".strip(),
                  file=sys.stderr)  # fmt: skip
            return 2
        with default_bundle.packaged_path() as path:
            base, new = base_module.BMCLoss.from_bundle(path), BMCLoss.from_bundle(path)
        if args.compiled:
            for loss in (base, new):
                loss.compile()
        x = poses(args.batch)
        steady_allocator()

        def step(loss: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            leaf = x.clone().requires_grad_(True)
            total, _ = loss(leaf)
            total.backward()
            return total, leaf.grad

        (base_total, base_grad), (new_total, new_grad) = step(base), step(new)
        print(
            f"bmc_calib.torch at {args.against} vs this checkout; batch {args.batch}, "
            f"{args.threads} thread(s), {args.clock} clock, "
            f"{'compiled' if args.compiled else 'eager'}, fwd+bwd\n"
            f"losses {base_total.item():.9g} / {new_total.item():.9g}; largest gradient "
            f"difference "
            f"{(base_grad - new_grad).abs().max().item():.3g}"
        )
        times: dict[str, list[float]] = {"base": [], "new": []}
        for i in range(args.pairs + 5):
            order = (("base", base), ("new", new)) if i % 2 else (("new", new), ("base", base))
            for name, loss in order:
                start = clock()
                step(loss)
                times[name].append(clock() - start)
    base_ms = [t * 1e3 for t in times["base"][5:]]
    new_ms = [t * 1e3 for t in times["new"][5:]]
    diff = sorted(b - a for a, b in zip(base_ms, new_ms, strict=True))
    q1, median, q3 = statistics.quantiles(diff, n=4) if len(diff) > 1 else (diff[0],) * 3
    print(f"{args.against}: median {statistics.median(base_ms):.2f} ms, min {min(base_ms):.2f}")
    print(f"this checkout: median {statistics.median(new_ms):.2f} ms, min {min(new_ms):.2f}")
    print(
        f"paired difference (this − {args.against}): median {median:+.2f} ms, "
        f"quartiles {q1:+.2f} / {q3:+.2f} ({len(diff)} pairs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
