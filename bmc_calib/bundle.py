"""The versioned HDF5 limits bundle: atomic writing, reading, and content verification.

The normative format is ``docs/bundle-format.md``; this module is its reference implementation.

Units inside a bundle: angles (palm angles, flexion/abduction, hull vertices, flexion centres,
joint-angle tolerances) in radians (root attribute ``angle-unit = "rad"``); bone lengths in the
root attribute ``length-unit`` (``"relative"`` = fractions of the wrist→middle-MCP reference
bone under the default ``reference-bone`` normalisation); palm curvature in 1 / length-unit;
bone-length tolerances are relative (0.2 = 20 %); hull areas in rad²; coverages are fractions.

Public API: :func:`write_bundle`, :func:`read_bundle`, :func:`inspect_bundle`,
:func:`content_digest`, :class:`BundleInfo`. Every failure is a :class:`~bmc_calib.BMCError`
subclass with a one-line message that names the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import h5py
import numpy as np

from bmc_calib import __version__, skeleton
from bmc_calib.errors import BadInputError, UnsupportedVersionError
from bmc_calib.limits import (
    Interval,
    JointAngleLimits,
    Limits,
    Provenance,
    Scalar,
    SourceRecord,
    Value,
)
from bmc_calib.outputs import atomic_path, check_writable

ENCODING_TYPE = "bmc-limits"
ENCODING_VERSION = "1.2"  # MAJOR.MINOR (1.1: bone_length/within_person; 1.2: attribute digest)
#: The first minor version of major 1 whose bundles MUST carry ``/attribute_digest``.
ATTRIBUTE_DIGEST_SINCE_MINOR = 2
SUPPORTED_MAJOR = 1
TOOL_NAME = "bmc-calib"

#: Encoding of every element group written by this version.
ELEMENT_VERSION = "1.0"
SKELETON_TYPE = "bmc-skeleton"
INTERVAL_TYPE = "bmc-interval"
PALM_TYPE = "bmc-palm"
JOINT_ANGLE_TYPE = "bmc-joint-angle-regions"
PROVENANCE_TYPE = "bmc-provenance"
STATISTICS_TYPE = "bmc-statistics"

ATTR_TYPE = "encoding-type"
ATTR_VERSION = "encoding-version"
ATTR_TOOL_NAME = "tool-name"
ATTR_TOOL_VERSION = "tool-version"
ATTR_CREATED = "created"
ATTR_SKELETON = "skeleton"
ATTR_NORMALIZATION = "normalization"
ATTR_LENGTH_UNIT = "length-unit"
ATTR_ANGLE_UNIT = "angle-unit"
ATTR_COVERAGE = "coverage"
ATTR_DIGEST = "content-digest"
DIGEST_PREFIX = "sha256:"
#: Root dataset (1.2) holding the digest over the meaning-bearing attributes; as a dataset
#: it is covered by the content digest, so removing it is detected too.
ATTRIBUTE_DIGEST = "attribute_digest"
#: Root attributes outside the attribute digest: they do not change what the limits mean.
_UNDIGESTED_ROOT_ATTRS = frozenset({ATTR_TOOL_NAME, ATTR_TOOL_VERSION, ATTR_CREATED, ATTR_DIGEST})

#: What a reader accepts in the root attributes that change how the limits are applied.
SKELETONS = ("canonical-21",)
NORMALIZATIONS = ("reference-bone", "none")
ANGLE_UNITS = ("rad",)
#: Length units of a ``none``-normalised bundle (``fit`` records the inputs' unit).
LENGTH_UNITS = ("mm", "cm", "m", "unknown")
#: Longest variable-length string a bundle may hold (bytes); longer ones are refused unread.
MAX_STRING_BYTES = 1 << 16
#: Most bytes of variable-length strings in one dataset.
MAX_STRING_DATASET_BYTES = 1 << 24

#: ``provenance/rejected`` value of a rule that was not applied to a source.
RULE_NOT_APPLIED = -1

_STR = h5py.string_dtype()  # variable-length UTF-8
_VERSION_PATTERN = re.compile(r"([0-9]+)\.([0-9]+)")  # ASCII digits only
_MAX_GROUP_DEPTH = 32
_ELEMENT_ATTRS = frozenset({ATTR_TYPE, ATTR_VERSION})
_ROOT_ATTRS = frozenset(
    {
        ATTR_TYPE,
        ATTR_VERSION,
        ATTR_TOOL_NAME,
        ATTR_TOOL_VERSION,
        ATTR_CREATED,
        ATTR_SKELETON,
        ATTR_NORMALIZATION,
        ATTR_LENGTH_UNIT,
        ATTR_ANGLE_UNIT,
        ATTR_COVERAGE,
        ATTR_DIGEST,
    }
)
_ROOT_MEMBERS = frozenset(
    {"skeleton", "bone_length", "palm", "joint_angle", "provenance", "statistics"}
    | {ATTRIBUTE_DIGEST}
)
_INTERVAL_MEMBERS = frozenset({"names", "min", "max", "tolerance", "within_person"})
_HULL_PREFIXES = ("", "exact_", "rdp_")
_JOINT_ANGLE_MEMBERS = frozenset(
    {"names", "flexion_center", "coverage", "area", "tolerance", "box_min", "box_max"}
    | {f"{p}hull_{part}" for p in _HULL_PREFIXES for part in ("vertices", "offsets")}
)
_SOURCE_STRINGS = ("path", "format", "sha256")
_SOURCE_COUNTS = ("frames_read", "frames_used", "frames_mirrored")
_PROVENANCE_MEMBERS = frozenset(
    {*_SOURCE_STRINGS, *_SOURCE_COUNTS, "rejected", "rejected_rules", "parameters"}
)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass
class BundleInfo:
    """What :func:`inspect_bundle` found besides the limits themselves.

    ``digest_stored`` is ``None`` when the file has no ``content-digest`` attribute;
    ``attribute_digest_stored`` is ``None`` when it has no ``/attribute_digest`` dataset
    (bundles before 1.2). ``digest_ok`` is true when the content digest matches and so does
    the attribute digest (required from 1.2 on, checked whenever present). ``unknown`` lists
    groups, datasets (``/path``) and attributes (``/path@name``) that this reader does not
    know (written by a newer minor version) and therefore ignored.
    """

    path: str
    encoding_version: str
    tool_name: str
    tool_version: str
    created: str
    digest_stored: str | None
    digest_computed: str
    digest_ok: bool
    encoding_type: str = ENCODING_TYPE
    size_bytes: int = 0
    unknown: tuple[str, ...] = ()
    attribute_digest_stored: str | None = None
    attribute_digest_computed: str = ""
    attribute_digest_required: bool = False

    @property
    def content_digest_ok(self) -> bool:
        return self.digest_stored is not None and self.digest_stored.lower() == self.digest_computed

    @property
    def attribute_digest_ok(self) -> bool:
        """True when the attribute digest matches, or is absent where it may be (< 1.2)."""
        stored = self.attribute_digest_stored
        if stored is None:
            return not self.attribute_digest_required
        return stored.lower() == self.attribute_digest_computed

    def problem(self) -> str | None:
        """One line (naming the file) saying why verification failed; ``None`` when it passed."""
        return None if self.digest_ok else _digest_failure(self)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready mapping with snake_case keys."""
        info = asdict(self)
        info["unknown"] = list(self.unknown)
        info["content_digest_ok"] = self.content_digest_ok
        info["attribute_digest_ok"] = self.attribute_digest_ok
        return info


