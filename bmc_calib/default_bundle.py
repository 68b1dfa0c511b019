"""The default limits bundle shipped with the package, and how ``validate`` picks a bundle.

The packaged file ``bmc_calib/data/default_limits.h5`` is fitted on **real hands**: the
DexYCB joints of 7 people in ``../shared/data/dexycb`` (Chao et al., "DexYCB: A Benchmark
for Capturing Hand Grasping of Objects", CVPR 2021; MANO-fitted annotations, both hands,
44,879 frames; released for non-commercial research use under CC BY-NC 4.0, which
therefore also applies to the packaged bundle). It is rebuilt, reproducibly, by::

    python -m bmc_calib.default_bundle                     # writes bmc_calib/data/default_limits.h5
    python -m bmc_calib.default_bundle --data DIR -o x.h5  # another folder / target

an ordinary ``fit`` with default options, one group per person (file). Provenance paths
are recorded relative to the data folder's parent (``dexycb/subject_01.npz``), so only the
``created`` time differs between two builds with the same numpy.

:func:`build_synthetic_limits` fits the synthetic people of :mod:`bmc_calib.synthetic`
instead (what the package shipped before real data was at hand); tests use it where they
need limits of hands whose every angle and length is known.

Bundle choice for ``validate`` (DESIGN §8): ``--limits PATH`` when given (``default``
names the packaged file), else ``./limits.h5`` when it exists, else the packaged file (read
through :mod:`importlib.resources`, so it works from an installed wheel).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

import numpy as np

from bmc_calib import bundle, skeleton, synthetic
from bmc_calib.errors import BadInputError, BMCError
from bmc_calib.fit import FitOptions, fit_limits
from bmc_calib.formats.base import Chunk, Source, SourceStats, to_right_hands
from bmc_calib.limits import Limits

#: the real data the packaged bundle is fitted on, relative to the repository root
DATA_FOLDER = os.path.join("..", "shared", "data", "dexycb")
DATA_NAME = "DexYCB (Chao et al., CVPR 2021), 7 people, MANO-fitted joints"
DATA_LICENCE = "CC BY-NC 4.0 (non-commercial research use), as the DexYCB annotations"

SUBJECTS = 12
SUBJECT_SEED = 2020
POSES_PER_SUBJECT = 5000
#: subject ``i`` (0-based) uses pose seed ``POSE_SEED + i``
POSE_SEED = 1000
NOISE_MM = 1.5
GLITCH_FRACTION = 0.03

PACKAGE = "bmc_calib"
PACKAGED_NAME = "data/default_limits.h5"
LOCAL_NAME = "limits.h5"
#: ``--limits default`` names the packaged file even where ``./limits.h5`` exists
DEFAULT_NAME = "default"

#: ``BundleChoice.origin`` values
ORIGIN_OPTION = "--limits"
ORIGIN_LOCAL = "working directory"
ORIGIN_PACKAGED = "packaged default"


class _ArraySource(Source):
    """An in-memory source; its digest is the SHA-256 of the float64 joint bytes."""

    joints: np.ndarray

    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.joints, np.float64).tobytes()).hexdigest()


def _array_source(name: str, joints: np.ndarray) -> Source:
    layout = skeleton.get_layout("canonical")

    def read(stats: SourceStats) -> Iterator[Chunk]:
        step = 16384
        for start in range(0, joints.shape[0], step):
            yield Chunk(to_right_hands(joints[start : start + step], layout, False, stats))

    src = _ArraySource(
        path=name,
        format="synthetic",
        unit="mm",
        layout=layout.name,
        frames=int(joints.shape[0]),
        read_chunks=read,
    )
    src.joints = joints
    return src


def synthetic_sources() -> list[Source]:
    """The synthetic recordings of :func:`build_synthetic_limits`, one source per subject.

    Angles are anatomical (``placement=False``: the published ranges of
    :data:`bmc_calib.synthetic.RANGES`, hinge joints without abduction), so limits fitted on
    them can be checked against those ranges.
    """
    subjects = synthetic.make_subjects(SUBJECTS, seed=SUBJECT_SEED)
    return [
        _array_source(
            f"synthetic:{subject.name}",
            synthetic.generate(
                subject,
                POSES_PER_SUBJECT,
                seed=POSE_SEED + i,
                glitch_fraction=GLITCH_FRACTION,
                noise_mm=NOISE_MM,
                placement=False,
            ).joints,
        )
        for i, subject in enumerate(subjects)
    ]


def repository_data_folder() -> str:
    """``../shared/data/dexycb`` next to the repository this package was imported from."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.normpath(os.path.join(here, DATA_FOLDER))


