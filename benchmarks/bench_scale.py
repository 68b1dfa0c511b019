"""Scale: fit, features and validate from 100k to 3M poses (10M with --big), and InterHand JSON.

    python benchmarks/bench_scale.py                     # 100k, 1M, 3M poses + 1M-hand JSON
    python benchmarks/bench_scale.py --sizes 100000      # one size
    python benchmarks/bench_scale.py --big               # adds 10M poses
    python benchmarks/bench_scale.py --json-hands 180000 # the JSON case at another size

Every job is the command line a user runs (``python -m bmc_calib.cli …``), end to end, in a
fresh process of its own; this script waits for it and reads its peak resident memory from
``resource.getrusage(RUSAGE_CHILDREN)`` in a small wrapper process per job (so each peak is
that job's alone). Printed per job: poses, wall seconds, poses per second, peak RSS (MB).

Data (written once to ``benchmarks/out/``, git-ignored): five synthetic subjects
(:mod:`bmc_calib.synthetic`, 1.5 mm noise, 3 % glitches), one float32 ``.npy`` per subject
(``bench_fit.make_data``); the JSON case is a synthetic InterHand2.6M ``*_joint_3d.json``
(``make_interhand.py``; 1.6 hands a frame, 2 % with an invalid joint).

Jobs: ``fit`` (5 files → bundle), ``features`` (→ ``.npz``), ``validate`` (summary, against
the bundle just fitted), ``validate+csv`` (with ``--report``), ``json fit`` and
``json features``. The log-log plot of time and memory against poses goes to
``docs/img/scale.png`` (needs matplotlib, the ``plot`` extra).
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

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_fit  # noqa: E402  (the benchmarks folder is not a package)
import make_interhand  # noqa: E402

CLI = [sys.executable, "-m", "bmc_calib.cli"]


def run_measured(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` in a wrapper process that reports the command's wall time and peak RSS."""
    wrapper = [sys.executable, __file__, "--measure", json.dumps(cmd)]
    done = subprocess.run(wrapper, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_child(cmd: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    child = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if child.returncode not in (0, 1):  # 1: validate found implausible poses
        sys.stderr.write(child.stderr)
        raise SystemExit(f"job failed ({child.returncode}): {' '.join(cmd)}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6  # KiB
    out: dict[str, float] = {"seconds": seconds, "peak_rss_mb": peak}
    if "--json" in cmd and child.stdout.strip():
        with_json = json.loads(child.stdout)
        if "scratch_bytes" in with_json:
            out["scratch_mb"] = with_json["scratch_bytes"] / 1e6
    return out


def json_file(hands: int) -> tuple[Path, int]:
    path = OUT / f"interhand_{hands}" / "InterHand2.6M_train_joint_3d.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_interhand.write(path, hands)
    import numpy as np  # noqa: F401  (imported late: the wrapper stays small)

    return path, hands


def jobs_for(size: int) -> list[tuple[str, list[str]]]:
    paths = bench_fit.make_data(size)
    bundle = str(OUT / f"scale_{size}.h5")
    return [
        ("fit", [*CLI, "fit", *paths, "-o", bundle, "--force", "--json"]),
        ("features", [*CLI, "features", *paths, "-o", str(OUT / "scale_features.npz"), "--force"]),
        ("validate", [*CLI, "validate", *paths, "--limits", bundle, "--json"]),
        ("validate+csv", [*CLI, "validate", *paths, "--limits", bundle, "--json", "--report",
                          str(OUT / "scale_report.csv"), "--force"]),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--big", action="store_true", help="add 10M poses")
    parser.add_argument("--json-hands", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "scale.png"))
    parser.add_argument("--results", default=str(OUT / "scale.json"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.stdout.write(json.dumps(measure_child(json.loads(args.measure))) + "\n")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    sizes = [*args.sizes, *([10_000_000] if args.big else [])]
    rows: list[dict[str, object]] = []
    print(f"{'job':<15} {'poses':>10} {'seconds':>8} {'poses/s':>11} {'peak MB':>8} "
          f"{'scratch MB':>10}")  # fmt: skip

    def show(job: str, poses: int, r: dict[str, float]) -> None:
        rows.append({"job": job, "poses": poses, **r})
        scratch = f"{r['scratch_mb']:>10.0f}" if "scratch_mb" in r else f"{'':>10}"
        print(
            f"{job:<15} {poses:>10,} {r['seconds']:>8.2f} {poses / r['seconds']:>11,.0f} "
            f"{r['peak_rss_mb']:>8.0f} {scratch}",
            flush=True,
        )

    for size in sizes:
        for job, cmd in jobs_for(size):
            show(job, size, run_measured(cmd))
    for hands in args.json_hands:
        path, n = json_file(hands)
        bundle = str(OUT / f"scale_json_{hands}.h5")
        fit = [*CLI, "fit", str(path), "-o", bundle, "--force", "--json", "--group-by", "label"]
        show("json fit", n, run_measured(fit))
        features = [*CLI, "features", str(path), "-o", str(OUT / "scale_json.npz"), "--force"]
        show("json features", n, run_measured(features))
    Path(args.results).write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.plot)


def plot(rows: list[dict[str, object]], target: str) -> None:
    """Log-log time and peak memory against poses, one line per job."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no plot")
        return
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    jobs = sorted({str(r["job"]) for r in rows}, key=[str(r["job"]) for r in rows].index)
    for job in jobs:
        pts = sorted((int(r["poses"]), r) for r in rows if r["job"] == job)
        x = [p for p, _ in pts]
        style = "o--" if job.startswith("json") else "o-"
        ax_t.plot(x, [float(r["seconds"]) for _, r in pts], style, label=job)
        ax_m.plot(x, [float(r["peak_rss_mb"]) for _, r in pts], style, label=job)
    for ax, label in ((ax_t, "wall time (s)"), (ax_m, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("poses (JSON: hands)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    ax_m.axhline(300, color="grey", lw=0.8, ls=":")
    ax_m.text(x=ax_m.get_xlim()[0], y=310, s=" fit budget at 1M: 300 MB", fontsize=7, color="grey")
    fig.suptitle("bmc-calib at scale (2-core machine, synthetic data)")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
