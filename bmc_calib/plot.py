"""Figures of a limits bundle, optionally with poses drawn over it (extra ``plot``: matplotlib).

Two figures, each a fixed size in pixels (``FIGSIZE * DPI``):

- the joint-angle figure (:func:`joint_angle_figure`): a 3 × 5 grid, rows = level (MCP, PIP,
  DIP row), columns = finger (thumb … little), one panel per angle id ``5 * level + finger``
  titled with the joint's name; axes in degrees, flexion unwrapped around the joint's flexion
  centre exactly as validate does. Each panel shows the final hull, the exact and RDP hulls
  when the bundle stores them, the hull grown by the joint's tolerance when it is non-zero,
  the axis-aligned box, and the poses as points coloured by :func:`joint_angle_status`;
- the interval figure (:func:`interval_figure`): bone-length, palm-curvature and palm-angle
  (degrees) intervals with their tolerances and the poses' distributions.

Poses are given as :class:`bmc_calib.kinematics.Features` computed with the bundle's own
normalisation; degenerate poses are not drawn. matplotlib is imported lazily, inside the
functions, with the Agg canvas and no pyplot state, so ``import bmc_calib`` never needs it and
plotting never opens a window; without matplotlib a :class:`BMCError` (exit code 2) says which
extra to install.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bmc_calib import hulls, skeleton
from bmc_calib.errors import EXIT_USAGE, BMCError, UsageError
from bmc_calib.kinematics import Features
from bmc_calib.limits import Interval, Limits
from bmc_calib.outputs import atomic_path, check_writable
from bmc_calib.violations import (
    VERDICT_EPSILON,
    interval_violation,
    joint_angle_points,
    relative_interval_violation,
)

__all__ = [
    "DPI",
    "INSIDE",
    "INTERVALS_FIGSIZE",
    "JOINTS_FIGSIZE",
    "OUTSIDE",
    "WITHIN_TOLERANCE",
    "PlotResult",
    "check_outputs",
    "describe_sources",
    "interval_figure",
    "intervals_path",
    "joint_angle_figure",
    "joint_angle_status",
    "plot_limits",
]

#: Resolution of written figures, dots per inch.
DPI = 100
#: Joint-angle figure size in inches (1600 × 1000 pixels at DPI).
JOINTS_FIGSIZE = (16.0, 10.0)
#: Interval figure size in inches (1400 × 900 pixels at DPI).
INTERVALS_FIGSIZE = (14.0, 9.0)
#: Output formats, by file suffix.
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}

#: :func:`joint_angle_status` codes.
INSIDE, WITHIN_TOLERANCE, OUTSIDE = 0, 1, 2

#: At most this many poses are drawn per panel and per distribution (an even stride).
MAX_DRAWN = 20_000

_LEVELS = ("MCP row", "PIP row", "DIP row")
_COLORS = {
    "hull": "#1f5fa8",
    "tolerance": "#6fa8dc",
    "exact": "#222222",
    "rdp": "#8e44ad",
    "box": "#7f7f7f",
    INSIDE: "#5b7083",
    WITHIN_TOLERANCE: "#e69f00",
    OUTSIDE: "#d62728",
    "distribution": "#b8c4d0",
}
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 10,
    "figure.titlesize": 14,
}


@dataclass
class PlotResult:
    """Paths written and notes for the user (the library never prints)."""

    paths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- decisions
def joint_angle_status(
    flexion_abduction: np.ndarray, limits: Limits
) -> tuple[np.ndarray, np.ndarray]:
    """Unwrapped joint-angle points and where each lies relative to its joint's hull.

    Args:
        flexion_abduction: ``(N, 15, 2)`` raw angles in radians (flexion in (−π, π]).
        limits: the bundle.

    Returns:
        ``points`` ``(N, 15, 2)`` radians, flexion unwrapped around each joint's flexion centre
        (:func:`bmc_calib.violations.joint_angle_points`, as validate does), and ``status``
        ``(N, 15)`` int8: :data:`INSIDE` where :func:`bmc_calib.hulls.points_in_polygon` holds,
        :data:`WITHIN_TOLERANCE` outside the hull but within the joint's tolerance (validate's
        verdict: distance ≤ tolerance + VERDICT_EPSILON), :data:`OUTSIDE` otherwise.
    """
    regions = limits.joint_angle
    points = joint_angle_points(flexion_abduction, regions.flexion_center)
    status = np.full(points.shape[:2], OUTSIDE, dtype=np.int8)
    for a, hull in enumerate(regions.hulls):
        inside = hulls.points_in_polygon(points[:, a], hull)
        status[inside, a] = INSIDE
        rest = np.flatnonzero(~inside)
        if rest.size:
            distance = hulls.distance_to_polygon(points[rest, a], hull)
            near = distance <= regions.tolerance[a] + VERDICT_EPSILON
            status[rest[near], a] = WITHIN_TOLERANCE
    return points, status


# --------------------------------------------------------------------------- writing
def intervals_path(output: str | os.PathLike[str]) -> str:
    """Path of the interval figure written beside ``output``: ``NAME_intervals.SUFFIX``."""
    root, suffix = os.path.splitext(os.fspath(output))
    return f"{root}_intervals{suffix}"


def plot_limits(
    limits: Limits,
    output: str | os.PathLike[str],
    *,
    features: Features | None = None,
    title: str = "",
    force: bool = False,
) -> PlotResult:
    """Write the joint-angle figure to ``output`` and the interval figure beside it.

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``). Both targets are checked
    before anything is drawn; each file is written atomically. ``features`` are the poses to
    draw (computed with ``limits.normalization``).
    """
    target, second, fmt = check_outputs(output, force)
    result = PlotResult()
    if features is not None:
        degenerate = int(np.count_nonzero(features.degenerate))
        if degenerate:
            result.notes.append(f"{degenerate} degenerate pose(s) are not drawn")
        if degenerate == len(features):
            result.notes.append("no pose could be drawn")
    for path, figure in (
        (target, joint_angle_figure(limits, features, title)),
        (second, interval_figure(limits, features, title)),
    ):
        with atomic_path(path, force=force) as temporary:
            figure.savefig(temporary, format=fmt, dpi=DPI)
        result.paths.append(path)
    return result


def check_outputs(output: str | os.PathLike[str], force: bool) -> tuple[str, str, str]:
    """Check both figure paths and matplotlib before any work; returns (figure, intervals, fmt).

    Raises :class:`UsageError` for an unknown suffix or an existing file without ``force``,
    :class:`BMCError` (exit code 2) when matplotlib is missing.
    """
    target = os.fspath(output)
    fmt = FORMATS.get(os.path.splitext(target)[1].lower())
    if fmt is None:
        raise UsageError(f"{target}: unsupported figure type; use one of {', '.join(FORMATS)}")
    second = intervals_path(target)
    for path in (target, second):
        check_writable(path, force)
    _matplotlib()
    return target, second, fmt


def _matplotlib() -> Any:
    """The matplotlib module, or a one-line error naming the extra to install."""
    try:
        import matplotlib
        import matplotlib.backends.backend_agg
        import matplotlib.figure
    except ImportError:
        raise BMCError(
            "plotting needs matplotlib, which is not installed; install the extra with: "
            "pip install 'bmc-calib[plot]'",
            exit_code=EXIT_USAGE,
        ) from None
    return matplotlib


def _new_figure(figsize: tuple[float, float]) -> Any:
    mpl = _matplotlib()
    figure = mpl.figure.Figure(figsize=figsize, dpi=DPI, layout="constrained")
    mpl.backends.backend_agg.FigureCanvasAgg(figure)
    return figure


def _usable(features: Features | None) -> Features | None:
    """Non-degenerate poses (at most MAX_DRAWN of them, evenly strided), or None."""
    if features is None:
        return None
    rows = np.flatnonzero(~np.asarray(features.degenerate, dtype=bool))
    if rows.size == 0:
        return None
    rows = rows[:: max(1, math.ceil(rows.size / MAX_DRAWN))]
    return Features(
        **{name: getattr(features, name)[rows] for name in Features.__dataclass_fields__}
    )


# --------------------------------------------------------------------------- joint angles
def joint_angle_figure(limits: Limits, features: Features | None = None, title: str = "") -> Any:
    """The 3 × 5 grid of joint-angle panels (a matplotlib Figure, Agg canvas attached)."""
    mpl = _matplotlib()
    poses = _usable(features)
    with mpl.rc_context(_STYLE):
        figure = _new_figure(JOINTS_FIGSIZE)
        axes = figure.subplots(3, 5, squeeze=False)
        points = status = None
        if poses is not None:
            points, status = joint_angle_status(poses.flexion_abduction, limits)
        for level in range(3):
            for finger in range(5):
                a = 5 * level + finger
                ax = axes[level, finger]
                _joint_panel(ax, limits, a, points, status)
                if finger == 0:
                    ax.set_ylabel(f"{_LEVELS[level]}\nabduction (°)")
                if level == 2:
                    ax.set_xlabel("flexion (°, unwrapped)")
        heading = "Joint-angle limits" + (f" — {title}" if title else "")
        heading += f"  ·  coverage {limits.coverage:g}"
        if poses is not None:
            share = 100.0 * float(np.mean(np.any(status == OUTSIDE, axis=1)))
            heading += f"  ·  {len(poses)} poses drawn, {share:.1f} % outside some hull + tolerance"
        figure.suptitle(heading)
        figure.legend(
            handles=_joint_legend(mpl, limits, poses is not None),
            loc="outside lower center",
            ncol=8,
            frameon=False,
        )
    return figure


def _joint_panel(
    ax: Any, limits: Limits, a: int, points: np.ndarray | None, status: np.ndarray | None
) -> None:
    regions = limits.joint_angle
    hull = np.degrees(regions.hulls[a])
    extents = [hull]
    closed = np.vstack([hull, hull[:1]])
    ax.fill(closed[:, 0], closed[:, 1], color=_COLORS["hull"], alpha=0.14, lw=0, zorder=1)
    tolerance = float(regions.tolerance[a])
    if tolerance > 0:
        grown = np.degrees(_grown(regions.hulls[a], tolerance))
        ax.plot(grown[:, 0], grown[:, 1], color=_COLORS["tolerance"], lw=1.0, zorder=2)
        extents.append(grown)
    for kind, polygons, style in (
        ("exact", regions.exact_hulls, ":"),
        ("rdp", regions.rdp_hulls, "--"),
    ):
        if polygons is not None:
            ring = np.degrees(polygons[a])
            ring = np.vstack([ring, ring[:1]])
            ax.plot(ring[:, 0], ring[:, 1], color=_COLORS[kind], ls=style, lw=1.0, zorder=3)
            extents.append(ring)
    low, high = np.degrees(regions.box_min[a]), np.degrees(regions.box_max[a])
    box = np.array([low, [high[0], low[1]], high, [low[0], high[1]], low])
    ax.plot(box[:, 0], box[:, 1], color=_COLORS["box"], ls="-.", lw=0.9, zorder=2)
    extents.append(box)
    ax.plot(closed[:, 0], closed[:, 1], color=_COLORS["hull"], lw=1.8, zorder=4)

    title = skeleton.ANGLE_NAMES[a]
    if points is not None and status is not None:
        drawn = np.degrees(points[:, a])
        faint = min(0.35, max(0.04, 300.0 / len(drawn)))  # dense clouds stay see-through
        for code, size, alpha in (
            (INSIDE, 2.5, faint),
            (WITHIN_TOLERANCE, 8.0, 0.85),
            (OUTSIDE, 10.0, 0.85),
        ):
            chosen = drawn[status[:, a] == code]
            if len(chosen):
                ax.scatter(
                    chosen[:, 0],
                    chosen[:, 1],
                    s=size,
                    color=_COLORS[code],
                    alpha=alpha,
                    lw=0,
                    zorder=5 if code else 0.8,  # inside: above the grid, below the fill
                    rasterized=True,
                )
        title += f"  ·  {100.0 * np.mean(status[:, a] == OUTSIDE):.1f} % outside"
        extents.append(np.percentile(drawn, [0.5, 99.5], axis=0))
    _set_limits(ax, np.vstack(extents))
    ax.set_title(title)
    ax.set_axisbelow(True)
    ax.grid(True, color="0.9", lw=0.6)


def _grown(polygon: np.ndarray, distance: float) -> np.ndarray:
    """Closed ring ``(K, 2)`` of the points at ``distance`` from a polygon (radians)."""
    import shapely

    ring = shapely.Polygon(polygon).buffer(distance, quad_segs=16).exterior.coords
    return np.asarray(ring)


def _set_limits(ax: Any, extents: np.ndarray, min_span: float = 20.0, pad: float = 0.06) -> None:
    low, high = extents.min(axis=0), extents.max(axis=0)
    centre, span = 0.5 * (low + high), np.maximum(high - low, min_span) * (1.0 + 2.0 * pad)
    ax.set_xlim(centre[0] - span[0] / 2, centre[0] + span[0] / 2)
    ax.set_ylim(centre[1] - span[1] / 2, centre[1] + span[1] / 2)


def _joint_legend(mpl: Any, limits: Limits, with_poses: bool) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    regions = limits.joint_angle
    handles = [
        Patch(
            facecolor=mpl.colors.to_rgba(_COLORS["hull"], 0.14),
            edgecolor=_COLORS["hull"],
            lw=1.8,
            label="final hull",
        ),
    ]
    if np.any(regions.tolerance > 0):
        handles.append(Line2D([], [], color=_COLORS["tolerance"], lw=1.0, label="hull + tolerance"))
    if regions.exact_hulls is not None:
        handles.append(Line2D([], [], color=_COLORS["exact"], ls=":", label="exact hull"))
    if regions.rdp_hulls is not None:
        handles.append(Line2D([], [], color=_COLORS["rdp"], ls="--", label="RDP hull"))
    handles.append(Line2D([], [], color=_COLORS["box"], ls="-.", label="axis-aligned box"))
    if with_poses:
        for code, label in (
            (INSIDE, "pose inside"),
            (WITHIN_TOLERANCE, "within tolerance"),
            (OUTSIDE, "pose outside"),
        ):
            handles.append(
                Line2D([], [], ls="", marker="o", ms=5, color=_COLORS[code], label=label)
            )
    return handles


# --------------------------------------------------------------------------- intervals
def interval_figure(limits: Limits, features: Features | None = None, title: str = "") -> Any:
    """Bone-length and palm intervals with tolerances and the poses' distributions."""
    mpl = _matplotlib()
    poses = _usable(features)
    with mpl.rc_context(_STYLE):
        figure = _new_figure(INTERVALS_FIGSIZE)
        grid = figure.add_gridspec(2, 2, width_ratios=(1.25, 1.0), height_ratios=(1.0, 1.0))
        bones = figure.add_subplot(grid[:, 0])
        curvature = figure.add_subplot(grid[0, 1])
        angle = figure.add_subplot(grid[1, 1])
        if limits.length_unit == "relative":
            length, inverse = "relative to wrist→middle MCP", "1 / wrist→middle-MCP length"
        else:
            length, inverse = limits.length_unit, f"1 / {limits.length_unit}"
        panels = (
            (
                bones,
                "Bone lengths",
                limits.bone_length,
                f"length ({length})",
                1.0,
                True,
                None if poses is None else poses.bone_length,
            ),
            (
                curvature,
                "Palm curvature",
                limits.palm_curvature,
                f"curvature ({inverse})",
                1.0,
                False,
                None if poses is None else poses.palm_curvature,
            ),
            (
                angle,
                "Palm angles",
                limits.palm_angle,
                "angle between root bones (°)",
                180.0 / math.pi,
                False,
                None if poses is None else poses.palm_angle,
            ),
        )
        for ax, name, interval, label, scale, relative, values in panels:
            _interval_panel(ax, interval, scale, relative, values)
            ax.set_title(name)
            ax.set_xlabel(label)
        heading = "Interval limits" + (f" — {title}" if title else "")
        heading += f"  ·  coverage {limits.coverage:g}"
        if poses is not None:
            heading += f"  ·  {len(poses)} poses drawn"
        figure.suptitle(heading)
        figure.legend(
            handles=_interval_legend(limits, poses is not None),
            loc="outside lower center",
            ncol=4,
            frameon=False,
        )
    return figure


