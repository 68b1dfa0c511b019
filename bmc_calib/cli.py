"""The ``bmc-calib`` command line: parse options, call the library, render. Nothing else.

Exit codes (DESIGN §8): 0 success, 1 findings (validate), 2 usage error, 3 bad input data or
unreadable file, 4 unsupported bundle version.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bmc_calib import __version__, bundle, render, summary
from bmc_calib.errors import BMCError

app = typer.Typer(
    name="bmc-calib",
    help="Measure the biomechanical limits of the human hand and check poses against them.",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)
T = TypeVar("T")
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bmc-calib {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """bmc-calib: biomechanical hand limits from 3D joint data."""
    _state["debug"] = debug or bool(os.environ.get("BMC_CALIB_DEBUG"))


def _run(action: Callable[[], T]) -> T:
    """Run a library call; a BMCError becomes one red stderr line and its exit code."""
    try:
        return action()
    except BMCError as exc:
        if _state["debug"]:
            raise
        stderr.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code) from None


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """A rich progress bar on stderr driven by the library's (stage, done, total) callback."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    bar = Progress(
        TextColumn("{task.description:<11}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield update


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


# Options shared by every command that reads pose files.
Files = Annotated[list[str], typer.Argument(help="Input files, folders or glob patterns.")]
Layout = Annotated[
    str | None, typer.Option("--layout", help="Keypoint order of the input (see docs).")
]
Hand = Annotated[str | None, typer.Option("--hand", help="right or left (left is mirrored).")]
Format = Annotated[
    str | None,
    typer.Option("--format", help="Input format (default: detect; see bmc-calib formats)."),
]
Key = Annotated[
    str | None,
    typer.Option("--key", help="Array / dataset / record key of the joints (npz, h5, json)."),
]
Side = Annotated[
    str | None,
    typer.Option(
        "--side",
        help="Keep only left or right hands of two-handed data (RHD, InterHand, DexYCB, "
        "MediaPipe, npz is_left); default both.",
    ),
]
Unit = Annotated[
    str | None,
    typer.Option("--unit", help="Length unit of the input when the format's is wrong: m, cm, mm."),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Normalization = Annotated[
    str, typer.Option("--normalization", help="reference-bone (default) or none.")
]


def _open(files: list[str], layout: str | None, hand: str | None, fmt: str | None,
          key: str | None, side: str | None = None, unit: str | None = None
          ) -> list[Any]:  # fmt: skip
    from bmc_calib.formats import ReadOptions, open_sources

    options = ReadOptions(layout=layout, hand=hand, key=key, side=side, unit=unit)
    return open_sources(files, options, format=fmt)


@app.command()
def fit(
    files: Files,
    output: Annotated[Path, typer.Option("-o", "--output", help="Bundle to write.")] = Path(
        "limits.h5"
    ),
    coverage: Annotated[
        float, typer.Option("--coverage", help="Fraction of data inside the limits.")
    ] = 0.999,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="file (one group per input), label (per-frame subject/sequence labels of "
            "the dataset, else file) or none.",
        ),
    ] = "file",
    layout: Layout = None,
    hand: Hand = None,
    fmt: Format = None,
    key: Key = None,
    side: Side = None,
    unit: Unit = None,
    normalization: Normalization = "reference-bone",
    no_glitch_rejection: Annotated[
        bool, typer.Option("--no-glitch-rejection", help="Keep frames with outlier bones.")
    ] = False,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Fit limits to pose files and write ONE versioned HDF5 bundle."""
    from bmc_calib.fit import FitOptions, fit_limits
    from bmc_calib.outputs import check_writable

    def run() -> dict[str, Any]:
        options = FitOptions(
            coverage=coverage,
            normalization=normalization,
            group_by=group_by,
            reject_glitches=not no_glitch_rejection,
        )
        check_writable(output, force)
        sources = _open(files, layout, hand, fmt, key, side, unit)
        extra = {
            "layout": layout or "per format",
            "hand": hand or "per format",
            "side": side or "both",
        }
        with _progress(not as_json) as progress:
            limits = fit_limits(sources, options, progress, extra_parameters=extra)
        digest = bundle.write_bundle(limits, output, force=force)
        return summary.fit_summary(limits, str(output), digest)

    result = _run(run)
    if as_json:
        _print_json(result)
    else:
        render.fit_report(stderr, result)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A bundle written by bmc-calib fit.")],
    verify: Annotated[
        bool, typer.Option("--verify", help="Exit with code 3 when the digest does not match.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Show what a bundle holds, where it came from, and whether it is intact."""
    limits, info = _run(lambda: bundle.inspect_bundle(path))
    result = summary.bundle_summary(limits, info)
    if as_json:
        _print_json(result)
    else:
        render.bundle_report(stderr, result)
    if verify and not info.digest_ok:
        stderr.print(
            f"[bold red]error:[/bold red] {path}: content digest mismatch (stored "
            f"{info.digest_stored}, computed {info.digest_computed}); the file was modified",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


@app.command()
def features(
    files: Files,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")] = Path(
        "features.npz"
    ),
    csv: Annotated[bool, typer.Option("--csv", help="Write a flat CSV table instead.")] = False,
    layout: Layout = None,
    hand: Hand = None,
    fmt: Format = None,
    key: Key = None,
    side: Side = None,
    unit: Unit = None,
    normalization: Normalization = "reference-bone",
    force: Force = False,
) -> None:
    """Write per-pose features (bone lengths, palm, joint angles) for analysis."""
    from bmc_calib import features as feats
    from bmc_calib.kinematics import check_normalization
    from bmc_calib.outputs import check_writable

    def run() -> int:
        check_normalization(normalization)
        check_writable(output, force)
        sources = _open(files, layout, hand, fmt, key, side, unit)
        data = feats.pose_features(sources, normalization)
        writer = feats.write_csv if csv else feats.write_npz
        writer(data, output, force=force)
        return len(data.features)

    n = _run(run)
    stderr.print(f"Wrote features of {n} poses to [bold]{output}[/bold]")


def _print_warnings(lines: list[str]) -> None:
    for line in lines:
        stderr.print(
            f"[bold yellow]warning:[/bold yellow] {escape(line)}", highlight=False, soft_wrap=True
        )


@app.command()
def plot(
    path: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle to draw.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Joint-angle figure (.png, .pdf or .svg); the interval figure is written "
            "beside it as NAME_intervals.SUFFIX.",
        ),
    ] = Path("limits.png"),
    poses: Annotated[
        list[str] | None,
        typer.Option("--poses", help="Pose files to draw (repeat the option, or use a glob)."),
    ] = None,
    layout: Layout = None,
    hand: Hand = None,
    fmt: Format = None,
    key: Key = None,
    force: Force = False,
) -> None:
    """Draw a bundle's limits, and optionally poses, as two figures (needs the plot extra)."""
    from bmc_calib import plot as plotting
    from bmc_calib.features import pose_features

    def run() -> Any:
        plotting.check_outputs(output, force)
        limits = bundle.read_bundle(path)
        features = None
        title = path.name
        if poses:
            sources = _open(poses, layout, hand, fmt, key)
            features = pose_features(sources, limits.normalization).features
            title += " with " + plotting.describe_sources([s.path for s in sources])
        return plotting.plot_limits(limits, output, features=features, title=title, force=force)

    result = _run(run)
    _print_warnings(result.notes)
    stderr.print("Wrote " + " and ".join(f"[bold]{escape(p)}[/bold]" for p in result.paths))


