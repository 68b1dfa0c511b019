"""Exchange limits with the public reference implementation, Hand-BMC-pytorch.

A *Hand-BMC folder* holds seven NumPy ``.npy`` files (shapes and units as the reference's
``calculate_bmc.py`` writes them; what could and could not be verified is in
``docs/user-guide.md``):

==========================================  ==========  ========================================
file                                        shape       meaning
==========================================  ==========  ========================================
``bone_len_min.npy``, ``bone_len_max.npy``  ``(20,)``   bone lengths, relative to the wrist →
                                                        middle-MCP bone (``REF_BONE_LINK = (0,
                                                        9)``), bones in our bone order
``curvatures_min.npy``, ``curvatures_max``  ``(4,)``    palm curvature, 1 / reference length
``PHI_min.npy``, ``PHI_max.npy``            ``(4,)``    palm angles, radians
``CONVEX_HULLS.npy``                        ``(15,)``   object array of ``(M, 2)`` float arrays:
                                                        counter-clockwise hulls of (flexion,
                                                        abduction) in radians, angle id
                                                        ``5 * level + finger`` (ours)
==========================================  ==========  ========================================

The reference does not unwrap flexion: its flexion lives in (−π, π]. Export writes a hull
unchanged when its (unwrapped) flexion lies in [−π, π], and shifted by a multiple of 2π when
that brings it into [−π, π]; for such a hull the inside/outside decision of the reference
equals ours whatever our flexion centre. A hull that crosses ±π is shifted by the multiple of
2π that keeps the largest part of its area in [−π, π] and clipped to it
(:func:`bmc_calib.merge.rewrap_polygon`); a warning names the joints and the area lost.
Tolerances, boxes, exact/RDP hulls, flexion centres and provenance have no place in the
reference's files and are not written (a warning says so when a tolerance is non-zero).

Import builds a bundle with zero tolerances, coverage 1 (the reference fits min/max and plain
hulls), boxes equal to each hull's bounding box, flexion centre 0 — unless all of a hull's
flexion lies outside (−π/2, π/2]: then its data sat around ±π, the centre is put opposite the
widest empty arc of its vertex flexions and the hull is rebuilt from its vertices unwrapped
around that centre, so the region is contiguous (a hull spanning −π..π would otherwise accept
every flexion in between).

``CONVEX_HULLS.npy`` is an object array, which NumPy stores as a pickle. It is read only from a
folder the user names, and through a restricted unpickler that accepts nothing but NumPy arrays
and dtypes (no other code can run); every value is then validated.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import tempfile

import numpy as np

from bmc_calib import __version__, hulls, skeleton
from bmc_calib.errors import BadInputError, UsageError
from bmc_calib.formats import _io
from bmc_calib.limits import Interval, JointAngleLimits, Limits, Provenance, SourceRecord
from bmc_calib.merge import polygon_area, rewrap_polygon
from bmc_calib.outputs import write_failure_reason

__all__ = [
    "FORMATS",
    "HAND_BMC_FILES",
    "export_hand_bmc",
    "hand_bmc_arrays",
    "import_hand_bmc",
    "read_hand_bmc",
]

#: Interchange formats known to ``export --to`` and ``import``.
FORMATS: tuple[str, ...] = ("hand-bmc",)

#: file name → expected shape (``CONVEX_HULLS.npy``: 15 hulls)
HAND_BMC_FILES: dict[str, tuple[int, ...]] = {
    "bone_len_min.npy": (skeleton.NUM_BONES,),
    "bone_len_max.npy": (skeleton.NUM_BONES,),
    "curvatures_min.npy": (4,),
    "curvatures_max.npy": (4,),
    "PHI_min.npy": (4,),
    "PHI_max.npy": (4,),
    "CONVEX_HULLS.npy": (skeleton.NUM_ANGLES,),
}
_HULLS_FILE = "CONVEX_HULLS.npy"
#: Slack (radians) allowed on the reference's angle domains and on convexity.
_ANGLE_SLACK = 1e-6
#: Share of a hull's area that may be clipped away on export without a warning.
_AREA_SLACK = 1e-9


def check_format(name: str) -> str:
    """The interchange format ``name`` (``hand-bmc``); a :class:`UsageError` otherwise."""
    key = name.strip().lower()
    if key not in FORMATS:
        raise UsageError(f"unknown interchange format {name!r}; known: {', '.join(FORMATS)}")
    return key


# --------------------------------------------------------------------------- export
def hand_bmc_arrays(limits: Limits) -> tuple[dict[str, np.ndarray], list[str]]:
    """The seven arrays of a Hand-BMC folder for ``limits``, and warnings about what is lost.

    Raises :class:`BadInputError` when the bundle cannot be expressed at all (another skeleton,
    or lengths not relative to the reference bone).
    """
    if limits.skeleton_name != "canonical-21" or tuple(limits.joint_names) != skeleton.JOINT_NAMES:
        raise BadInputError(
            f"the reference implementation uses the canonical 21-joint skeleton; this bundle's "
            f"is {limits.skeleton_name!r}"
        )
    if limits.normalization != "reference-bone":
        raise BadInputError(
            f"the reference implementation expects bone lengths relative to the wrist→middle-MCP "
            f"bone; this bundle's normalisation is {limits.normalization!r} (refit it with "
            "--normalization reference-bone)"
        )
    arrays = {
        "bone_len_min.npy": limits.bone_length.min,
        "bone_len_max.npy": limits.bone_length.max,
        "curvatures_min.npy": limits.palm_curvature.min,
        "curvatures_max.npy": limits.palm_curvature.max,
        "PHI_min.npy": limits.palm_angle.min,
        "PHI_max.npy": limits.palm_angle.max,
    }
    arrays = {name: np.array(value, dtype=np.float64) for name, value in arrays.items()}
    polygons = np.empty(skeleton.NUM_ANGLES, dtype=object)
    rewrapped = []
    regions = limits.joint_angle
    for a, hull in enumerate(regions.hulls):
        polygon, lost = rewrap_polygon(hull)
        polygons[a] = polygon
        if lost > _AREA_SLACK:  # a pure shift by 2π is faithful: raw flexion is periodic
            rewrapped.append(
                f"{regions.names[a]} (centre {math.degrees(regions.flexion_center[a]):.1f}°, "
                f"{100.0 * lost:.1f} % of the area lost)"
            )
    arrays[_HULLS_FILE] = polygons
    warnings = []
    if rewrapped:
        warnings.append(
            "the reference does not unwrap flexion; these hulls cross ±180° and were clipped "
            "to [−180°, 180°], so the reference will flag poses in the lost part: "
            f"{', '.join(rewrapped)}"
        )
    tolerant = [
        name
        for name, interval in (
            ("bone lengths", limits.bone_length),
            ("palm curvature", limits.palm_curvature),
            ("palm angles", limits.palm_angle),
            ("joint angles", regions),
        )
        if np.any(np.asarray(interval.tolerance) > 0)
    ]
    if tolerant:
        warnings.append(
            "the reference format has no tolerances; the non-zero tolerances of "
            f"{', '.join(tolerant)} are not written, so the exported limits are stricter than "
            "what bmc-calib validate accepts"
        )
    return arrays, warnings


def export_hand_bmc(
    limits: Limits, directory: str | os.PathLike[str], *, force: bool = False
) -> list[str]:
    """Write ``limits`` as a Hand-BMC folder at ``directory``; returns the warnings.

    The files are written to a temporary folder beside ``directory`` and moved into place with
    one rename, so a failure leaves nothing half-written. An existing non-empty ``directory``
    is refused unless ``force``; even then only a folder that holds nothing but Hand-BMC files
    is replaced (a folder with other files is never deleted).
    """
    target = os.fspath(directory)
    arrays, warnings = hand_bmc_arrays(limits)
    _check_export_target(target, force)
    parent = os.path.dirname(os.path.abspath(target))
    try:  # (a folder that cannot be written refuses already here)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}.",
                                   dir=parent)  # fmt: skip
    except OSError as exc:
        raise BadInputError(f"cannot write {target}: {write_failure_reason(exc)}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a new folder gets the umask's
        for name, array in arrays.items():
            path = os.path.join(staging, name)
            with open(path, "wb") as fh:
                np.save(fh, array, allow_pickle=array.dtype.hasobject)
                fh.flush()
                os.fsync(fh.fileno())
        _publish_directory(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BadInputError(f"cannot write {target}: {write_failure_reason(exc)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return warnings


def _check_export_target(target: str, force: bool) -> None:
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise BadInputError(f"cannot write {target}: folder {parent} does not exist")
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target) or os.path.islink(target):
        raise UsageError(f"{target} exists and is not a folder; give a folder name")
    entries = sorted(os.listdir(target))
    if not entries:
        return
    if not force:
        raise UsageError(f"{target} is not empty; pass --force to replace its Hand-BMC files")
    foreign = [e for e in entries if e not in HAND_BMC_FILES]
    if foreign:
        raise UsageError(
            f"{target} holds files other than Hand-BMC files (e.g. {foreign[0]}); "
            "refusing to replace it even with --force: choose a new or empty folder"
        )


def _publish_directory(staging: str, target: str) -> None:
    """Move ``staging`` onto ``target`` (absent, empty, or holding only Hand-BMC files)."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if not os.listdir(target):
        os.rmdir(target)
        os.rename(staging, target)
        return
    backup = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}.old.",
                              dir=os.path.dirname(os.path.abspath(target)))  # fmt: skip
    os.rmdir(backup)
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


