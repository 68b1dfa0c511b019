"""In-memory form of a limits bundle: what fit produces, what bundle writes and reads, what
validate and the torch loss consume.

Units: angles in radians; bone lengths in the bundle's length unit, palm curvature in 1 / that unit
(``"relative"`` = fractions of the wrist→middle-MCP reference bone under the default
``reference-bone`` normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bmc_calib import skeleton

#: Fit parameters and statistics values are flat: scalars, strings or 1-D arrays.
Scalar = str | int | float | bool
Value = Scalar | np.ndarray


@dataclass
class Interval:
    """Per-item intervals of one constraint family, each array of shape (K,)."""

    names: tuple[str, ...]
    min: np.ndarray
    max: np.ndarray
    tolerance: np.ndarray
    #: bone lengths only (optional, bundle 1.1): how far (relative, 0.1 = 10 %) one pose's
    #: value strays from its own hand's median at the fit's coverage; validate's personal
    #: check allows at least this
    within_person: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.min = np.asarray(self.min, dtype=np.float64)
        self.max = np.asarray(self.max, dtype=np.float64)
        self.tolerance = np.asarray(self.tolerance, dtype=np.float64)
        if self.within_person is not None:
            self.within_person = np.asarray(self.within_person, dtype=np.float64)
        k = len(self.names)
        arrays = [self.min, self.max, self.tolerance]
        if self.within_person is not None:
            arrays.append(self.within_person)
        for arr in arrays:
            if arr.shape != (k,):
                raise ValueError(f"interval arrays must have shape ({k},), got {arr.shape}")


@dataclass
class JointAngleLimits:
    """Per-angle-id flexion/abduction regions (15 of them, ids ``5 * level + finger``).

    ``hulls[a]`` is a ``(V_a, 2)`` counter-clockwise polygon in the (unwrapped flexion,
    abduction) plane, ``V_a >= 3``; flexion is unwrapped into
    ``(flexion_center[a] - pi, flexion_center[a] + pi]`` before any comparison.
    ``exact_hulls`` / ``rdp_hulls`` are the pipeline's intermediate polygons (optional,
    kept for plotting). ``box_min`` / ``box_max`` ``(15, 2)`` are the axis-aligned limits of
    the independent-limits variant. ``coverage``, ``area`` and ``tolerance`` are ``(15,)``.
    """

    names: tuple[str, ...]
    flexion_center: np.ndarray
    hulls: list[np.ndarray]
    coverage: np.ndarray
    area: np.ndarray
    tolerance: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    exact_hulls: list[np.ndarray] | None = None
    rdp_hulls: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.flexion_center = np.asarray(self.flexion_center, dtype=np.float64)
        self.hulls = [np.asarray(h, dtype=np.float64) for h in self.hulls]
        for name in ("coverage", "area", "tolerance", "box_min", "box_max"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if len(self.hulls) != len(self.names):
            raise ValueError("one hull per angle id is required")
        for h in self.hulls:
            if h.ndim != 2 or h.shape[1] != 2 or h.shape[0] < 3:
                raise ValueError(f"a hull must be (V>=3, 2), got {h.shape}")


@dataclass
class SourceRecord:
    """Provenance of one input file."""

    path: str
    format: str
    sha256: str
    frames_read: int
    frames_used: int
    frames_mirrored: int
    #: frames rejected per rule name (e.g. ``degenerate``, ``bone_length_outlier``)
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class Provenance:
    """Where the limits came from: the inputs and every fit parameter."""

    sources: list[SourceRecord] = field(default_factory=list)
    parameters: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class Limits:
    """Everything a bundle holds."""

    bone_length: Interval
    palm_curvature: Interval
    palm_angle: Interval
    joint_angle: JointAngleLimits
    normalization: str = "reference-bone"
    length_unit: str = "relative"
    angle_unit: str = "rad"
    coverage: float = 0.999
    skeleton_name: str = "canonical-21"
    joint_names: tuple[str, ...] = skeleton.JOINT_NAMES
    parents: tuple[int, ...] = skeleton.PARENTS
    provenance: Provenance = field(default_factory=Provenance)
    #: fit and held-out figures; flat mapping of name → scalar or 1-D array
    statistics: dict[str, Value] = field(default_factory=dict)
    #: set by fit, never stored: the most scratch disk space the fit used (bytes), removed
    #: when it ended (see bmc_calib.fit)
    scratch_bytes: int = 0
    #: filled by the bundle reader: tool version, creation time, digest status
    tool_name: str = "bmc-calib"
    tool_version: str = ""
    created: str = ""