@app.command()
def merge(
    files: Annotated[
        list[Path], typer.Argument(metavar="BUNDLES", help="Bundles to merge (two or more).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Merged bundle to write.")],
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Merge bundles into one holding the union of their limits (see the user guide)."""
    from bmc_calib.merge import merge_bundles
    from bmc_calib.outputs import check_writable

    def run() -> dict[str, Any]:
        check_writable(output, force)
        result = merge_bundles(files)
        digest = bundle.write_bundle(result.limits, output, force=force)
        return {
            "output": str(output),
            "content_digest": digest,
            "inputs": [str(f) for f in files],
            "warnings": result.warnings,
        }

    data = _run(run)
    if as_json:
        _print_json(data)
        return
    _print_warnings(data["warnings"])
    stderr.print(f"Merged {len(files)} bundles into [bold]{escape(str(output))}[/bold]")


@app.command()
def export(
    path: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle to export.")],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to write.")],
    to: Annotated[
        str, typer.Option("--to", help="Target format: hand-bmc (Hand-BMC-pytorch .npy files).")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace the Hand-BMC files of an existing folder.")
    ] = False,
) -> None:
    """Write a bundle's limits in another tool's format (warns about what is lost)."""
    from bmc_calib import interop

    def run() -> list[str]:
        interop.check_format(to)
        return interop.export_hand_bmc(bundle.read_bundle(path), directory, force=force)

    warnings = _run(run)
    _print_warnings(warnings)
    stderr.print(f"Wrote [bold]{escape(str(directory))}[/bold] ({to})")


@app.command("import")
def import_(
    source_format: Annotated[
        str, typer.Argument(metavar="FORMAT", help="Source format: hand-bmc.")
    ],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to read.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Bundle to write.")] = Path(
        "limits.h5"
    ),
    force: Force = False,
) -> None:
    """Read limits written by another tool (Hand-BMC-pytorch) into a bundle."""
    from bmc_calib import interop
    from bmc_calib.outputs import check_writable

    def run() -> list[str]:
        interop.check_format(source_format)
        check_writable(output, force)
        limits, warnings = interop.import_hand_bmc(directory)
        bundle.write_bundle(limits, output, force=force)
        return warnings

    warnings = _run(run)
    _print_warnings(warnings)
    stderr.print(
        f"Wrote [bold]{escape(str(output))}[/bold] (imported from {escape(str(directory))})"
    )


@app.command()
def validate(
    files: Files,
    limits_path: Annotated[
        Path | None,
        typer.Option(
            "--limits", help="Bundle to use (default: ./limits.h5, else the packaged one)."
        ),
    ] = None,
    layout: Layout = None,
    hand: Hand = None,
    fmt: Format = None,
    key: Key = None,
    as_json: Json = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write one row per pose to a .csv or .jsonl file."),
    ] = None,
    tolerance_scale: Annotated[
        float,
        typer.Option(
            "--tolerance-scale", help="Multiply the bundle's tolerances (0: the fitted limits)."
        ),
    ] = 1.0,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            help="Exit 1 on: implausible (any pose not plausible), degenerate, or never.",
        ),
    ] = "implausible",
    gt: Annotated[
        list[str] | None,
        typer.Option("--gt", help="Ground truth, same frames and layout: adds MPJPE and PCK AUC."),
    ] = None,
    unit: Annotated[
        str | None,
        typer.Option("--unit", help="Length unit (mm, cm, m) of files that do not say it (--gt)."),
    ] = None,
    worst: Annotated[int, typer.Option("--worst", help="How many worst poses to list.")] = 10,
    force: Force = False,
) -> None:
    """Check each pose: plausible, implausible (which joint, by how much) or degenerate."""
    from bmc_calib import default_bundle
    from bmc_calib import validate as validation
    from bmc_calib.errors import UsageError
    from bmc_calib.outputs import check_writable

    def run() -> dict[str, Any]:
        validation.check_fail_on(fail_on)
        validation.check_tolerance_scale(tolerance_scale)
        if worst < 0:
            raise UsageError(f"--worst must be >= 0, got {worst}")
        if report is not None:
            validation.report_kind(report)
            check_writable(report, force)
        choice = default_bundle.choose_bundle(limits_path)
        stderr.print(f"Limits: {choice.path} ({choice.origin})", highlight=False, soft_wrap=True)
        sources = _open(files, layout, hand, fmt, key)
        truth = _open(gt, layout, hand, fmt, key) if gt else None
        with _progress(not as_json) as progress:
            result = validation.validate_sources(
                sources,
                choice.limits,
                tolerance_scale=tolerance_scale,
                worst=worst,
                gt=truth,
                unit=unit,
                report=report,
                force=force,
                progress=progress,
            )
        return summary.validate_summary(result, choice, fail_on)

    data = _run(run)
    if as_json:
        _print_json(data)
    else:
        render.validate_report(stderr, data)
    if report is not None:
        stderr.print(f"Wrote {report} ({data['poses']} rows)", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if data["failed"] else 0)


@app.command("formats")
def formats_(as_json: Json = False) -> None:
    """List every input format: expected files, layout, units, handedness, group labels."""
    from bmc_calib.formats import describe_formats

    infos = describe_formats()
    if as_json:
        _print_json({"formats": infos})
        return
    from rich import box
    from rich.table import Table

    table = Table(title="Input formats (--format NAME; default: detected)", title_justify="left",
                  box=box.SIMPLE_HEAD, show_lines=True)  # fmt: skip
    table.add_column("format", style="bold", no_wrap=True)
    table.add_column("what it reads", overflow="fold")
    for f in infos:
        unit = f"{f['unit']} ({f['unit_note']})" if f["unit_note"] else str(f["unit"])
        lines = [
            str(f["description"]),
            f"files:  {f['expected_files']}",
            f"layout: {f['layout']}; unit: {unit}",
            f"hands:  {f['handedness']}",
        ]
        if f["groups"]:
            lines.append(f"labels: {f['groups']} (--group-by label)")
        lines.append(f"e.g.    {f['example']}")
        table.add_row(str(f["name"]), escape("\n".join(lines)))
    stderr.print(table, highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
