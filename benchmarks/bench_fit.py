"""Benchmark kinematics and the whole fit on synthetic data (DESIGN §9 budgets).

    python benchmarks/bench_fit.py                  # 100k and 1M poses
    python benchmarks/bench_fit.py --sizes 100000   # just one size

Data: five synthetic subjects (``bmc_calib.synthetic``, 1.5 mm noise, 3 % glitches), one
float32 ``.npy`` file per subject, written once to ``benchmarks/out/`` (git-ignored).

Each measurement runs in a fresh Python process so its peak resident memory (``ru_maxrss``)
is its own. Reported per size:

- ``kinematics``: :func:`compute_features` over the memory-mapped files (float32 features);
- ``fit``: ``fit_limits`` + ``write_bundle`` end to end, from file names to the bundle
  (reading, hashing, features, glitch rejection, hulls, leave-one-group-out tolerances);
- peak RSS of the process, and RSS right after the imports (the interpreter, numpy, scipy,
  h5py, shapely: what any run pays before reading a pose).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SUBJECTS = 5


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def make_data(total: int) -> list[str]:
    """One float32 .npy per subject, ``total`` poses in all (cached in benchmarks/out/)."""
    import numpy as np

    from bmc_calib import synthetic

    folder = OUT / f"poses_{total}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, subject in enumerate(synthetic.make_subjects(SUBJECTS, seed=0)):
        path = folder / f"{subject.name}.npy"
        if not path.exists():
            n = total // SUBJECTS
            parts = []
            for k, start in enumerate(range(0, n, 100_000)):  # generate in slices
                p = synthetic.generate(subject, min(100_000, n - start), seed=1000 * i + k,
                                       glitch_fraction=0.03, noise_mm=1.5)  # fmt: skip
                parts.append(p.joints.astype(np.float32))
            np.save(path, np.concatenate(parts))
        paths.append(str(path))
    return paths


def worker(kind: str, paths: list[str]) -> dict[str, float]:
    """Run one measurement in this process and return its numbers."""
    import numpy as np

    from bmc_calib import bundle, kinematics  # imports counted in the baseline
    from bmc_calib.fit import fit_limits
    from bmc_calib.formats import open_sources

    base = rss_mb()
    n = sum(np.load(p, mmap_mode="r").shape[0] for p in paths)
    start = time.perf_counter()
    if kind == "kinematics":
        for p in paths:
            kinematics.compute_features(np.load(p, mmap_mode="r"), dtype=np.float32)
    else:
        out = OUT / "bench.h5"
        limits = fit_limits(open_sources(paths))
        bundle.write_bundle(limits, out, force=True)
    seconds = time.perf_counter() - start
    return {"poses": n, "seconds": seconds, "poses_per_second": n / seconds,
            "rss_after_imports_mb": base, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def measure(kind: str, paths: list[str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", kind, *paths]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.stdout.write(json.dumps(worker(args.worker[0], args.worker[1:])) + "\n")
        return
    print(f"{'poses':>9} {'stage':<11} {'seconds':>8} {'poses/s':>11} {'peak MB':>8} "
          f"{'imports MB':>10}")  # fmt: skip
    for size in args.sizes:
        paths = make_data(size)
        for kind in ("kinematics", "fit"):
            r = measure(kind, paths)
            row = (
                f"{r['poses']:>9} {kind:<11} {r['seconds']:>8.2f} {r['poses_per_second']:>11,.0f} "
                f"{r['peak_rss_mb']:>8.0f} {r['rss_after_imports_mb']:>10.0f}"
            )
            print(row, flush=True)


if __name__ == "__main__":
    main()
