"""The default limits bundle shipped with the package, and how ``validate`` picks a bundle.

The packaged file ``bmc_calib/data/default_limits.h5`` is rebuilt, reproducibly, by::

    python -m bmc_calib.default_bundle            # writes bmc_calib/data/default_limits.h5
    python -m bmc_calib.default_bundle -o x.h5    # anywhere else

It is an ordinary ``fit`` (default options: coverage 0.999, glitch rejection, tolerances by
leave-one-group-out) of :data:`SUBJECTS` synthetic people from :mod:`bmc_calib.synthetic`
(``make_subjects(SUBJECTS, seed=SUBJECT_SEED)``), :data:`POSES_PER_SUBJECT` poses each with
:data:`NOISE_MM` mm annotation noise and :data:`GLITCH_FRACTION` glitch frames, one group per
subject. Only the ``created`` time differs between two builds with the same numpy. The
subjects differ from those of ``data_samples/`` (seed 0), so those files are unseen people
for this bundle.

These limits describe the synthetic hands' ranges of motion (published active ranges, see
:data:`bmc_calib.synthetic.RANGES`), not a recorded population: fit your own bundle on your
data for real use.

Bundle choice for ``validate`` (DESIGN §8): ``--limits PATH`` when given, else
``./limits.h5`` when it exists, else the packaged file (read through
:mod:`importlib.resources`, so it works from an installed wheel).
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
from bmc_calib.errors import BadInputError
from bmc_calib.fit import FitOptions, fit_limits
from bmc_calib.formats.base import Chunk, Source, SourceStats, to_right_hands
from bmc_calib.limits import Limits

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


def default_sources() -> list[Source]:
    """The synthetic recordings the default bundle is fitted on, one source per subject."""
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
            ).joints,
        )
        for i, subject in enumerate(subjects)
    ]


def build_default_limits() -> Limits:
    """Fit the default limits (deterministic; about two seconds)."""
    extra: dict[str, str | int | float | bool] = {
        "origin": "bmc_calib.default_bundle.build_default_limits (synthetic subjects)",
        "synthetic_subjects": SUBJECTS,
        "synthetic_subject_seed": SUBJECT_SEED,
        "synthetic_poses_per_subject": POSES_PER_SUBJECT,
        "synthetic_pose_seed": POSE_SEED,
        "synthetic_noise_mm": NOISE_MM,
        "synthetic_glitch_fraction": GLITCH_FRACTION,
    }
    return fit_limits(default_sources(), FitOptions(), extra_parameters=extra)


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
    if path is not None:
        return _read(os.fspath(path), ORIGIN_OPTION)
    if os.path.isfile(LOCAL_NAME):
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
    if not info.digest_ok:
        raise BadInputError(
            f"{path}: content digest mismatch (stored {info.digest_stored}, computed "
            f"{info.digest_computed}); the bundle was modified or damaged: refit or restore it"
        )
    return BundleChoice(limits=limits, path=path, origin=origin, info=info)


def main(argv: list[str] | None = None) -> None:
    """Rebuild the default bundle (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Rebuild the packaged default limits bundle.")
    parser.add_argument("-o", "--output", help="where to write (default: the packaged file)")
    args = parser.parse_args(argv)
    if args.output is None:
        with packaged_path() as packaged:
            target = os.fspath(packaged)
    else:
        target = args.output
    digest = bundle.write_bundle(build_default_limits(), target, force=True)
    sys.stdout.write(f"{digest}  {target}\n")


if __name__ == "__main__":  # pragma: no cover
    main()