def _interval_panel(
    ax: Any,
    interval: Interval,
    scale: float,
    relative: bool,
    values: np.ndarray | None,
) -> None:
    """One horizontal row per item, first item at the top."""
    count = len(interval.names)
    rows = np.arange(count)
    low, high = interval.min * scale, interval.max * scale
    tolerance = interval.tolerance
    if relative:
        tol_low, tol_high = low * (1.0 - tolerance), high * (1.0 + tolerance)
    else:
        tol_low, tol_high = low - tolerance * scale, high + tolerance * scale
    extents = [tol_low, tol_high]
    notes = []
    if values is not None:
        data = np.asarray(values, dtype=np.float64) * scale
        for k in range(count):
            _distribution(ax, rows[k], data[:, k])
        outside = _interval_outside(np.asarray(values, dtype=np.float64), interval, relative)
        notes = [f"{100.0 * share:.1f} %" for share in outside.mean(axis=0)]
        extents += list(np.percentile(data, [0.5, 99.5], axis=0))
    for k in range(count):
        if tolerance[k] > 0:
            ax.plot(
                [tol_low[k], tol_high[k]],
                [rows[k], rows[k]],
                color=_COLORS["tolerance"],
                lw=1.4,
                marker="|",
                ms=9,
                zorder=3,
            )
        ax.plot(
            [low[k], high[k]],
            [rows[k], rows[k]],
            color=_COLORS["hull"],
            lw=5,
            solid_capstyle="butt",
            marker="|",
            ms=11,
            mew=2,
            zorder=4,
        )
    lo, hi = float(np.min(extents)), float(np.max(extents))
    span = max(hi - lo, 1e-9)
    ax.set_xlim(lo - 0.06 * span, hi + 0.06 * span + (0.12 * span if notes else 0.0))
    for k, text in enumerate(notes):
        ax.text(
            0.995,
            rows[k],
            text,
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=8.5,
            color=_COLORS[OUTSIDE],
        )
    if notes:
        ax.text(
            0.995,
            1.005,
            "outside",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8.5,
            color=_COLORS[OUTSIDE],
        )
    ax.set_yticks(rows, labels=list(interval.names))
    ax.set_ylim(count - 0.5, -0.5)
    ax.grid(True, axis="x", color="0.9", lw=0.6, zorder=-1)
    if count == skeleton.NUM_BONES:  # separate the fingers
        for boundary in range(4, count, 4):
            ax.axhline(boundary - 0.5, color="0.8", lw=0.8, zorder=0)


