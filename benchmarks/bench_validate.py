"""Benchmark validate on synthetic poses (DESIGN §9 budget: >= 300k poses/s).

    python benchmarks/bench_validate.py                  # 100k and 1M poses
    python benchmarks/bench_validate.py --sizes 100000   # just one size

Data: five synthetic subjects (``bmc_calib.synthetic``, 1.5 mm noise, 3 % glitches), one
float32 ``.npy`` per size written once to ``benchmarks/out/`` (git-ignored); checked against
the packaged default bundle.

Each measurement runs in a fresh Python process so its peak resident memory (``ru_maxrss``)
is its own. Reported per size:

- ``array``: the budgeted path, from a loaded ``(N, 21, 3)`` array to the JSON-ready summary:
  kinematics + violations + verdicts + counts + worst poses
  (:func:`bmc_calib.validate.validate_array` and
  :func:`bmc_calib.summary.validate_summary`); the array is loaded before the clock starts;
- ``file+csv``: for information, what ``bmc-calib validate FILE --report out.csv`` does:
  reading the file in chunks, the same work, and writing the per-pose CSV report;
- the best of ``--repeat`` runs (default 3): wall-clock poses/s, and poses per CPU second
  of the process (less sensitive to other processes on a shared machine);
- peak RSS of the process and RSS right before the clock starts (interpreter, libraries,
  bundle and, for ``array``, the loaded poses at 252 bytes a pose).
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


def make_data(total: int) -> Path:
    """One float32 .npy of ``total`` poses of five subjects (cached in benchmarks/out/)."""
    import numpy as np

    from bmc_calib import synthetic

    path = OUT / f"validate_{total}.npy"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    parts = []
    per_subject = total // SUBJECTS
    for i, subject in enumerate(synthetic.make_subjects(SUBJECTS, seed=0)):
        n = per_subject if i < SUBJECTS - 1 else total - per_subject * (SUBJECTS - 1)
        for k, start in enumerate(range(0, n, 100_000)):  # generate in slices
            poses = synthetic.generate(
                subject, min(100_000, n - start), seed=1000 * i + k, glitch_fraction=0.03,
                noise_mm=1.5,
            )  # fmt: skip
            parts.append(poses.joints.astype(np.float32))
    np.save(path, np.concatenate(parts))
    return path


def worker(kind: str, path: str, repeat: int) -> dict[str, float]:
    """Run one measurement ``repeat`` times in this process; numbers of the fastest run."""
    import numpy as np

    from bmc_calib import default_bundle, summary, validate
    from bmc_calib.formats import open_sources

    choice = default_bundle.choose_bundle()
    joints = np.load(path) if kind == "array" else None
    report = OUT / "bench_report.csv"
    base = rss_mb()
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        if joints is not None:
            result = validate.validate_array(joints, choice.limits)
        else:
            sources = open_sources([path])
            result = validate.validate_sources(sources, choice.limits, report=report, force=True)
        data = summary.validate_summary(result, choice, "implausible")
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
    n = data["poses"]
    return {"poses": n, "seconds": best[0], "poses_per_second": n / best[0],
            "poses_per_cpu_second": n / best[1], "implausible": data["implausible"],
            "rss_before_mb": base, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def measure(kind: str, path: Path, repeat: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", kind, str(path), str(repeat)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, path, repeat = args.worker
        sys.stdout.write(json.dumps(worker(kind, path, int(repeat))) + "\n")
        return
    print(f"{'poses':>9} {'path':<9} {'seconds':>8} {'poses/s':>11} {'per CPU s':>11} "
          f"{'implaus.':>8} {'peak MB':>8} {'before MB':>9}")  # fmt: skip
    for size in args.sizes:
        path = make_data(size)
        for kind in ("array", "file+csv"):
            r = measure(kind, path, args.repeat)
            print(
                f"{r['poses']:>9} {kind:<9} {r['seconds']:>8.2f} {r['poses_per_second']:>11,.0f} "
                f"{r['poses_per_cpu_second']:>11,.0f} {r['implausible']:>8} "
                f"{r['peak_rss_mb']:>8.0f} {r['rss_before_mb']:>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
