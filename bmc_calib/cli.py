"""The ``bmc-calib`` command line: parse options, call the library, render. Nothing else.

Exit codes (DESIGN §8, README table): 0 success, 1 findings (validate), 2 usage error, 3 bad
input data or unreadable file, 4 unsupported bundle version, 70 unexpected failure (a bug),
130 / 143 interrupted by SIGINT (Ctrl-C) / SIGTERM.

Every run goes through :meth:`_Group.main`: whatever goes wrong becomes one ``error:`` line
on stderr (with ``--json`` also ``{"error": ..., "exit_code": ...}`` on stdout) and its exit
code; ``--debug`` (or ``BMC_CALIB_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup, TyperOption

from bmc_calib import __version__, bundle, render, summary
from bmc_calib.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    BMCError,
)

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException  # type: ignore[no-redef]

#: Width of output that is not a terminal (a CI log, a pipe, ``2> log``) when COLUMNS is not
#: set: wide enough that file paths and SHA-256 digests are never split.
WIDE = 200
INTERRUPTED = "interrupted; nothing was written"


class _Terminated(BaseException):
    """SIGTERM, raised by the handler :func:`main` installs; like KeyboardInterrupt it is no
    ``Exception``, so only cleanup code (``finally``, temporary files) sees it on its way up."""


class _Group(TyperGroup):
    """The command group; its :meth:`main` turns every failure into one line and a code."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, *rest: Any, standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:  # fmt: skip
        argv = list(sys.argv[1:] if args is None else args)
        invoke = super().main
        code = _exit_code(lambda: invoke(argv, *rest, standalone_mode=False, **extra), argv)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="bmc-calib",
    cls=_Group,
    help="Measure the biomechanical limits of the human hand and check poses against them.",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_state: dict[str, Any] = {"debug": False, "command": None}


def _console(stderr: bool = True) -> Console:
    """A rich console; :data:`WIDE` columns when it is not a terminal and COLUMNS is unset."""
    console = Console(stderr=stderr)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = WIDE
    return console


#: the console for people (tables, progress, errors); made anew by every run (:func:`_exit_code`)
stderr = _console()


def _exit_code(invoke: Callable[[], Any], argv: list[str]) -> int:
    """Run the command line; every outcome becomes an exit code, every failure one line."""
    global stderr
    stderr = _console()
    _state.update(debug=bool(os.environ.get("BMC_CALIB_DEBUG")), command=None)
    try:
        code = invoke()
    except _Terminated:
        return _fail(INTERRUPTED, EXIT_TERMINATED, argv)
    except (KeyboardInterrupt, typer.Abort):
        return _fail(INTERRUPTED, EXIT_INTERRUPTED, argv)
    except BMCError as exc:
        if _state["debug"]:
            raise
        return _fail(str(exc), exc.exit_code, argv)
    except ClickException as exc:  # usage errors found while parsing the command line
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed already
            return exc.exit_code
        return _fail(_usage_message(exc), exc.exit_code, argv)
    except Exception as exc:
        if _state["debug"]:
            raise
        command = " ".join(filter(None, ["bmc-calib", _state["command"]]))
        return _fail(
            f"unexpected failure of {command} ({type(exc).__name__}: {_first_line(exc)}); "
            "rerun with --debug for the traceback",
            EXIT_INTERNAL,
            argv,
        )
    if code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into exit code 130
        return _fail(INTERRUPTED, EXIT_INTERRUPTED, argv)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int, argv: list[str]) -> int:
    """One ``error:`` line on stderr; with ``--json`` a JSON error object on stdout too."""
    global stderr
    stderr = _console()  # an interrupt may have hit the old one mid-print, text still queued
    _error_line(message)
    options = argv[: argv.index("--")] if "--" in argv else argv
    if "--json" in options:
        _print_json({"error": message, "exit_code": code})
    return code


def _error_line(message: str) -> None:
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _usage_message(exc: ClickException) -> str:
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see {ctx.command_path} -h)" if ctx is not None else message


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else "no message"


