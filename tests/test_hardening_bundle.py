"""Issue 12 §3: a bundle is checked before it is used.

- Bundle format 1.2 adds a digest over the meaning-bearing attributes; tampering with
  normalization, units, coverage, skeleton, versions or fit parameters is refused (exit 3).
- Unknown skeletons, normalisations and units, and malformed versions (fullwidth digits) are
  refused on read even when both digests were recomputed; a 5,000-digit major is exit 4.
- One structural check on read (``bundle.check_limits``) stops malformed limits before
  validate, merge, inspect or ``BMCLoss`` can crash on them.
- Variable-length strings are bounded before HDF5 reads them; a corrupt global heap is
  refused; inspect gives its verdict before rendering.
- Hypothesis flips bytes of a real bundle: only the package's error escapes.

Every fixture is written by the test.
"""

from __future__ import annotations

import io
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from deadline import deadline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from bmc_calib import bundle, render, summary
from bmc_calib.bundle import attribute_digest, content_digest, inspect_bundle, read_bundle
from bmc_calib.cli import app
from bmc_calib.errors import BadInputError, BMCError, UnsupportedVersionError
from bmc_calib.formats import stb

GOLDEN_1_2 = Path(__file__).parent / "golden" / "limits-v1.2.h5"
SAMPLE = Path(__file__).resolve().parents[1] / "data_samples" / "subject_01.npy"
STR = h5py.string_dtype()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """A fresh copy of the 1.2 golden bundle (written by this package)."""
    path = tmp_path / "limits.h5"
    shutil.copyfile(GOLDEN_1_2, path)
    return path


def rewrite_digests(path: Path) -> None:
    """Recompute and store both digests, as a deliberate editor would."""
    with h5py.File(path, "r+") as f:
        del f[bundle.ATTRIBUTE_DIGEST]
        f.create_dataset(bundle.ATTRIBUTE_DIGEST, data=attribute_digest(f), dtype=STR)
        f.attrs["content-digest"] = content_digest(f)


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def refused(path: Path, match: str, error: type[BMCError] = BadInputError) -> str:
    with deadline(5.0), pytest.raises(error, match=match) as exc:
        read_bundle(path)
    line = one_line(exc)
    assert line.startswith(f"{path}: ")
    return line


def cli_fails(runner: CliRunner, args: list[str], code: int = 3) -> str:
    result = runner.invoke(app, args)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.output
    assert lines and lines[-1].startswith("error: "), lines
    return lines[-1]


# --------------------------------------------------------------------------------------------
# 1.2: the attribute digest
# --------------------------------------------------------------------------------------------

#: (object, attribute, new value): each edit changes what the bundle means
ATTRIBUTE_EDITS = [
    ("/", "normalization", "none"),
    ("/", "length-unit", "parsecs"),
    ("/", "angle-unit", "deg"),
    ("/", "coverage", np.float64(0.5)),
    ("/", "skeleton", "mano-16"),
    ("/", "encoding-version", "1.1"),
    ("/bone_length", "encoding-version", "1.9"),
    ("/joint_angle", "encoding-type", "bmc-joint-angle-regions"),  # re-set: same value, no-op
    ("/provenance/parameters", "coverage", np.float64(0.9)),
    ("/provenance/parameters", "layout", "mano"),
    ("/provenance/parameters", "extra", np.int64(3)),
]


@pytest.mark.parametrize(("owner", "name", "value"), ATTRIBUTE_EDITS)
def test_an_edited_attribute_is_refused(written: Path, owner: str, name: str, value) -> None:
    with h5py.File(written, "r+") as f:
        if isinstance(value, str):
            f[owner].attrs.create(name, value, dtype=STR)
        else:
            f[owner].attrs[name] = value
    if (owner, name) == ("/joint_angle", "encoding-type"):
        read_bundle(written)  # the same value again: nothing changed
        return
    with pytest.raises(BadInputError) as exc:
        read_bundle(written)
    line = one_line(exc)
    assert line.startswith(f"{written}: ")
    assert "attribute digest mismatch" in line or "unknown" in line or "length-unit" in line