def real_sources(folder: str | None = None) -> list[Source]:
    """One source per person file of ``folder`` (default :func:`repository_data_folder`),
    with paths recorded relative to the folder's parent."""
    from bmc_calib.formats import open_sources

    root = folder or repository_data_folder()
    files = sorted(
        os.path.join(root, name) for name in os.listdir(root) if name.endswith(".npz")
    ) if os.path.isdir(root) else []  # fmt: skip
    if not files:
        raise BadInputError(f"{root}: no per-person .npz files (the DexYCB joints) found")
    sources = open_sources(files)
    base = os.path.basename(os.path.normpath(root))
    for src in sources:
        src.files = src.files or [src.path]  # hash the real file, record the short name
        src.path = f"{base}/{os.path.basename(src.path)}"
    return sources


def build_default_limits(folder: str | None = None) -> Limits:
    """Fit the packaged default limits on the real people of ``folder`` (deterministic)."""
    extra: dict[str, str | int | float | bool] = {
        "origin": "bmc_calib.default_bundle.build_default_limits (real data)",
        "data": DATA_NAME,
        "data_licence": DATA_LICENCE,
    }
    return fit_limits(real_sources(folder), FitOptions(), extra_parameters=extra)


def build_synthetic_limits() -> Limits:
    """Fit limits on the synthetic people (deterministic; about two seconds)."""
    extra: dict[str, str | int | float | bool] = {
        "origin": "bmc_calib.default_bundle.build_synthetic_limits (synthetic subjects)",
        "synthetic_subjects": SUBJECTS,
        "synthetic_subject_seed": SUBJECT_SEED,
        "synthetic_poses_per_subject": POSES_PER_SUBJECT,
        "synthetic_pose_seed": POSE_SEED,
        "synthetic_noise_mm": NOISE_MM,
        "synthetic_glitch_fraction": GLITCH_FRACTION,
    }
    return fit_limits(synthetic_sources(), FitOptions(), extra_parameters=extra)


def packaged_path() -> contextlib.AbstractContextManager[os.PathLike[str]]:
    """Context manager giving a real file path of the packaged bundle."""
    return resources.as_file(resources.files(PACKAGE).joinpath(PACKAGED_NAME))


@dataclass
class BundleChoice:
    """The limits ``validate`` uses, where they came from, and the file's metadata."""

    limits: Limits
    path: str
    origin: str
    info: bundle.BundleInfo


def choose_bundle(path: str | os.PathLike[str] | None = None) -> BundleChoice:
    """Read the bundle named by ``path``, else ``./limits.h5``, else the packaged default.

    The content digest is verified: a modified bundle raises :class:`BadInputError`.
    """
    if path is not None and os.fspath(path) != DEFAULT_NAME:
        return _read(os.fspath(path), ORIGIN_OPTION)
    if path is None and os.path.isfile(LOCAL_NAME):
        return _read(os.path.join(".", LOCAL_NAME), ORIGIN_LOCAL)
    with packaged_path() as packaged:
        if not os.path.isfile(packaged):
            raise BadInputError(
                f"{packaged}: the packaged default bundle is missing (broken install?); "
                "pass --limits or reinstall bmc-calib"
            )
        choice = _read(os.fspath(packaged), ORIGIN_PACKAGED)
    return choice


def _read(path: str, origin: str) -> BundleChoice:
    limits, info = bundle.inspect_bundle(path)
    problem = info.problem()
    if problem is not None:
        raise BadInputError(f"{problem}; refit or restore it")
    return BundleChoice(limits=limits, path=path, origin=origin, info=info)


def main(argv: list[str] | None = None) -> None:
    """Rebuild the default bundle (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Rebuild the packaged default limits bundle.")
    parser.add_argument("-o", "--output", help="where to write (default: the packaged file)")
    parser.add_argument("--data", help=f"folder of per-person files (default {DATA_FOLDER})")
    args = parser.parse_args(argv)
    if args.output is None:
        with packaged_path() as packaged:
            target = os.fspath(packaged)
    else:
        target = args.output
    try:
        digest = bundle.write_bundle(build_default_limits(args.data), target, force=True)
    except BMCError as exc:  # e.g. no data folder: one line, no traceback
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(exc.exit_code) from None
    sys.stdout.write(f"{digest}  {target}\n")


if __name__ == "__main__":  # pragma: no cover
    main()