def _show_no_type_for_flags() -> None:
    """Recent typer prints ``<bool>`` as the type of every flag (``--help`` too), although a
    flag takes no value: show none, as click does."""
    display = getattr(TyperOption, "display_type_rich", None)
    if display is None:  # pragma: no cover - older typer shows no type for flags
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else display(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_show_no_type_for_flags()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bmc-calib {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """bmc-calib: biomechanical hand limits from 3D joint data."""
    _state["debug"] = debug or bool(os.environ.get("BMC_CALIB_DEBUG"))
    _state["command"] = ctx.invoked_subcommand


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    """A rich progress bar on stderr driven by the library's (stage, done, total) callback;
    none when stderr is not a terminal (a log gains nothing from it)."""
    if not enabled or not stderr.is_terminal:
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


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None (JSON ``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _print_json(data: dict[str, Any]) -> None:
    """``data`` as JSON on stdout; NaN and infinities are written as ``null`` (never bare)."""
    sys.stdout.write(json.dumps(_finite_json(data), indent=2, allow_nan=False) + "\n")


def _print_lines(label: str, lines: Sequence[str]) -> None:
    """``warning:`` / ``note:`` / ``hint:`` lines on stderr, never wrapped."""
    for line in lines:
        stderr.print(f"[bold yellow]{label}:[/bold yellow] {escape(line)}", highlight=False,
                     soft_wrap=True)  # fmt: skip


def _print_warnings(lines: Sequence[str]) -> None:
    _print_lines("warning", lines)


def _wrote(text: str) -> None:
    """A ``Wrote …`` line; ``text`` is rich markup with every user string escaped."""
    stderr.print(text, highlight=False, soft_wrap=True)


# Options shared by every command that reads pose files (fit, features, validate, plot):
# declare them with these types and read the files with _open.
Files = Annotated[
    list[str], typer.Argument(metavar="FILES", help="Input files, folders or glob patterns.")
]
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
          key: str | None, side: str | None, unit: str | None = None
          ) -> list[Any]:  # fmt: skip
    """Open the pose inputs; what the readers noticed (e.g. a reshaped array) is a note."""
    from bmc_calib.formats import ReadOptions, open_sources

    options = ReadOptions(layout=layout, hand=hand, key=key, side=side, unit=unit)
    sources = open_sources(files, options, format=fmt)
    _print_lines("note", [note for source in sources for note in source.notes])
    return sources


#: fit reports its scratch disk use on stderr from this size on (always in --json)
SCRATCH_NOTE_BYTES = 100_000_000


@app.command()
def fit(
    files: Files,
    # a str, not a Path: Path("new/") would drop the slash and write a file named "new"
    output: Annotated[
        str, typer.Option("-o", "--output", help="Bundle to write.", metavar="<path>")
    ] = "limits.h5",
    coverage: Annotated[
        float, typer.Option("--coverage", help="Fraction of data inside the limits.")
    ] = 0.999,
    person_confidence: Annotated[
        float,
        typer.Option(
            "--person-confidence",
            help="Probability that a new person's bone lengths and palm all lie inside "
            "their intervals (see docs/method.md).",
        ),
    ] = 0.99,
    tolerance_quantile: Annotated[
        float | None,
        typer.Option(
            "--tolerance-quantile",
            help="Quantile of held-out joint-angle distances taken as tolerance "
            "(default: the coverage).",
        ),
    ] = None,
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
            person_confidence=person_confidence,
            tolerance_quantile=tolerance_quantile,
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
        result = summary.fit_summary(limits, str(output), digest)
        result["scratch_bytes"] = int(limits.scratch_bytes)
        result["hints"] = [
            *summary.fit_hints(sources, group_by),
            *summary.glitch_hints(sources, limits, options.glitch_max_deviation),
            *summary.unit_hints(sources, limits),
            *summary.tolerance_hints(limits),
            *summary.group_hints(limits),
        ]
        return result

    result = run()
    if as_json:
        _print_json(result)
    else:
        render.fit_report(stderr, result)
        if result["scratch_bytes"] >= SCRATCH_NOTE_BYTES:
            _print_lines("note", [
                f"fit used {result['scratch_bytes'] / 1e6:,.0f} MB of scratch disk in the "
                "temporary folder (TMPDIR), removed when it ended"
            ])  # fmt: skip
        _print_lines("hint", result["hints"])


@contextlib.contextmanager
def _bundle_file(path: Path) -> Iterator[Path]:
    """A BUNDLE argument: ``path``, or the packaged bundle for the name ``default`` when no
    such file exists (as ``validate --limits default``)."""
    if str(path) != "default" or path.exists():
        yield path
        return
    from bmc_calib import default_bundle

    with default_bundle.packaged_path() as packaged:
        yield Path(packaged)


@app.command()
def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="BUNDLE",
            help="A bundle written by bmc-calib fit, or 'default' for the packaged one.",
        ),
    ],
    verify: Annotated[
        bool, typer.Option("--verify", help="Exit with code 3 when the digest does not match.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Show what a bundle holds, where it came from, and whether it is intact."""
    with _bundle_file(path) as bundle_path:
        limits, info = bundle.inspect_bundle(bundle_path)
    problem = info.problem()
    if verify and problem is not None and not as_json:  # the verdict before any rendering
        _error_line(problem)
        raise typer.Exit(EXIT_BAD_INPUT)
    result = summary.bundle_summary(limits, info)
    if as_json:
        _print_json(result)
    else:
        render.bundle_report(stderr, result)
    if verify and problem is not None:  # the JSON above already says so: no error object
        _error_line(problem)
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def features(
    files: Files,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="File to write: .npz, or .csv for a flat table (default: features.npz; "
            "with --csv, features.csv).",
            show_default=False,
        ),
    ] = None,
    csv: Annotated[
        bool, typer.Option("--csv", help="Write a flat CSV table (as does an -o ending in .csv).")
    ] = False,
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

    target = output or Path("features.csv" if csv else "features.npz")

    def run() -> int:
        kind = feats.output_kind(target, csv)
        check_normalization(normalization)
        check_writable(target, force)
        sources = _open(files, layout, hand, fmt, key, side, unit)
        return feats.write_features(sources, target, kind, normalization, force=force)

    n = run()
    _wrote(f"Wrote features of {n} poses to [bold]{escape(str(target))}[/bold]")


@app.command()
def plot(
    path: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="Bundle to draw, or 'default' (packaged).")
    ],
    more_poses: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="POSES", help="Pose files to draw (the same as --poses), e.g. a.npy b.npy."
        ),
    ] = None,
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
        typer.Option(
            "--poses",
            help="Pose files to draw: --poses a.npy b.npy, or a glob, or repeat the option.",
        ),
    ] = None,
    layout: Layout = None,
    hand: Hand = None,
    fmt: Format = None,
    key: Key = None,
    side: Side = None,
    unit: Unit = None,
    force: Force = False,
) -> None:
    """Draw a bundle's limits, and optionally poses, as two figures (needs the plot extra)."""
    from bmc_calib import plot as plotting
    from bmc_calib.features import pose_features

    pose_files = [*(poses or []), *(more_poses or [])]

    def run() -> Any:
        plotting.check_outputs(output, force)
        with _bundle_file(path) as bundle_path:
            limits = bundle.read_bundle(bundle_path)
        features = None
        title = path.name
        if pose_files:
            sources = _open(pose_files, layout, hand, fmt, key, side, unit)
            features = pose_features(sources, limits.normalization).features
            title += " with " + plotting.describe_sources([s.path for s in sources])
        return plotting.plot_limits(limits, output, features=features, title=title, force=force)

    result = run()
    _print_warnings(result.notes)
    _wrote("Wrote " + " and ".join(f"[bold]{escape(p)}[/bold]" for p in result.paths))


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

    data = run()
    if as_json:
        _print_json(data)
        return
    _print_warnings(data["warnings"])
    _wrote(f"Merged {len(files)} bundles into [bold]{escape(str(output))}[/bold]")