def _interval_outside(values: np.ndarray, interval: Interval, relative: bool) -> np.ndarray:
    """``(N, K)`` mask of values beyond interval + tolerance, by validate's rule (DESIGN §7)."""
    if relative:
        magnitude = relative_interval_violation(values, interval.min, interval.max)
    else:
        magnitude = interval_violation(values, interval.min, interval.max)
    return magnitude > interval.tolerance + VERDICT_EPSILON


def _distribution(ax: Any, row: float, values: np.ndarray, half_height: float = 0.42) -> None:
    """A violin-like histogram outline of ``values`` centred on ``row`` (robust to constants)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    lo, hi = np.percentile(values, [0.1, 99.9])
    if not hi - lo > 1e-6 * max(1.0, abs(lo), abs(hi)):  # (nearly) constant
        ax.plot(
            [lo, lo],
            [row - half_height, row + half_height],
            color=_COLORS["distribution"],
            lw=2,
            zorder=1,
        )
        return
    counts, edges = np.histogram(values, bins=48, range=(lo, hi))
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="same")
    width = half_height * smooth / smooth.max()
    centres = 0.5 * (edges[:-1] + edges[1:])
    ax.fill_between(
        centres, row - width, row + width, color=_COLORS["distribution"], lw=0, zorder=1
    )


def _interval_legend(limits: Limits, with_poses: bool) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D(
            [],
            [],
            color=_COLORS["hull"],
            lw=5,
            marker="|",
            ms=11,
            mew=2,
            label="interval [min, max]",
        ),
    ]
    tolerances = (limits.bone_length, limits.palm_curvature, limits.palm_angle)
    if any(np.any(i.tolerance > 0) for i in tolerances):
        handles.append(
            Line2D(
                [],
                [],
                color=_COLORS["tolerance"],
                lw=1.4,
                marker="|",
                ms=9,
                label="interval + tolerance",
            )
        )
    if with_poses:
        handles.append(Patch(color=_COLORS["distribution"], label="poses' distribution"))
    return handles


def describe_sources(paths: Sequence[str]) -> str:
    """A short title fragment naming the pose inputs."""
    if not paths:
        return ""
    names = [os.path.basename(p) for p in paths]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]} ({len(names)})"