# --------------------------------------------------------------------------- import
def import_hand_bmc(directory: str | os.PathLike[str]) -> tuple[Limits, list[str]]:
    """A bundle's limits from a Hand-BMC folder, and notes about what was adapted.

    Raises :class:`BadInputError` (one line naming the file) for a missing folder or file, an
    unreadable file, or content of the wrong type, shape or range.
    """
    label = os.fspath(directory)
    arrays = read_hand_bmc(label)
    warnings: list[str] = []
    centres = np.zeros(skeleton.NUM_ANGLES)
    polygons = []
    for a, raw in enumerate(arrays[_HULLS_FILE]):
        flexion = raw[:, 0]
        polygon = raw
        if np.all((flexion <= -math.pi / 2) | (flexion > math.pi / 2)):
            centres[a] = hulls.flexion_center(flexion)
            unwrapped = hulls.unwrap_flexion(flexion, centres[a])
            if not np.array_equal(unwrapped, flexion):
                points = np.column_stack([unwrapped, raw[:, 1]])
                polygon = hulls.fit_hull(points, coverage=1.0).vertices
                warnings.append(
                    f"{label}: the {skeleton.ANGLE_NAMES[a]} hull lies around ±180° flexion; "
                    f"it was re-expressed around a flexion centre of "
                    f"{math.degrees(centres[a]):.1f}° so that it is contiguous"
                )
        polygons.append(polygon)
    zeros = np.zeros(skeleton.NUM_ANGLES)
    regions = JointAngleLimits(
        names=skeleton.ANGLE_NAMES,
        flexion_center=centres,
        hulls=polygons,
        coverage=np.ones(skeleton.NUM_ANGLES),
        area=np.array([polygon_area(p) for p in polygons]),
        tolerance=zeros,
        box_min=np.array([p.min(axis=0) for p in polygons]),
        box_max=np.array([p.max(axis=0) for p in polygons]),
    )

    def interval(stem: str, names: tuple[str, ...]) -> Interval:
        low, high = arrays[f"{stem}_min.npy"], arrays[f"{stem}_max.npy"]
        return Interval(names, low, high, np.zeros(len(names)))

    limits = Limits(
        bone_length=interval("bone_len", skeleton.BONE_NAMES),
        palm_curvature=interval("curvatures", skeleton.PALM_NAMES),
        palm_angle=interval("PHI", skeleton.PALM_NAMES),
        joint_angle=regions,
        normalization="reference-bone",
        length_unit="relative",
        coverage=1.0,
        provenance=Provenance(
            sources=[
                SourceRecord(
                    path=label,
                    format="hand-bmc",
                    sha256=_folder_sha256(label),
                    frames_read=0,
                    frames_used=0,
                    frames_mirrored=0,
                )
            ],
            parameters={
                "imported_from": "hand-bmc",
                "import_flexion_center_rule": (
                    "0, unless all of a hull's flexion lies outside (-pi/2, pi/2]: then "
                    "opposite the widest empty arc of its vertex flexions"
                ),
                "tool_version": __version__,
            },
        ),
        statistics={
            "tolerance_method": (
                "none: imported from a Hand-BMC-pytorch folder, which has no tolerances; "
                "tolerances are 0"
            ),
        },
    )
    return limits, warnings