@app.command()
def export(
    path: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="Bundle to export, or 'default' (packaged).")
    ],
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
        with _bundle_file(path) as bundle_path:
            limits = bundle.read_bundle(bundle_path)
        return interop.export_hand_bmc(limits, directory, force=force)

    warnings = run()
    _print_warnings(warnings)
    _wrote(f"Wrote [bold]{escape(str(directory))}[/bold] ({escape(to)})")


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

    warnings = run()
    _print_warnings(warnings)
    _wrote(f"Wrote [bold]{escape(str(output))}[/bold] (imported from {escape(str(directory))})")


def _choose_bundle(limits: str | None) -> Any:
    """``--limits``: a bundle path, or ``default`` for the packaged bundle even when
    ``./limits.h5`` exists; without it, :func:`bmc_calib.default_bundle.choose_bundle`'s
    order."""
    from bmc_calib import default_bundle

    if limits != "default":
        return default_bundle.choose_bundle(limits)
    with default_bundle.packaged_path() as packaged:
        choice = default_bundle.choose_bundle(packaged)
    return dataclasses.replace(choice, origin=f"{default_bundle.ORIGIN_PACKAGED}, --limits default")


@app.command()
def validate(
    files: Files,
    limits_path: Annotated[
        str | None,
        typer.Option(
            "--limits",
            help="Bundle to use, or 'default' for the packaged one (default: ./limits.h5, "
            "else the packaged one).",
        ),
    ] = None,
    layout: Layout = None,
    hand: Hand = None,
    fmt: Format = None,
    key: Key = None,
    side: Side = None,
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
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="Personal bone check per group: label (the data's subject/sequence labels, "
            "else the file), file, none (all poses one group) or off.",
        ),
    ] = "label",
    force: Force = False,
) -> None:
    """Check each pose: plausible, implausible (which joint, by how much) or degenerate."""
    from bmc_calib import validate as validation
    from bmc_calib.errors import UsageError
    from bmc_calib.outputs import check_writable

    def run() -> dict[str, Any]:
        validation.check_fail_on(fail_on)
        validation.check_tolerance_scale(tolerance_scale)
        validation.check_group_by(group_by)
        if worst < 0:
            raise UsageError(f"--worst must be >= 0, got {worst}")
        if report is not None:
            validation.report_kind(report)
            check_writable(report, force)
        choice = _choose_bundle(limits_path)
        _wrote(f"Limits: {escape(choice.path)} ({escape(choice.origin)})")
        sources = _open(files, layout, hand, fmt, key, side)
        truth = _open(gt, layout, hand, fmt, key, side) if gt else None
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
                group_by=None if group_by == "off" else group_by,
            )
        return summary.validate_summary(result, choice, fail_on)

    data = run()
    if as_json:
        _print_json(data)
    else:
        render.validate_report(stderr, data)
    if report is not None:
        _wrote(f"Wrote {escape(str(report))} ({data['poses']} rows)")
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
    _console(stderr=False).print(table, highlight=False)  # a listing is the output: stdout


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main() -> None:
    """Console-script entry point; SIGTERM is handled like Ctrl-C (exit 143, nothing written)."""
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