def write_bundle(limits: Limits, path: str | os.PathLike[str], *, force: bool = False) -> str:
    """Write ``limits`` to ``path`` atomically and return the stored content digest.

    The digest is returned as stored, ``"sha256:<64 lowercase hex digits>"``. The bundle is
    written to a temporary file in the target directory, fsynced and renamed into place; on
    any failure the temporary file is removed and an existing target is left untouched.
    ``tool_name``, ``tool_version`` and ``created`` of ``limits`` are ignored: this tool and
    the current UTC time are recorded.

    Raises :class:`UsageError` when ``path`` exists and ``force`` is false (or is a directory),
    :class:`BadInputError` when the directory does not exist, cannot be written, or
    ``limits`` holds values a bundle cannot store (non-finite limits, unsupported types).
    """
    target = check_writable(path, force)
    try:
        plan = _plan_limits(limits)
    except _InvalidContentError as exc:
        raise BadInputError(f"cannot write {target}: {exc}") from None
    with atomic_path(target, force=force) as temporary:
        return _write_plan(plan, _root_attributes(limits), temporary)


def read_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Limits:
    """Read a bundle; with ``verify`` a content-digest mismatch raises :class:`BadInputError`.

    Raises :class:`BadInputError` for a missing, unreadable, non-bundle or malformed file and
    :class:`UnsupportedVersionError` for a bundle of another major version.
    """
    limits, info = inspect_bundle(path)
    if verify and not info.digest_ok:
        raise BadInputError(_digest_failure(info))
    return limits


def inspect_bundle(path: str | os.PathLike[str]) -> tuple[Limits, BundleInfo]:
    """Read a bundle and report its metadata; a bad digest is reported, not raised.

    Structure and meaning are always checked (:func:`check_limits`): a bundle that would
    make a consumer fail or misapply the limits raises :class:`BadInputError`.
    """
    label = os.fspath(path)
    with _open_bundle(label) as h5file:
        encoding_version = _check_encoding(h5file, label)
        reader = _Reader(h5file, label)
        limits = reader.limits()
        stored = _optional_text(h5file, ATTR_DIGEST, label)
        attribute_stored = reader.attribute_digest()
        attribute_computed = _attribute_digest(h5file, label)
        computed = _file_digest(h5file, label)
    info = BundleInfo(
        path=label,
        encoding_version=encoding_version,
        tool_name=limits.tool_name,
        tool_version=limits.tool_version,
        created=limits.created,
        digest_stored=stored,
        digest_computed=computed,
        digest_ok=False,
        size_bytes=os.path.getsize(label),
        unknown=tuple(reader.unknown),
        attribute_digest_stored=attribute_stored,
        attribute_digest_computed=attribute_computed,
        attribute_digest_required=_minor_version(encoding_version) >= ATTRIBUTE_DIGEST_SINCE_MINOR,
    )
    info.digest_ok = info.content_digest_ok and info.attribute_digest_ok
    return limits, info


def check_limits(limits: Limits, label: str = "limits") -> None:
    """Refuse limits that no consumer can apply correctly (one line naming ``label``).

    The one structural check shared by every consumer: :func:`read_bundle` (and thus
    ``validate``, ``merge``, ``inspect``, :class:`bmc_calib.torch.BMCLoss`) and the writer.
    Raises :class:`BadInputError`.
    """
    problem = _limits_problem(limits)
    if problem is not None:
        raise BadInputError(f"{label}: {problem}; the bundle is corrupt or not usable")


def content_digest(h5file_or_path: h5py.Group | str | os.PathLike[str]) -> str:
    """Content digest ``"sha256:<hex>"`` of a whole HDF5 file (docs/bundle-format.md §5).

    Accepts an open :class:`h5py.File` (or any group of it: the whole file is digested) or a
    path. Attributes are not part of the digest.
    """
    return _digest_of(h5file_or_path, _file_digest)


def attribute_digest(h5file_or_path: h5py.Group | str | os.PathLike[str]) -> str:
    """Attribute digest ``"sha256:<hex>"`` of a whole HDF5 file (docs/bundle-format.md §5.2).

    The digest over every attribute except the root's ``tool-name``, ``tool-version``,
    ``created`` and ``content-digest``; stored by 1.2 writers as the ``/attribute_digest``
    dataset.
    """
    return _digest_of(h5file_or_path, _attribute_digest)


def _digest_of(
    h5file_or_path: h5py.Group | str | os.PathLike[str],
    digest: Callable[[h5py.File, str], str],
) -> str:
    """``digest(file, label)`` of an open file (via any of its groups) or of a path."""
    if isinstance(h5file_or_path, h5py.Group):
        h5file = h5file_or_path.file
        return digest(h5file, h5file.filename)
    label = os.fspath(h5file_or_path)
    with _open_bundle(label) as h5file:
        return digest(h5file, label)


# --------------------------------------------------------------------------------------------
# Content digest
# --------------------------------------------------------------------------------------------


def _file_digest(h5file: h5py.File, label: str) -> str:
    records = sorted(_datasets(h5file, "", label, depth=0), key=lambda item: item[0].encode())
    digest = hashlib.sha256()
    for path, dataset in records:
        digest.update(_dataset_record(path, dataset, label))
    return DIGEST_PREFIX + digest.hexdigest()


def _datasets(
    group: h5py.Group, prefix: str, label: str, depth: int
) -> Iterator[tuple[str, h5py.Dataset]]:
    """Yield ``(full path, dataset)`` for every dataset below ``group`` (hard links only)."""
    for path, member in _members(group, prefix, label, depth):
        if isinstance(member, h5py.Dataset):
            yield path, member


def _members(
    group: h5py.Group, prefix: str, label: str, depth: int
) -> Iterator[tuple[str, h5py.Group | h5py.Dataset]]:
    """Yield ``(full path, object)`` for every group and dataset below ``group``."""
    if depth > _MAX_GROUP_DEPTH:
        raise BadInputError(f"{label}: groups nested deeper than {_MAX_GROUP_DEPTH} at {prefix}")
    for name in group:
        path = f"{prefix}/{name}"
        if not isinstance(group.get(name, getlink=True), h5py.HardLink):
            raise BadInputError(
                f"{label}: {path} is a link; a bundle holds only groups and datasets"
            )
        member = group[name]
        if isinstance(member, h5py.Dataset):
            yield path, member
        elif isinstance(member, h5py.Group):
            yield path, member
            yield from _members(member, path, label, depth + 1)


def _dataset_record(path: str, dataset: h5py.Dataset, label: str) -> bytes:
    """``path NUL dtype-token NUL shape NUL payload`` of one dataset."""
    if dataset.shape is None:
        raise BadInputError(f"{label}: dataset {path} has an empty (null) dataspace")
    shape = ",".join(str(n) for n in dataset.shape)
    if h5py.check_string_dtype(dataset.dtype) is not None:
        token, payload = "str", _string_payload(dataset, label)
    elif dataset.dtype.kind in "biuf":
        little_endian = dataset.dtype.newbyteorder("<")
        token = little_endian.str
        payload = np.asarray(dataset[()], dtype=little_endian).tobytes(order="C")
    else:
        raise BadInputError(
            f"{label}: dataset {path} has data type {dataset.dtype}; a bundle holds only "
            "numeric and string datasets"
        )
    header = b"\0".join(part.encode("utf-8") for part in (path, token, shape))
    return header + b"\0" + payload