def read_hand_bmc(directory: str) -> dict[str, np.ndarray]:
    """The validated arrays of a Hand-BMC folder (float64; hulls as a list of ``(M, 2)``).

    Hulls are returned counter-clockwise with a repeated closing vertex removed; every check
    failure raises :class:`BadInputError` naming the file.
    """
    if not os.path.isdir(directory):
        what = "no such folder" if not os.path.exists(directory) else "not a folder"
        raise BadInputError(f"{directory}: {what}; expected a Hand-BMC-pytorch folder")
    missing = [n for n in HAND_BMC_FILES if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise BadInputError(
            f"{directory}: not a Hand-BMC-pytorch folder (missing {', '.join(missing)})"
        )
    arrays: dict[str, object] = {}
    for name, shape in HAND_BMC_FILES.items():
        path = os.path.join(directory, name)
        if name == _HULLS_FILE:
            arrays[name] = _read_hulls(path)
            continue
        array = _load_npy(path)
        if array.dtype.kind not in "iuf":
            raise BadInputError(f"{path}: must hold numbers, found dtype {array.dtype}")
        if array.shape != shape:
            raise BadInputError(f"{path}: has shape {array.shape}, expected {shape}")
        array = array.astype(np.float64)
        if not np.all(np.isfinite(array)):
            raise BadInputError(f"{path}: holds NaN or infinite values")
        arrays[name] = array
    _check_intervals(directory, arrays)
    return arrays  # type: ignore[return-value]


def _check_intervals(directory: str, arrays: dict[str, object]) -> None:
    for stem in ("bone_len", "curvatures", "PHI"):
        low, high = arrays[f"{stem}_min.npy"], arrays[f"{stem}_max.npy"]
        bad = np.flatnonzero(np.asarray(low) > np.asarray(high))
        if bad.size:
            raise BadInputError(
                f"{os.path.join(directory, stem)}_min.npy: minimum above the maximum of "
                f"{stem}_max.npy at index {int(bad[0])}"
            )
    if np.any(np.asarray(arrays["bone_len_min.npy"]) <= 0):
        raise BadInputError(
            f"{os.path.join(directory, 'bone_len_min.npy')}: bone lengths must be positive"
        )
    for name in ("PHI_min.npy", "PHI_max.npy"):
        phi = np.asarray(arrays[name])
        if np.any(phi < -_ANGLE_SLACK) or np.any(phi > math.pi + _ANGLE_SLACK):
            raise BadInputError(
                f"{os.path.join(directory, name)}: palm angles must lie in [0, π] radians "
                "(degrees given?)"
            )


def _read_hulls(path: str) -> list[np.ndarray]:
    array = _load_npy(path, allow_objects=True)
    count = skeleton.NUM_ANGLES
    if array.dtype.hasobject:
        if array.shape != (count,):
            raise BadInputError(f"{path}: holds {array.shape} hulls, expected ({count},)")
        items = list(array)
    elif array.dtype.kind in "iuf" and array.ndim == 3 and array.shape[0] == count:
        items = list(array)  # all hulls with the same vertex count: saved as one array
    else:
        raise BadInputError(
            f"{path}: expected an object array of {count} (M, 2) hulls, found dtype "
            f"{array.dtype} and shape {array.shape}"
        )
    return [_check_hull(path, a, item) for a, item in enumerate(items)]


def _check_hull(path: str, a: int, item: object) -> np.ndarray:
    where = f"{path}: hull {a} ({skeleton.ANGLE_NAMES[a]})"
    if isinstance(item, np.ndarray):
        if item.dtype.kind not in "iuf":
            raise BadInputError(f"{where} must hold numbers, found dtype {item.dtype}")
        ring = item.astype(np.float64)
    elif isinstance(item, (list, tuple)):
        try:
            ring = np.array(item, dtype=np.float64)
        except (TypeError, ValueError):
            raise BadInputError(f"{where} must be an (M, 2) array of numbers") from None
    else:
        raise BadInputError(f"{where} must be an (M, 2) array, found {type(item).__name__}")
    if ring.ndim != 2 or ring.shape[1] != 2:
        raise BadInputError(f"{where} has shape {ring.shape}, expected (M, 2)")
    if not np.all(np.isfinite(ring)):
        raise BadInputError(f"{where} holds NaN or infinite values")
    ring = ring[np.any(ring != np.roll(ring, -1, axis=0), axis=1)]  # repeated vertices
    if len(ring) < 3:
        raise BadInputError(f"{where} has fewer than 3 distinct vertices")
    if np.any(np.abs(ring[:, 0]) > math.pi + _ANGLE_SLACK) or np.any(
        np.abs(ring[:, 1]) > math.pi / 2 + _ANGLE_SLACK
    ):
        raise BadInputError(
            f"{where} leaves flexion (−π, π] / abduction [−π/2, π/2] (radians expected)"
        )
    area = polygon_area(ring)
    if area < 0:
        ring = ring[::-1].copy()
    elif area == 0:
        raise BadInputError(f"{where} has zero area")
    edges = np.roll(ring, -1, axis=0) - ring
    turns = edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)
    scale = float(np.max(np.abs(edges))) ** 2
    if np.any(turns < -1e-9 * scale):
        raise BadInputError(f"{where} is not a convex polygon")
    return ring