def test_the_attribute_digest_ignores_who_wrote_it_and_when(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs.create("created", "2030-01-01T00:00:00Z", dtype=STR)
        f.attrs.create("tool-version", "9.9.9", dtype=STR)
    _, info = inspect_bundle(written)
    assert info.digest_ok


def test_removing_the_attribute_digest_is_detected(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        del f[bundle.ATTRIBUTE_DIGEST]
    refused(written, "content digest mismatch")  # a dataset: covered by the content digest
    with h5py.File(written, "r+") as f:  # and with a recomputed content digest: 1.2 needs it
        f.attrs["content-digest"] = content_digest(f)
    refused(written, "without the /attribute_digest dataset")


def test_downgrading_to_1_1_to_drop_the_attribute_digest_is_detected(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs.create("encoding-version", "1.1", dtype=STR)
        f.attrs.create("normalization", "none", dtype=STR)
        f.attrs.create("length-unit", "mm", dtype=STR)
    refused(written, "attribute digest mismatch")
    with h5py.File(written, "r+") as f:
        del f[bundle.ATTRIBUTE_DIGEST]
    refused(written, "content digest mismatch")


def test_inspect_verify_and_validate_name_the_attribute_tampering(runner, written) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs.create("normalization", "none", dtype=STR)
        f.attrs.create("length-unit", "mm", dtype=STR)
    line = cli_fails(runner, ["inspect", str(written), "--verify"])
    assert str(written) in line and "attribute digest mismatch" in line
    line = cli_fails(runner, ["validate", str(SAMPLE), "--limits", str(written)])
    assert str(written) in line and "attribute digest mismatch" in line
    result = runner.invoke(app, ["inspect", str(written), "--json"])
    assert result.exit_code == 0 and '"digest_ok": false' in result.stdout


def test_1_0_and_1_1_bundles_without_attribute_digest_still_verify(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        del f[bundle.ATTRIBUTE_DIGEST]
        del f["bone_length/within_person"]
        f.attrs.create("encoding-version", "1.1", dtype=STR)
        f.attrs["content-digest"] = content_digest(f)
    _, info = inspect_bundle(written)
    assert info.digest_ok and info.attribute_digest_stored is None
    read_bundle(written)


# --------------------------------------------------------------------------------------------
# Values no consumer knows are refused even with recomputed digests; versions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("normalization", "per-hand", "unknown normalization 'per-hand'"),
        ("skeleton", "mano-16", "unknown skeleton 'mano-16'"),
        ("angle-unit", "deg", "unknown angle-unit 'deg'"),
        ("length-unit", "mm", "length-unit 'mm' under reference-bone"),
    ],
)
def test_unknown_meaning_is_refused_even_when_the_digests_match(
    runner, written, name, value, match
) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs.create(name, value, dtype=STR)
    rewrite_digests(written)
    refused(written, match)
    assert match in cli_fails(runner, ["inspect", str(written)])


def test_unknown_length_unit_without_normalization_is_refused(written: Path) -> None:
    with h5py.File(written, "r+") as f:
        f.attrs.create("normalization", "none", dtype=STR)
        f.attrs.create("length-unit", "parsecs", dtype=STR)
    rewrite_digests(written)
    refused(written, "unknown length-unit 'parsecs'")
    with h5py.File(written, "r+") as f:
        f.attrs.create("length-unit", "mixed: m, mm", dtype=STR)  # what fit records
    rewrite_digests(written)
    assert read_bundle(written).length_unit == "mixed: m, mm"


@pytest.mark.parametrize("where", ["/", "/palm/angle"])
@pytest.mark.parametrize("version", ["１.２", "1.２", "٣.0", "1.2 ", "+1.2", "1.-2", "1.2.0"])
def test_malformed_versions_are_exit_3(runner, written, where, version) -> None:
    with h5py.File(written, "r+") as f:
        f[where].attrs.create("encoding-version", version, dtype=STR)
    rewrite_digests(written)
    refused(written, "is malformed; expected MAJOR.MINOR")
    assert "malformed" in cli_fails(runner, ["inspect", str(written)], code=3)


def test_a_5000_digit_major_version_is_unsupported_exit_4(runner, written) -> None:
    version = "9" * 5000 + ".0"
    with h5py.File(written, "r+") as f:
        f.attrs.create("encoding-version", version, dtype=STR)
    line = refused(written, "is not supported", UnsupportedVersionError)
    assert len(line) < 400 and "(5002 characters)" in line and "upgrade bmc-calib" in line
    cli_fails(runner, ["inspect", str(written)], code=4)
    with h5py.File(written, "r+") as f:  # leading zeros are still major 1
        f.attrs.create("encoding-version", "0" * 5000 + "1." + "7" * 5000, dtype=STR)
    rewrite_digests(written)
    read_bundle(written)


# --------------------------------------------------------------------------------------------
# One structural check on read, for every consumer
# --------------------------------------------------------------------------------------------


def _drop_last_bone(f: h5py.File) -> None:
    for name in ("names", "min", "max", "tolerance", "within_person"):
        data = f[f"bone_length/{name}"][()][:19]
        del f[f"bone_length/{name}"]
        f.create_dataset(f"bone_length/{name}", data=data, dtype=STR if name == "names" else None)


def _set(path: str, index: tuple, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[path][index] = value

    return edit


def _reverse_hull(f: h5py.File) -> None:
    offsets = f["joint_angle/hull_offsets"][()]
    vertices = f["joint_angle/hull_vertices"][()]
    vertices[offsets[2] : offsets[3]] = vertices[offsets[2] : offsets[3]][::-1]
    f["joint_angle/hull_vertices"][...] = vertices


def _collinear_hull(f: h5py.File) -> None:
    offsets = f["joint_angle/hull_offsets"][()]
    vertices = f["joint_angle/hull_vertices"][()]
    n = offsets[5] - offsets[4]
    vertices[offsets[4] : offsets[5]] = np.stack([np.linspace(0, 1, n), np.linspace(0, 2, n)], 1)
    f["joint_angle/hull_vertices"][...] = vertices


def _dent_hull(f: h5py.File) -> None:
    offsets = f["joint_angle/hull_offsets"][()]  # polygon 0 is the golden rectangle
    vertices = f["joint_angle/hull_vertices"][()]
    vertices[offsets[0] + 1] = [-1.0, 0.0]  # pull a corner inside: no longer convex
    f["joint_angle/hull_vertices"][...] = vertices


MALFORMED = {
    "19 bone items": (_drop_last_bone, r"/bone_length has 19 items, expected the 20"),
    "min > max": (_set("bone_length/min", (3,), 5.0), r"/bone_length has min > max"),
    "negative tolerance": (_set("palm/angle/tolerance", (1,), -0.1), "negative values in"),
    "negative region tolerance": (
        _set("joint_angle/tolerance", (4,), -0.01),
        "negative values in /joint_angle/tolerance",
    ),
    "box min > max": (_set("joint_angle/box_min", (2, 1), 9.0), "box_min > box_max"),
    "clockwise hull": (_reverse_hull, "polygon 2 .* is clockwise"),
    "collinear hull": (_collinear_hull, r"polygon 4 .* is degenerate \(collinear"),
    "non-convex hull": (_dent_hull, "polygon 0 .* is not convex"),
    "coverage above 1": (_set("joint_angle/coverage", (0,), 1.5), "coverage outside"),
    "non-finite within_person": (
        _set("bone_length/within_person", (0,), np.nan),
        "non-finite values in /bone_length/within_person",
    ),
    "wrong parents": (_set("skeleton/parents", (5,), 2), "parents are not those"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_structure_is_refused_by_every_consumer(runner, written, tmp_path, case):
    edit, match = MALFORMED[case]
    with h5py.File(written, "r+") as f:
        edit(f)
    rewrite_digests(written)  # a consistent file: only the structure is wrong
    refused(written, match)
    for args in (
        ["inspect", str(written), "--verify"],
        ["validate", str(SAMPLE), "--limits", str(written)],
        ["merge", str(written), str(GOLDEN_1_2), "-o", str(tmp_path / "m.h5")],
    ):
        line = cli_fails(runner, args)
        assert str(written) in line and "corrupt or not usable" in line, (args, line)
    assert not (tmp_path / "m.h5").exists()


def test_bmc_loss_from_a_malformed_bundle_is_a_package_error(written: Path) -> None:
    pytest.importorskip("torch")
    from bmc_calib.torch import BMCLoss

    with h5py.File(written, "r+") as f:
        _reverse_hull(f)
    rewrite_digests(written)
    with pytest.raises(BadInputError, match="is clockwise"):
        BMCLoss.from_bundle(written)


def test_check_limits_is_public_for_in_memory_limits() -> None:
    limits = read_bundle(GOLDEN_1_2)
    bundle.check_limits(limits)
    limits.palm_curvature.tolerance[0] = -1.0
    with pytest.raises(BadInputError, match=r"^limits: negative values in /palm/curvature"):
        bundle.check_limits(limits)


def test_the_writer_refuses_what_a_reader_would_refuse(tmp_path: Path) -> None:
    limits = read_bundle(GOLDEN_1_2)
    limits.joint_angle.hulls[3] = limits.joint_angle.hulls[3][::-1]
    with pytest.raises(BadInputError, match=r"cannot write .*is clockwise"):
        bundle.write_bundle(limits, tmp_path / "bad.h5")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Bounded string reads, corrupt heaps, verdict before rendering
# --------------------------------------------------------------------------------------------


def _patch_descriptor_length(path: Path, dataset: str, length: int) -> None:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack("<I", length))


@pytest.mark.parametrize("dataset", ["statistics/grouping", "provenance/path", "attribute_digest"])
def test_a_string_claiming_gigabytes_is_refused_unread(written: Path, dataset: str) -> None:
    _patch_descriptor_length(written, dataset, 0xFF000000)
    start = time.perf_counter()
    refused(written, f"/{dataset} claims a string of 4278190080 bytes")
    assert time.perf_counter() - start < 1.0


def test_a_global_heap_that_would_loop_forever_is_refused(written: Path) -> None:
    data = bytearray(written.read_bytes())
    start = data.find(b"GCOL\x01\x00\x00\x00")
    assert start > 0
    end = start + int.from_bytes(data[start + 8 : start + 16], "little")
    position = start + 16
    while int.from_bytes(data[position : position + 2], "little") != 0:  # to the free space
        size = int.from_bytes(data[position + 8 : position + 16], "little")
        position += 16 + (size + 7) // 8 * 8
    assert position < end
    data[position + 8 : position + 16] = bytes(8)  # free space of size 0: HDF5 never advances
    written.write_bytes(bytes(data))
    refused(written, "corrupt global heap at byte")


def test_inspect_renders_damaged_statistics_and_verifies_before_rendering(runner, written):
    from bmc_calib.edits import EDIT_KINDS

    with h5py.File(written, "r+") as f:
        stats = f["statistics"]
        stats["heldout_false_flag_rate_mean"] = 0.01  # and no ..._max
        stats.create_dataset("heldout_false_flag_rate_bone_length", data=["a", "b"], dtype=STR)
        stats.create_dataset("person_level_method", data="t", dtype=STR)
        stats.create_dataset("person_level_factor", data="not a number", dtype=STR)
        stats.create_dataset(f"heldout_edit_caught_{EDIT_KINDS[0]}_mean", data="x", dtype=STR)
    result = runner.invoke(app, ["inspect", str(written)])  # shows a modified bundle
    assert result.exit_code == 0, result.output
    assert "MISMATCH" in result.stderr and "Held-out false-flag rate" in result.stderr
    result = runner.invoke(app, ["inspect", str(written), "--verify"])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 3 and len(lines) == 1 and "digest mismatch" in lines[0]


# --------------------------------------------------------------------------------------------
# Byte flips of a real bundle: only the package error escapes
# --------------------------------------------------------------------------------------------

GOLDEN_BYTES = GOLDEN_1_2.read_bytes()
GOLDEN_LIMITS = read_bundle(GOLDEN_1_2)


def _interesting_offsets() -> list[int]:
    """Where flips do most: string descriptors and heap collections (the lengths HDF5 trusts)."""
    offsets: list[int] = []
    with h5py.File(GOLDEN_1_2, "r") as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype):
                start = obj.id.get_offset()
                if start is not None:
                    offsets.extend(range(start, start + min(obj.id.get_storage_size(), 64)))

        f.visititems(visit)
    heap = GOLDEN_BYTES.find(b"GCOL")
    offsets.extend(range(heap, heap + 256))
    return offsets


INTERESTING = _interesting_offsets()
FLIP = st.tuples(
    st.one_of(st.integers(0, len(GOLDEN_BYTES) - 1), st.sampled_from(INTERESTING)),
    st.integers(1, 255),
)
FLIPS_PER_EXAMPLE = 3
EXAMPLES = 300


@settings(
    max_examples=EXAMPLES,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(flips=st.lists(FLIP, min_size=1, max_size=FLIPS_PER_EXAMPLE))
def test_byte_flips_give_the_package_error_or_an_intact_bundle(tmp_path, flips) -> None:
    data = bytearray(GOLDEN_BYTES)
    for position, mask in flips:
        data[position] ^= mask
    path = tmp_path / "flipped.h5"
    path.write_bytes(bytes(data))
    with deadline(5.0):
        try:
            limits, info = inspect_bundle(path)
        except BMCError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"{path}: ")
            assert exc.exit_code in (3, 4)
            return
        result = summary.bundle_summary(limits, info)  # what inspect renders, verdict or not
        render.bundle_report(Console(file=io.StringIO(), width=100), result)
        if info.digest_ok:
            bundle.check_limits(limits)
            assert limits.bone_length.min.tolist() == GOLDEN_LIMITS.bone_length.min.tolist()
            assert limits.normalization == GOLDEN_LIMITS.normalization
        else:
            with pytest.raises(BadInputError):
                read_bundle(path)


# --------------------------------------------------------------------------------------------
# §5 leftover: MATLAB v5 memory bombs (STB)
# --------------------------------------------------------------------------------------------


def _v5_bytes(tmp_path: Path) -> bytes:
    small = tmp_path / "small.mat"
    scipy.io.savemat(small, {"handPara": np.zeros((3, 21, 2))}, do_compression=False)
    return small.read_bytes()


def _claim_frames(data: bytes, frames: int) -> bytearray:
    patched = bytearray(data)
    dims = patched.find(struct.pack("<II", 5, 12))  # miINT32 dims of (3, 21, 2)
    patched[dims + 16 : dims + 20] = struct.pack("<i", frames)
    return patched


def test_stb_v5_mat_claiming_a_huge_shape_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "B1Counting_BB.mat"
    path.write_bytes(bytes(_claim_frames(_v5_bytes(tmp_path), 2_000_000_000)))
    start = time.perf_counter()
    with deadline(1.0), pytest.raises(BadInputError, match=r"claims shape .*file holds only"):
        stb.load_hand_para(str(path))
    assert time.perf_counter() - start < 0.5


def test_stb_v5_mat_whose_element_claims_more_than_the_file(tmp_path: Path) -> None:
    data = bytearray(_v5_bytes(tmp_path))
    data[132:136] = struct.pack("<I", 0xFFFFFFF0)  # the top-level miMATRIX byte count
    path = tmp_path / "B1Counting_SK.mat"
    path.write_bytes(bytes(data))
    with deadline(1.0), pytest.raises(BadInputError, match="claims 4,294,967,280 bytes"):
        stb.load_hand_para(str(path))


def test_stb_v5_compressed_element_claiming_gigabytes(tmp_path: Path) -> None:
    data = _v5_bytes(tmp_path)
    inner = _claim_frames(data[128:], 2_000_000_000)
    inner[4:8] = struct.pack("<I", 0x7FFFFFF0)
    packed = zlib.compress(bytes(inner))
    path = tmp_path / "B2Counting_BB.mat"
    path.write_bytes(data[:128] + struct.pack("<II", 15, len(packed)) + packed)
    with deadline(1.0), pytest.raises(BadInputError, match="MATLAB array claims 2,147,483,632"):
        stb.load_hand_para(str(path))


def test_stb_v5_real_files_still_read(tmp_path: Path) -> None:
    for compression in (False, True):
        path = tmp_path / f"B3Random_BB_{compression}.mat"
        poses = np.arange(3 * 21 * 5, dtype=np.float64).reshape(3, 21, 5)
        scipy.io.savemat(path, {"handPara": poses, "other": np.ones(3)}, do_compression=compression)
        assert stb.load_hand_para(str(path)).shape == (5, 21, 3)