def _string_payload(dataset: h5py.Dataset, label: str) -> bytes:
    values = _read_strings(dataset, label).reshape(-1)
    return b"".join(value.encode("utf-8") + b"\0" for value in values)


def _attribute_digest(h5file: h5py.File, label: str) -> str:
    """SHA-256 over every attribute but the root's undigested ones (bundle-format.md §5.2)."""
    owners: list[tuple[str, h5py.Group | h5py.Dataset]] = [("/", h5file)]
    owners.extend(_members(h5file, "", label, depth=0))
    records = []
    for path, owner in owners:
        for name in owner.attrs:
            if path == "/" and name in _UNDIGESTED_ROOT_ATTRS:
                continue
            records.append((f"{path}\0{name}".encode(), path, owner, name))
    records.sort(key=lambda item: item[0])
    digest = hashlib.sha256()
    for key, path, owner, name in records:
        digest.update(key + b"\0" + _attribute_record(owner, name, f"{path}@{name}", label))
    return DIGEST_PREFIX + digest.hexdigest()


def _attribute_record(owner: h5py.HLObject, name: str, where: str, label: str) -> bytes:
    """``dtype-token NUL shape NUL payload`` of one attribute (as for datasets, §5)."""
    attr = owner.attrs.get_id(name)
    if attr.shape is None:
        raise BadInputError(f"{label}: attribute {where} has an empty (null) dataspace")
    shape = ",".join(str(n) for n in attr.shape)
    dtype = attr.dtype
    if h5py.check_string_dtype(dtype) is not None:
        values = np.asarray(_attribute_value(owner, name, where, label), dtype=object)
        texts = [_as_text(v, where, label) for v in values.reshape(-1)]
        token, payload = "str", b"".join(t.encode("utf-8") + b"\0" for t in texts)
    elif dtype.kind in "biuf":
        little_endian = dtype.newbyteorder("<")
        token = little_endian.str
        value = _attribute_value(owner, name, where, label)
        payload = np.asarray(value, dtype=little_endian).tobytes(order="C")
    else:
        raise BadInputError(
            f"{label}: attribute {where} has data type {dtype}; a bundle's attributes are "
            "numbers or strings"
        )
    return f"{token}\0{shape}\0".encode() + payload


def _attribute_value(owner: h5py.HLObject, name: str, where: str, label: str) -> object:
    try:
        return owner.attrs[name]
    except (TypeError, UnicodeDecodeError, OSError) as exc:
        raise BadInputError(f"{label}: cannot read attribute {where} ({_reason(exc)})") from None


