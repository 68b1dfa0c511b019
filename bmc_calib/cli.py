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
        stderr.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
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
Format = Annotated[str | None, typer.Option("--format", help="Input format (default: detect).")]
Key = Annotated[str | None, typer.Option("--key", help="Array name inside .npz files.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Normalization = Annotated[
    str, typer.Option("--normalization", help="reference-bone (default) or none.")
]


def _open(files: list[str], layout: str | None, hand: str | None, fmt: str | None,
          key: str | None) -> list[Any]:  # fmt: skip
    from bmc_calib.formats import ReadOptions, open_sources

    return open_sources(files, ReadOptions(layout=layout, hand=hand, key=key), format=fmt)


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
        sources = _open(files, layout, hand, fmt, key)
        extra = {"layout": layout or "per format", "hand": hand or "per format"}
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
        data = feats.pose_features(_open(files, layout, hand, fmt, key), normalization)
        writer = feats.write_csv if csv else feats.write_npz
        writer(data, output, force=force)
        return len(data.features)

    n = _run(run)
    stderr.print(f"Wrote features of {n} poses to [bold]{output}[/bold]")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