def _folder_sha256(directory: str) -> str:
    """SHA-256 over the seven files' bytes, concatenated in the order of their sorted names."""
    digest = hashlib.sha256()
    for name in sorted(HAND_BMC_FILES):
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise BadInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


# --------------------------------------------------------------------------- safe .npy reading
def _load_npy(path: str, *, allow_objects: bool = False) -> np.ndarray:
    """Read one ``.npy`` file; object arrays only with ``allow_objects``, never running code."""
    _io.require_regular(path)
    try:
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    fh.seek(0)
                    return np.load(fh, allow_pickle=False)
                if not dtype.hasobject:
                    available = os.fstat(fh.fileno()).st_size - fh.tell()
                    _io.check_declared_size(path, "the array", shape, dtype, available)
                    fh.seek(0)
                    return np.load(fh, allow_pickle=False)
                if not allow_objects:
                    raise BadInputError(f"{path}: holds Python objects, expected numbers")
                array = _unpickle_numpy_only(fh)
            except (ValueError, EOFError, pickle.UnpicklingError, TypeError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise BadInputError(f"{path}: not a readable .npy file ({reason})") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise BadInputError(f"{path}: malformed object array (header says shape {shape})")
    return array  # a pickled array carries its own memory order


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, dtypes and scalars; refuses every other global."""

    _allowed = _allowed_globals()

    def __init__(self, fh: object) -> None:
        super().__init__(fh, fix_imports=True, encoding="latin1")  # type: ignore[arg-type]

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy arrays are accepted"
            ) from None


def _unpickle_numpy_only(fh: object) -> object:
    """Load one pickle with :class:`_NumpyOnlyUnpickler`; any failure is an UnpicklingError."""
    try:
        return _NumpyOnlyUnpickler(fh).load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # malformed pickles raise all kinds of errors
        raise pickle.UnpicklingError(f"malformed pickle ({type(exc).__name__})") from None