def _as_text(value: object, where: str, label: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadInputError(f"{label}: attribute {where} is not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise BadInputError(f"{label}: attribute {where} must be a string")


# --------------------------------------------------------------------------------------------
# Bounded reads of variable-length strings
# --------------------------------------------------------------------------------------------

#: Signature and header size (signature, version, 3 reserved bytes, collection size) of an
#: HDF5 global heap collection, where variable-length strings live.
_HEAP_SIGNATURE = b"GCOL"
_MAX_STRING_ELEMENTS = 1 << 20


def _read_strings(dataset: h5py.Dataset, label: str) -> np.ndarray:
    """A string dataset's values as an object array, refused unread when it is implausible.

    Every element's declared length is checked against :data:`MAX_STRING_BYTES` (and the
    dataset's total against :data:`MAX_STRING_DATASET_BYTES`) from the raw storage before
    HDF5 reads a byte of the strings themselves: a corrupt length would make it allocate and
    stream gigabytes.
    """
    _check_string_storage(dataset, label)
    try:
        values = dataset.asstr()[()]
    except (TypeError, UnicodeDecodeError) as exc:  # e.g. "Unknown string encoding"
        raise BadInputError(
            f"{label}: cannot read strings of dataset {dataset.name} ({_reason(exc)})"
        ) from None
    array = np.empty(np.shape(values), dtype=object)
    array[...] = values
    return array


def _check_string_storage(dataset: h5py.Dataset, label: str) -> None:
    if dataset.shape is None:
        raise BadInputError(f"{label}: dataset {dataset.name} has an empty (null) dataspace")
    count = int(np.prod(dataset.shape, dtype=np.int64))
    if count > _MAX_STRING_ELEMENTS:
        raise BadInputError(
            f"{label}: string dataset {dataset.name} claims {count} elements; a bundle holds "
            f"at most {_MAX_STRING_ELEMENTS}"
        )
    if h5py.check_string_dtype(dataset.dtype).length is not None:
        return  # fixed-length strings: the size is in the type, nothing variable to bound
    lengths = _vlen_lengths(dataset, count, label)
    if lengths is None:
        return
    name = dataset.name
    if lengths.size and int(lengths.max()) > MAX_STRING_BYTES:
        raise BadInputError(
            f"{label}: dataset {name} claims a string of {int(lengths.max())} bytes (at most "
            f"{MAX_STRING_BYTES} allowed); the bundle is corrupt"
        )
    if int(lengths.sum()) > MAX_STRING_DATASET_BYTES:
        raise BadInputError(
            f"{label}: dataset {name} claims {int(lengths.sum())} bytes of strings (at most "
            f"{MAX_STRING_DATASET_BYTES} allowed); the bundle is corrupt"
        )


def _vlen_lengths(dataset: h5py.Dataset, count: int, label: str) -> np.ndarray | None:
    """Declared byte lengths of a contiguous variable-length dataset, read from the file.

    On disk each element is a 4-byte length followed by a global heap id (an address and a
    4-byte index). ``None`` when the storage is not contiguous (compact or chunked): then the
    heap check made when the file was opened is the bound.
    """
    dsid = dataset.id
    offset = dsid.get_offset()
    if offset is None or dsid.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
        return None
    sizeof_addr, _ = dataset.file.id.get_create_plist().get_sizes()
    element = 8 + sizeof_addr
    storage = dsid.get_storage_size()
    if storage != count * element:
        raise BadInputError(
            f"{label}: string dataset {dataset.name} stores {storage} bytes for {count} "
            "elements; the bundle is corrupt"
        )
    if storage == 0:
        return np.zeros(0, dtype=np.int64)
    if dataset.file.driver == "core":  # a bundle being written (:func:`_write_plan`)
        raw = dataset.file.id.get_file_image()[offset : offset + storage]
    else:
        with open(label, "rb") as handle:
            handle.seek(offset)
            raw = handle.read(storage)
    if len(raw) != storage:
        raise BadInputError(f"{label}: dataset {dataset.name} lies beyond the end of the file")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(count, element)
    return records[:, :4].copy().view("<u4").reshape(count).astype(np.int64)


def _check_global_heaps(label: str) -> None:
    """Refuse a file whose global heap collections HDF5 could not parse in bounded time.

    Every collection (signature ``GCOL``, version 1) found in the file is walked as HDF5
    walks it: each object must fit in the collection and the walk must advance, else HDF5
    may loop forever on the file. Bytes that merely spell ``GCOL`` without the version and
    reserved bytes of a header are not a collection and are ignored.
    """
    size = os.path.getsize(label)
    if size == 0:
        return
    with open(label, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
        start = m.find(_HEAP_SIGNATURE)
        while start >= 0:
            problem = _heap_problem(m, start, size)
            if problem is not None:
                raise BadInputError(
                    f"{label}: corrupt global heap at byte {start} ({problem}); the bundle is "
                    "corrupt"
                )
            start = m.find(_HEAP_SIGNATURE, start + 1)


def _heap_problem(data: mmap.mmap, start: int, size: int) -> str | None:
    """Why the collection at ``start`` would not parse; ``None`` when it would (or is none)."""
    header = 16  # signature 4, version 1, reserved 3, collection size 8 (8-byte lengths)
    if start + header > size or data[start + 4 : start + 8] != b"\x01\x00\x00\x00":
        return None
    end = start + int.from_bytes(data[start + 8 : start + 16], "little")
    if end - start < header or end > size:
        return f"collection size {end - start} does not fit in the file"
    position = start + header
    while position + 16 <= end:  # object: index 2, refcount 2, reserved 4, size 8, data
        index = int.from_bytes(data[position : position + 2], "little")
        length = int.from_bytes(data[position + 8 : position + 16], "little")
        need = length if index == 0 else 16 + ((length + 7) // 8) * 8
        if need < 16 or position + need > end:
            return f"object {index} of {length} bytes does not fit in the collection"
        position += need
    return None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _InvalidContentError(ValueError):
    """``Limits`` holds something a bundle cannot store."""


@dataclass
class _Plan:
    """Everything to write below the root: groups with their attributes, then datasets."""

    groups: dict[str, dict[str, object]] = field(default_factory=dict)
    datasets: dict[str, np.ndarray] = field(default_factory=dict)

    def element(self, path: str, encoding_type: str) -> None:
        self.groups[path] = {ATTR_TYPE: encoding_type, ATTR_VERSION: ELEMENT_VERSION}


def _write_plan(plan: _Plan, root_attributes: dict[str, object], temporary: str) -> str:
    """Write the bundle into ``temporary`` and return its content digest.

    The file is built in memory (HDF5's core driver) and its image written with plain file
    I/O: a failed write (a full disk) is then one ``OSError``, where HDF5 writing to disk
    itself reported it as a cascade of errors and crashed the interpreter on closing the file.
    Bundles are small (kilobytes to a few megabytes)."""
    with h5py.File(temporary, "w", driver="core", backing_store=False, track_order=True) as h5file:
        _set_attributes(h5file, root_attributes)
        for path, attributes in plan.groups.items():
            _set_attributes(h5file.create_group(path, track_order=True), attributes)
        for path, array in plan.datasets.items():
            dtype = _STR if array.dtype == object else array.dtype
            h5file.create_dataset(path, data=array, dtype=dtype)
        h5file.flush()
        h5file.create_dataset(
            ATTRIBUTE_DIGEST, data=_attribute_digest(h5file, temporary), dtype=_STR
        )
        digest = _file_digest(h5file, temporary)
        _set_attributes(h5file, {ATTR_DIGEST: digest})
        h5file.flush()
        image = h5file.id.get_file_image()
    with open(temporary, "wb") as handle:
        handle.write(image)
    return digest


def _set_attributes(obj: h5py.Group, attributes: Mapping[str, object]) -> None:
    for name, value in attributes.items():
        if isinstance(value, str):
            obj.attrs.create(name, value, dtype=_STR)
        else:
            obj.attrs[name] = value


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _root_attributes(limits: Limits) -> dict[str, object]:
    return {
        ATTR_TYPE: ENCODING_TYPE,
        ATTR_VERSION: ENCODING_VERSION,
        ATTR_TOOL_NAME: TOOL_NAME,
        ATTR_TOOL_VERSION: __version__,
        ATTR_CREATED: _utc_now(),
        ATTR_SKELETON: limits.skeleton_name,
        ATTR_NORMALIZATION: limits.normalization,
        ATTR_LENGTH_UNIT: limits.length_unit,
        ATTR_ANGLE_UNIT: limits.angle_unit,
        ATTR_COVERAGE: np.float64(limits.coverage),
    }


def _plan_limits(limits: Limits) -> _Plan:
    for name in ("skeleton_name", "normalization", "length_unit", "angle_unit"):
        if not isinstance(getattr(limits, name), str):
            raise _InvalidContentError(f"{name} must be a string")
    if not _valid_coverage(limits.coverage):
        raise _InvalidContentError(f"coverage must be in (0, 1], got {limits.coverage!r}")
    bad = _nonfinite_fields(limits)
    if bad:
        raise _InvalidContentError(f"non-finite values in {', '.join(bad)}")
    problem = _limits_problem(limits)
    if problem is not None:
        raise _InvalidContentError(problem)
    plan = _Plan()
    _plan_skeleton(plan, limits.joint_names, limits.parents)
    _plan_interval(plan, "bone_length", limits.bone_length)
    plan.element("palm", PALM_TYPE)
    _plan_interval(plan, "palm/curvature", limits.palm_curvature)
    _plan_interval(plan, "palm/angle", limits.palm_angle)
    _plan_joint_angle(plan, limits.joint_angle)
    _plan_provenance(plan, limits.provenance)
    _plan_statistics(plan, limits.statistics)
    return plan


def _valid_coverage(coverage: object) -> bool:
    if isinstance(coverage, (bool, np.bool_)) or not isinstance(coverage, (int, float, np.number)):
        return False
    return 0.0 < float(coverage) <= 1.0


def _strings(values: Sequence[str], what: str) -> np.ndarray:
    if not all(isinstance(v, str) for v in values):
        raise _InvalidContentError(f"{what} must hold strings only")
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _floats(values: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise _InvalidContentError(f"{what} must have shape {shape}, got {array.shape}")
    return array


def _counts(values: Sequence[object], what: str) -> np.ndarray:
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise _InvalidContentError(f"{what} must hold integers")
    array = np.asarray([int(v) for v in values], dtype=np.int64).reshape(len(values))
    if np.any(array < 0):
        raise _InvalidContentError(f"{what} must not be negative")
    return array


def _plan_skeleton(plan: _Plan, joint_names: Sequence[str], parents: Sequence[int]) -> None:
    if len(joint_names) != len(parents):
        raise _InvalidContentError("joint_names and parents must have the same length")
    plan.element("skeleton", SKELETON_TYPE)
    plan.datasets["skeleton/joint_names"] = _strings(joint_names, "joint_names")
    plan.datasets["skeleton/parents"] = np.asarray(parents, dtype=np.int64).reshape(len(parents))


def _plan_interval(plan: _Plan, path: str, interval: Interval) -> None:
    count = (len(interval.names),)
    plan.element(path, INTERVAL_TYPE)
    plan.datasets[f"{path}/names"] = _strings(interval.names, f"{path}/names")
    for name in ("min", "max", "tolerance"):
        plan.datasets[f"{path}/{name}"] = _floats(getattr(interval, name), count, f"{path}/{name}")
    if interval.within_person is not None:
        plan.datasets[f"{path}/within_person"] = _floats(
            interval.within_person, count, f"{path}/within_person"
        )


def _plan_joint_angle(plan: _Plan, regions: JointAngleLimits) -> None:
    count = len(regions.names)
    plan.element("joint_angle", JOINT_ANGLE_TYPE)
    plan.datasets["joint_angle/names"] = _strings(regions.names, "joint_angle/names")
    for name in ("flexion_center", "coverage", "area", "tolerance"):
        plan.datasets[f"joint_angle/{name}"] = _floats(
            getattr(regions, name), (count,), f"joint_angle/{name}"
        )
    for name in ("box_min", "box_max"):
        plan.datasets[f"joint_angle/{name}"] = _floats(
            getattr(regions, name), (count, 2), f"joint_angle/{name}"
        )
    hull_lists = (regions.hulls, regions.exact_hulls, regions.rdp_hulls)
    for prefix, hulls in zip(_HULL_PREFIXES, hull_lists, strict=True):
        if hulls is not None:
            vertices, offsets = _concatenate_hulls(hulls, count, f"joint_angle/{prefix}hulls")
            plan.datasets[f"joint_angle/{prefix}hull_vertices"] = vertices
            plan.datasets[f"joint_angle/{prefix}hull_offsets"] = offsets


def _concatenate_hulls(
    hulls: Sequence[np.ndarray], count: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(V, 2)`` vertices of all hulls and ``(count + 1,)`` offsets into them."""
    if len(hulls) != count:
        raise _InvalidContentError(f"{what} must hold {count} hulls, got {len(hulls)}")
    arrays = [np.asarray(h, dtype=np.float64) for h in hulls]
    for array in arrays:
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 3:
            raise _InvalidContentError(f"each of {what} must be (V>=3, 2), got {array.shape}")
    offsets = np.zeros(count + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    return np.concatenate(arrays, axis=0), offsets


def _plan_provenance(plan: _Plan, provenance: Provenance) -> None:
    sources = provenance.sources
    plan.element("provenance", PROVENANCE_TYPE)
    for name in _SOURCE_STRINGS:
        values = [getattr(s, name) for s in sources]
        plan.datasets[f"provenance/{name}"] = _strings(values, f"provenance source {name}")
    for name in _SOURCE_COUNTS:
        values = [getattr(s, name) for s in sources]
        plan.datasets[f"provenance/{name}"] = _counts(values, f"provenance source {name}")
    rules, rejected = _rejected_matrix(sources)
    plan.datasets["provenance/rejected"] = rejected
    plan.datasets["provenance/rejected_rules"] = _strings(rules, "rejected rule names")
    plan.groups["provenance/parameters"] = {
        key: _parameter_value(key, value) for key, value in provenance.parameters.items()
    }


def _rejected_matrix(sources: Sequence[SourceRecord]) -> tuple[list[str], np.ndarray]:
    """Rule names in order of first use and the ``(S, R)`` counts (-1: rule not applied)."""
    rules = list(dict.fromkeys(rule for s in sources for rule in s.rejected))
    matrix = np.full((len(sources), len(rules)), RULE_NOT_APPLIED, dtype=np.int64)
    for row, source in enumerate(sources):
        counts = _counts(list(source.rejected.values()), f"rejected counts of {source.path}")
        for rule, count in zip(source.rejected, counts, strict=True):
            matrix[row, rules.index(rule)] = count
    return rules, matrix


def _parameter_value(key: object, value: object) -> object:
    if not isinstance(key, str) or not key:
        raise _InvalidContentError(f"provenance parameter name {key!r} must be a non-empty string")
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, np.integer)):
        return _int64(value, f"provenance parameter {key!r}")
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, str):
        return value
    raise _InvalidContentError(
        f"provenance parameter {key!r} is a {type(value).__name__}; "
        "parameters must be bool, int, float or str"
    )


def _int64(value: int | np.integer, what: str) -> np.int64:
    try:
        return np.int64(value)
    except OverflowError:
        raise _InvalidContentError(f"{what} = {value} does not fit in 64 bits") from None


def _plan_statistics(plan: _Plan, statistics: Mapping[str, Value]) -> None:
    plan.element("statistics", STATISTICS_TYPE)
    for key, value in statistics.items():
        if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
            raise _InvalidContentError(f"statistics name {key!r} is not a valid dataset name")
        plan.datasets[f"statistics/{key}"] = _statistic_array(key, value)


def _statistic_array(key: str, value: Value) -> np.ndarray:
    """A 0-d or 1-D array of bool, int64, float64 or str (object) for one statistics entry."""
    array = np.asarray(value)
    kind = array.dtype.kind
    if array.ndim > 1:
        raise _InvalidContentError(f"statistics {key!r} must be a scalar or 1-D, got {array.shape}")
    if kind == "b":
        return array.astype(np.bool_)
    if kind in "iu" and np.can_cast(array.dtype, np.int64):
        return array.astype(np.int64)
    if kind == "f":
        return array.astype(np.float64)
    if kind in "UO" and all(isinstance(v, str) for v in array.reshape(-1).tolist()):
        strings = np.empty(array.shape, dtype=object)
        strings[...] = array.tolist()
        return strings
    raise _InvalidContentError(
        f"statistics {key!r} has type {type(value).__name__} ({array.dtype}); "
        "statistics must be bool, int, float or str scalars or 1-D arrays"
    )


def _nonfinite_fields(limits: Limits) -> list[str]:
    """Dataset paths of the limits that hold NaN or infinity."""
    bad = [name for name, array in _limit_arrays(limits) if not np.all(np.isfinite(array))]
    return list(dict.fromkeys(bad))  # (a dataset stored as several arrays is named once)


def _limits_problem(limits: Limits) -> str | None:
    """The first reason ``limits`` cannot be applied as documented; ``None`` when they can."""
    for check in (_meaning_problem, _interval_problem, _region_problem):
        problem = check(limits)
        if problem is not None:
            return problem
    return None


def _meaning_problem(limits: Limits) -> str | None:
    """Root attributes and skeleton: values every consumer knows how to apply."""
    texts = {
        ATTR_SKELETON: (limits.skeleton_name, SKELETONS),
        ATTR_NORMALIZATION: (limits.normalization, NORMALIZATIONS),
        ATTR_ANGLE_UNIT: (limits.angle_unit, ANGLE_UNITS),
    }
    for name, (value, known) in texts.items():
        if value not in known:
            return f"unknown {name} {_shorten(str(value))!r} (known: {', '.join(known)})"
    unit = limits.length_unit
    if limits.normalization == "reference-bone":
        if unit != "relative":
            return f"length-unit {_shorten(str(unit))!r} under reference-bone normalization"
    elif not _known_length_unit(unit):
        return (
            f"unknown length-unit {_shorten(str(unit))!r} (known: {', '.join(LENGTH_UNITS)}, "
            "or 'mixed: ' and a list of them)"
        )
    if not _valid_coverage(limits.coverage):
        return f"coverage {limits.coverage!r} is not a number in (0, 1]"
    if tuple(limits.joint_names) != skeleton.JOINT_NAMES:
        return "skeleton joint names are not the canonical-21 joints in canonical order"
    if tuple(int(p) for p in limits.parents) != skeleton.PARENTS:
        return "skeleton parents are not those of the canonical-21 skeleton"
    return None


def _known_length_unit(unit: object) -> bool:
    if not isinstance(unit, str):
        return False
    if unit.startswith("mixed: "):
        parts = unit.removeprefix("mixed: ").split(", ")
        return len(parts) >= 2 and all(part in LENGTH_UNITS for part in parts)
    return unit in LENGTH_UNITS


def _interval_problem(limits: Limits) -> str | None:
    families = (
        ("bone_length", limits.bone_length, skeleton.BONE_NAMES),
        ("palm/curvature", limits.palm_curvature, skeleton.PALM_NAMES),
        ("palm/angle", limits.palm_angle, skeleton.PALM_NAMES),
    )
    for path, interval, names in families:
        if tuple(interval.names) != names:
            return (
                f"/{path} has {len(interval.names)} items, expected the {len(names)} items "
                f"{names[0]} … {names[-1]} in canonical order"
            )
        arrays = {n: np.asarray(getattr(interval, n), dtype=np.float64) for n in _INTERVAL_ARRAYS}
        if interval.within_person is not None:
            arrays["within_person"] = np.asarray(interval.within_person, dtype=np.float64)
        for name, array in arrays.items():
            if array.shape != (len(names),):
                return f"/{path}/{name} has shape {array.shape}, expected ({len(names)},)"
            if not np.all(np.isfinite(array)):
                return f"non-finite values in /{path}/{name}"
        if np.any(arrays["min"] > arrays["max"]):
            item = names[int(np.argmax(arrays["min"] > arrays["max"]))]
            return f"/{path} has min > max for {item}"
        for name in ("tolerance", "within_person"):
            if name in arrays and np.any(arrays[name] < 0):
                return f"negative values in /{path}/{name}"
    return None


def _region_problem(limits: Limits) -> str | None:
    regions = limits.joint_angle
    count = len(skeleton.ANGLE_NAMES)
    if tuple(regions.names) != skeleton.ANGLE_NAMES:
        return (
            f"/joint_angle has {len(regions.names)} angle ids, expected the {count} joints "
            "of DESIGN §3 in canonical order"
        )
    shapes = {
        "flexion_center": (count,), "coverage": (count,), "area": (count,),
        "tolerance": (count,), "box_min": (count, 2), "box_max": (count, 2),
    }  # fmt: skip
    arrays = {n: np.asarray(getattr(regions, n), dtype=np.float64) for n in shapes}
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            return f"/joint_angle/{name} has shape {arrays[name].shape}, expected {shape}"
        if not np.all(np.isfinite(arrays[name])):
            return f"non-finite values in /joint_angle/{name}"
    if np.any(arrays["tolerance"] < 0):
        return "negative values in /joint_angle/tolerance"
    if np.any(arrays["area"] < 0):
        return "negative values in /joint_angle/area"
    if np.any((arrays["coverage"] < 0) | (arrays["coverage"] > 1)):
        return "/joint_angle/coverage outside [0, 1]"
    if np.any(arrays["box_min"] > arrays["box_max"]):
        return "/joint_angle has box_min > box_max"
    hull_lists = (regions.hulls, regions.exact_hulls, regions.rdp_hulls)
    for prefix, hulls in zip(_HULL_PREFIXES, hull_lists, strict=True):
        if hulls is None:
            continue
        if len(hulls) != count:
            return f"/joint_angle/{prefix}hull_vertices holds {len(hulls)} polygons, not {count}"
        for a, hull in enumerate(hulls):
            problem = _polygon_problem(np.asarray(hull, dtype=np.float64))
            if problem is not None:
                name = skeleton.ANGLE_NAMES[a]
                return f"/joint_angle/{prefix}hull_vertices polygon {a} ({name}) {problem}"
    return None


_INTERVAL_ARRAYS = ("min", "max", "tolerance")


def _polygon_problem(ring: np.ndarray) -> str | None:
    """Why ``ring`` is not a convex counter-clockwise polygon of positive area, or ``None``."""
    if ring.ndim != 2 or ring.shape[1] != 2 or ring.shape[0] < 3:
        return f"has shape {ring.shape}, expected (V >= 3, 2)"
    if not np.all(np.isfinite(ring)):
        return "has non-finite vertices"
    scale = max(1.0, float(np.max(np.abs(ring))))
    extent = float(np.max(np.ptp(ring, axis=0)))
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    if not abs(area) > _POLYGON_TOL * scale * max(extent, _POLYGON_TOL):
        return "is degenerate (collinear vertices, no area)"
    if area < 0:
        return "is clockwise; polygons are stored counter-clockwise"
    edge = np.roll(ring, -1, axis=0) - ring
    turn = edge[:, 0] * np.roll(edge[:, 1], -1) - edge[:, 1] * np.roll(edge[:, 0], -1)
    if np.any(turn < -_POLYGON_TOL * scale * scale):
        return "is not convex"
    return None


#: Relative tolerance of the polygon checks (as the hull queries': 1e-12 of the scale).
_POLYGON_TOL = 1e-9


def _limit_arrays(limits: Limits) -> Iterator[tuple[str, np.ndarray]]:
    intervals = (
        ("bone_length", limits.bone_length),
        ("palm/curvature", limits.palm_curvature),
        ("palm/angle", limits.palm_angle),
    )
    for path, interval in intervals:
        for name in ("min", "max", "tolerance"):
            yield f"{path}/{name}", np.asarray(getattr(interval, name), dtype=np.float64)
    regions = limits.joint_angle
    for name in ("flexion_center", "coverage", "area", "tolerance", "box_min", "box_max"):
        yield f"joint_angle/{name}", np.asarray(getattr(regions, name), dtype=np.float64)
    hull_lists = (regions.hulls, regions.exact_hulls, regions.rdp_hulls)
    for prefix, hulls in zip(_HULL_PREFIXES, hull_lists, strict=True):
        for hull in hulls or ():
            yield f"joint_angle/{prefix}hull_vertices", np.asarray(hull, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@contextmanager
def _open_bundle(label: str) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only; turn every HDF5/OS failure into a one-line error."""
    _check_readable(label)
    try:
        h5file = h5py.File(label, "r")
    except OSError as exc:
        raise BadInputError(f"{label}: cannot open HDF5 file ({_reason(exc)})") from exc
    try:
        if h5file.id.get_create_plist().get_sizes() == (8, 8):
            _check_global_heaps(label)
        yield h5file
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        # TypeError: h5py on a corrupt datatype, e.g. "Unknown string encoding"
        raise BadInputError(f"{label}: cannot read bundle ({_reason(exc)})") from exc
    finally:
        h5file.close()


def _check_readable(label: str) -> None:
    if not os.path.lexists(label):
        raise BadInputError(f"{label}: no such file")
    if os.path.isdir(label):
        raise BadInputError(f"{label}: is a directory, not a bundle file")
    try:
        with open(label, "rb"):
            pass
    except OSError as exc:
        raise BadInputError(f"{label}: cannot read ({_reason(exc)})") from exc
    if not h5py.is_hdf5(label):
        raise BadInputError(f"{label}: not a bmc-calib bundle (not an HDF5 file)")


def _check_encoding(h5file: h5py.File, label: str) -> str:
    """Check the root encoding attributes and return the encoding version found."""
    encoding_type = _optional_text(h5file, ATTR_TYPE, label)
    if encoding_type is None:
        raise BadInputError(
            f"{label}: not a bmc-calib bundle (HDF5 file without the root attribute "
            f"{ATTR_TYPE} = {ENCODING_TYPE!r})"
        )
    if encoding_type != ENCODING_TYPE:
        raise BadInputError(
            f"{label}: not a bmc-calib bundle ({ATTR_TYPE} is {encoding_type!r}, "
            f"expected {ENCODING_TYPE!r})"
        )
    version = _optional_text(h5file, ATTR_VERSION, label)
    if version is None:
        raise BadInputError(f"{label}: bmc-calib bundle without the root attribute {ATTR_VERSION}")
    _check_version(version, f"{label}: bundle encoding-version")
    return version


def _check_version(version: str, subject: str) -> None:
    match = _VERSION_PATTERN.fullmatch(version)
    shown = _shorten(version)
    if match is None:
        raise BadInputError(
            f"{subject} {shown!r} is malformed; expected MAJOR.MINOR (ASCII digits)"
        )
    major = match.group(1).lstrip("0") or "0"  # no int(): a 5,000-digit major is valid text
    if major != str(SUPPORTED_MAJOR):
        newer = len(major) > len(str(SUPPORTED_MAJOR)) or int(major) > SUPPORTED_MAJOR
        advice = "upgrade bmc-calib to read it" if newer else "re-create it"
        raise UnsupportedVersionError(
            f"{subject} {shown} is not supported; bmc-calib {__version__} reads "
            f"{SUPPORTED_MAJOR}.x bundles only; {advice}"
        )


def _minor_version(version: str) -> int:
    """Minor version of a well-formed ``MAJOR.MINOR`` (capped: no 5,000-digit ``int``)."""
    match = _VERSION_PATTERN.fullmatch(version)
    if match is None:
        return 0
    minor = match.group(2).lstrip("0") or "0"
    return int(minor) if len(minor) <= 9 else 10**9


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _optional_text(obj: h5py.HLObject, name: str, label: str) -> str | None:
    if name not in obj.attrs:
        return None
    where = f"{obj.name}@{name}"
    if h5py.check_string_dtype(obj.attrs.get_id(name).dtype) is None:
        raise BadInputError(f"{label}: attribute {where} must be a string")
    value = _attribute_value(obj, name, where, label)
    if np.ndim(value) != 0:
        raise BadInputError(f"{label}: attribute {where} must be a scalar string")
    text = _as_text(value.item() if isinstance(value, np.ndarray) else value, where, label)
    if len(text) > MAX_STRING_BYTES:
        raise BadInputError(f"{label}: attribute {where} is implausibly long ({len(text)} bytes)")
    return text


def _digest_failure(info: BundleInfo) -> str:
    if info.digest_stored is None:
        return (
            f"{info.path}: no {ATTR_DIGEST} attribute, so its content cannot be verified; "
            "the file was modified or not written by bmc-calib"
        )
    if not info.content_digest_ok:
        return (
            f"{info.path}: content digest mismatch (stored {info.digest_stored}, computed "
            f"{info.digest_computed}); the file was modified or corrupted"
        )
    if info.attribute_digest_stored is None:
        return (
            f"{info.path}: bundle {_shorten(info.encoding_version)} without the "
            f"/{ATTRIBUTE_DIGEST} dataset, so its attributes cannot be verified; the file was "
            "modified or not written by bmc-calib"
        )
    return (
        f"{info.path}: attribute digest mismatch (stored {info.attribute_digest_stored}, "
        f"computed {info.attribute_digest_computed}); an attribute (normalization, a unit, "
        "coverage, a version, a fit parameter) was modified"
    )


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for an OS or HDF5 error."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


Shape = tuple[int | None, ...]


class _Reader:
    """Reads the elements of one open bundle, naming the file and dataset in every error."""

    def __init__(self, h5file: h5py.File, label: str) -> None:
        self.file = h5file
        self.label = label
        self.unknown: list[str] = []

    def fail(self, message: str) -> BadInputError:
        return BadInputError(f"{self.label}: {message}")

    # -- whole bundle -----------------------------------------------------------------------

    def limits(self) -> Limits:
        root = self.file
        self.note_unknown(root, _ROOT_MEMBERS, _ROOT_ATTRS)
        joint_names, parents = self.skeleton()
        palm = self.element("palm", PALM_TYPE)
        self.note_unknown(palm, frozenset({"curvature", "angle"}), _ELEMENT_ATTRS)
        try:
            limits = Limits(
                bone_length=self.interval("bone_length"),
                palm_curvature=self.interval("palm/curvature"),
                palm_angle=self.interval("palm/angle"),
                joint_angle=self.joint_angle(),
                normalization=self.root_text(ATTR_NORMALIZATION),
                length_unit=self.root_text(ATTR_LENGTH_UNIT),
                angle_unit=self.root_text(ATTR_ANGLE_UNIT),
                coverage=self.root_coverage(),
                skeleton_name=self.root_text(ATTR_SKELETON),
                joint_names=joint_names,
                parents=parents,
                provenance=self.provenance(),
                statistics=self.statistics(),
                tool_name=self.root_text(ATTR_TOOL_NAME, required=False),
                tool_version=self.root_text(ATTR_TOOL_VERSION, required=False),
                created=self.root_text(ATTR_CREATED, required=False),
            )
        except ValueError as exc:  # raised by the dataclasses' own shape checks
            raise self.fail(f"inconsistent limits ({exc})") from None
        bad = _nonfinite_fields(limits)
        if bad:
            raise self.fail(f"non-finite values in /{', /'.join(bad)}; the bundle is corrupt")
        check_limits(limits, self.label)
        return limits

    # -- root attributes --------------------------------------------------------------------

    def root_text(self, name: str, *, required: bool = True) -> str:
        value = _optional_text(self.file, name, self.label)
        if value is None and required:
            raise self.fail(f"missing root attribute {name}")
        return value or ""

    def root_coverage(self) -> float:
        if ATTR_COVERAGE not in self.file.attrs:
            raise self.fail(f"missing root attribute {ATTR_COVERAGE}")
        value = self.file.attrs[ATTR_COVERAGE]
        if not (np.ndim(value) == 0 and _valid_coverage(value)):
            raise self.fail(f"root attribute {ATTR_COVERAGE} must be a number in (0, 1]")
        return float(value)

    # -- groups and datasets ----------------------------------------------------------------

    def element(self, path: str, encoding_type: str) -> h5py.Group:
        group = self.file.get(path)
        if not isinstance(group, h5py.Group):
            raise self.fail(f"missing group /{path}")
        found = _optional_text(group, ATTR_TYPE, self.label)
        if found != encoding_type:
            raise self.fail(f"group /{path} has {ATTR_TYPE} {found!r}, expected {encoding_type!r}")
        version = _optional_text(group, ATTR_VERSION, self.label)
        if version is None:
            raise self.fail(f"group /{path} has no {ATTR_VERSION} attribute")
        _check_version(version, f"{self.label}: element /{path} encoding-version")
        return group

    def dataset(self, group: h5py.Group, name: str) -> h5py.Dataset:
        dataset = group.get(name)
        if not isinstance(dataset, h5py.Dataset):
            raise self.fail(f"missing dataset {group.name}/{name}")
        return dataset

    def check_shape(self, dataset: h5py.Dataset, shape: Shape) -> None:
        found = dataset.shape
        if not _shape_matches(found, shape):
            expected = "(" + ", ".join("N" if n is None else str(n) for n in shape) + ")"
            raise self.fail(f"dataset {dataset.name} has shape {found}, expected {expected}")

    def floats(self, group: h5py.Group, name: str, shape: Shape) -> np.ndarray:
        dataset = self.dataset(group, name)
        if dataset.dtype.kind not in "iuf":
            raise self.fail(f"dataset {dataset.name} must be numeric, found {dataset.dtype}")
        self.check_shape(dataset, shape)
        return np.asarray(dataset[()], dtype=np.float64)

    def ints(self, group: h5py.Group, name: str, shape: Shape) -> np.ndarray:
        dataset = self.dataset(group, name)
        if dataset.dtype.kind not in "iu":
            raise self.fail(f"dataset {dataset.name} must be integer, found {dataset.dtype}")
        self.check_shape(dataset, shape)
        return np.asarray(dataset[()], dtype=np.int64)

    def strings(self, group: h5py.Group, name: str, shape: Shape) -> tuple[str, ...]:
        dataset = self.dataset(group, name)
        if h5py.check_string_dtype(dataset.dtype) is None:
            raise self.fail(f"dataset {dataset.name} must hold strings, found {dataset.dtype}")
        self.check_shape(dataset, shape)
        return tuple(str(v) for v in _read_strings(dataset, self.label).reshape(-1))

    def attribute_digest(self) -> str | None:
        """The stored ``/attribute_digest`` (a scalar string dataset), ``None`` if absent."""
        if ATTRIBUTE_DIGEST not in self.file:
            return None
        (value,) = self.strings(self.file, ATTRIBUTE_DIGEST, ())
        return value

    def note_unknown(
        self, group: h5py.Group, members: frozenset[str], attributes: frozenset[str]
    ) -> None:
        prefix = group.name.rstrip("/")
        self.unknown.extend(f"{prefix}/{name}" for name in group if name not in members)
        self.unknown.extend(f"{prefix}/@{name}" for name in group.attrs if name not in attributes)

    # -- elements ---------------------------------------------------------------------------

    def skeleton(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        group = self.element("skeleton", SKELETON_TYPE)
        self.note_unknown(group, frozenset({"joint_names", "parents"}), _ELEMENT_ATTRS)
        names = self.strings(group, "joint_names", (None,))
        parents = self.ints(group, "parents", (len(names),))
        return names, tuple(int(p) for p in parents)

    def interval(self, path: str) -> Interval:
        group = self.element(path, INTERVAL_TYPE)
        self.note_unknown(group, _INTERVAL_MEMBERS, _ELEMENT_ATTRS)
        names = self.strings(group, "names", (None,))
        count = (len(names),)
        return Interval(
            names=names,
            min=self.floats(group, "min", count),
            max=self.floats(group, "max", count),
            tolerance=self.floats(group, "tolerance", count),
            within_person=(
                self.floats(group, "within_person", count) if "within_person" in group else None
            ),
        )

    def joint_angle(self) -> JointAngleLimits:
        group = self.element("joint_angle", JOINT_ANGLE_TYPE)
        self.note_unknown(group, _JOINT_ANGLE_MEMBERS, _ELEMENT_ATTRS)
        names = self.strings(group, "names", (None,))
        count = len(names)
        per_angle = {
            name: self.floats(group, name, (count,))
            for name in ("flexion_center", "coverage", "area", "tolerance")
        }
        boxes = {name: self.floats(group, name, (count, 2)) for name in ("box_min", "box_max")}
        hulls = self.hulls(group, "", count)
        if hulls is None:
            raise self.fail(f"missing dataset {group.name}/hull_vertices")
        return JointAngleLimits(
            names=names,
            hulls=hulls,
            exact_hulls=self.hulls(group, "exact_", count),
            rdp_hulls=self.hulls(group, "rdp_", count),
            **per_angle,
            **boxes,
        )

    def hulls(self, group: h5py.Group, prefix: str, count: int) -> list[np.ndarray] | None:
        vertices_name, offsets_name = f"{prefix}hull_vertices", f"{prefix}hull_offsets"
        if vertices_name not in group and offsets_name not in group:
            return None
        vertices = self.floats(group, vertices_name, (None, 2))
        offsets = self.ints(group, offsets_name, (count + 1,))
        valid = offsets[0] == 0 and offsets[-1] == len(vertices) and np.all(np.diff(offsets) >= 3)
        if not valid:
            raise self.fail(
                f"dataset {group.name}/{offsets_name} must start at 0, end at the number of "
                f"vertices ({len(vertices)}) and give every hull at least 3 vertices"
            )
        return [vertices[offsets[a] : offsets[a + 1]].copy() for a in range(count)]

    def provenance(self) -> Provenance:
        group = self.element("provenance", PROVENANCE_TYPE)
        self.note_unknown(group, _PROVENANCE_MEMBERS, _ELEMENT_ATTRS)
        paths = self.strings(group, "path", (None,))
        count = (len(paths),)
        texts = {"path": paths, **{n: self.strings(group, n, count) for n in _SOURCE_STRINGS[1:]}}
        counts = {name: self.ints(group, name, count) for name in _SOURCE_COUNTS}
        rules = self.strings(group, "rejected_rules", (None,))
        rejected = self.ints(group, "rejected", (len(paths), len(rules)))
        if np.any(rejected < RULE_NOT_APPLIED):
            raise self.fail(f"dataset {group.name}/rejected holds counts below {RULE_NOT_APPLIED}")
        sources = [
            SourceRecord(
                **{name: values[row] for name, values in texts.items()},
                **{name: int(values[row]) for name, values in counts.items()},
                rejected={
                    rule: int(n)
                    for rule, n in zip(rules, rejected[row], strict=True)
                    if n != RULE_NOT_APPLIED
                },
            )
            for row in range(len(paths))
        ]
        return Provenance(sources=sources, parameters=self.parameters(group))

    def parameters(self, provenance: h5py.Group) -> dict[str, Scalar]:
        group = provenance.get("parameters")
        if not isinstance(group, h5py.Group):
            raise self.fail(f"missing group {provenance.name}/parameters")
        parameters: dict[str, Scalar] = {}
        for name, value in group.attrs.items():
            scalar = _python_scalar(value)
            if scalar is None:
                self.unknown.append(f"{group.name}/@{name}")
            else:
                parameters[name] = scalar
        return parameters

    def statistics(self) -> dict[str, Value]:
        group = self.element("statistics", STATISTICS_TYPE)
        self.note_unknown(group, frozenset(group), _ELEMENT_ATTRS)
        statistics: dict[str, Value] = {}
        for name, member in group.items():
            value = (
                _statistic_value(member, self.label) if isinstance(member, h5py.Dataset) else None
            )
            if value is None:
                self.unknown.append(f"{group.name}/{name}")
            else:
                statistics[name] = value
        return statistics


def _shape_matches(found: tuple[int, ...] | None, wanted: Shape) -> bool:
    if found is None or len(found) != len(wanted):
        return False
    return all(want is None or want == have for want, have in zip(wanted, found, strict=True))


def _python_scalar(value: object) -> Scalar | None:
    """A parameter attribute as bool, int, float or str; ``None`` for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return None


_SCALAR_TYPES: dict[str, Callable[[object], Scalar]] = {"b": bool, "i": int, "u": int, "f": float}
_ARRAY_TYPES: dict[str, type] = {"b": np.bool_, "i": np.int64, "u": np.int64, "f": np.float64}


def _statistic_value(dataset: h5py.Dataset, label: str) -> Value | None:
    """A statistics dataset as a Python scalar or 1-D array; ``None`` if not representable."""
    if dataset.shape is None or len(dataset.shape) > 1:
        return None
    if h5py.check_string_dtype(dataset.dtype) is not None:
        text = _read_strings(dataset, label)
        if dataset.ndim == 0:
            return str(text[()])
        return np.array([str(v) for v in text], dtype=str)
    kind = dataset.dtype.kind
    if kind not in _ARRAY_TYPES:
        return None
    data = dataset[()]
    if dataset.ndim == 0:
        return _SCALAR_TYPES[kind](data.item())
    return np.asarray(data, dtype=_ARRAY_TYPES[kind])
