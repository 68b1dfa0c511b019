"""The private temporary scratch folder of a command, and what is stored there.

A :class:`Scratch` is a private folder (``tempfile.mkdtemp`` in the given directory, default
the system's temporary folder, ``TMPDIR``), removed when the command ends, even when it
fails; it counts the bytes written to it (:attr:`Scratch.peak_bytes`). ``fit`` and
``validate`` each use one, told apart by the folder prefix (``bmc-calib-fit-``,
``bmc-calib-validate-``). What is stored there:

- :class:`ChunkTape`: the canonical chunks of one source as a first pass read them, for a
  second pass to replay with the same chunk boundaries (so no input is parsed twice):
  joints ``(n, 21, 3)`` in their own dtype, int32 group ids ``(n,)`` and uint8 mirrored
  flags ``(n,)`` (1 = a left hand, mirrored), appended chunk by chunk;
- :class:`AngleStore`: the used frames' joint angles, one float32 ``(U, 2)`` file per angle
  id, read back one angle id at a time.

A failed write (a full disk) is a one-line :class:`bmc_calib.errors.BadInputError`
(:func:`disk_error`) that names the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from bmc_calib import skeleton
from bmc_calib.errors import BadInputError


class Scratch:
    """A command's scratch space: a private temporary folder, removed when it ends.

    ``prefix`` names the folder (default: fit's); ``label`` names the command in the disk
    error message (:func:`disk_error`). For the fit:

    - Per source that is expensive to read again (anything but ``.npy``, which is streamed
      with plain reads), the canonical chunks the one parse produced (:class:`ChunkTape`).
      The second pass replays them, with the same chunk boundaries, so it computes exactly
      what a second parse would have.
    - The used frames' joint angles (:class:`AngleStore`), read back one angle id at a time
      by the hulls: memory holds one angle id's points, not all 15.

    Disk use (:attr:`peak_bytes`) is 120 bytes per used pose plus, for sources that are
    replayed, 63 × itemsize + 5 bytes per frame.
    """

    def __init__(
        self, directory: str | None = None, *, prefix: str = "bmc-calib-fit-", label: str = "fit"
    ) -> None:
        self.root = tempfile.mkdtemp(prefix=prefix, dir=directory)
        self.label = label
        self.bytes = 0
        self.peak_bytes = 0

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def wrote(self, count: int) -> None:
        self.bytes += count
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def freed(self, count: int) -> None:
        self.bytes -= count

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def disk_error(scratch: Scratch, exc: OSError) -> BadInputError:
    """The one-line error for a failed write of ``scratch`` data."""
    return BadInputError(
        f"cannot write {scratch.label} scratch data in {scratch.root} "
        f"({exc.strerror or exc}); free disk space there or point TMPDIR at a folder with room"
    )


class ChunkTape:
    """The canonical chunks of one source as the first pass read them (see :class:`Scratch`)."""

    def __init__(self, scratch: Scratch, name: str) -> None:
        self.scratch = scratch
        self.file = scratch.path(name)
        self.fh = open(self.file, "wb")
        self.meta: list[tuple[int, np.dtype]] = []
        self.size = 0
        #: what a caller keeps beside each chunk, in memory (validate: its frame numbers)
        self.rows: list[object] = []

    def append(self, joints: np.ndarray, ids: np.ndarray, mirrored: np.ndarray) -> None:
        parts = (
            np.ascontiguousarray(joints),
            np.ascontiguousarray(ids, np.int32),
            np.ascontiguousarray(mirrored, np.uint8),
        )
        try:
            for part in parts:
                self.fh.write(part.tobytes() if part.size == 0 else memoryview(part).cast("B"))
        except OSError as exc:
            raise disk_error(self.scratch, exc) from None
        count = sum(p.nbytes for p in parts)
        self.size += count
        self.scratch.wrote(count)
        self.meta.append((joints.shape[0], joints.dtype))

    def finish(self) -> None:
        try:
            self.fh.close()
        except OSError as exc:
            raise disk_error(self.scratch, exc) from None

    def replay(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(joints, group ids, mirrored)`` per chunk, as they were appended."""
        with open(self.file, "rb") as fh:
            for n, dtype in self.meta:
                joints = np.fromfile(fh, dtype, count=n * skeleton.NUM_JOINTS * 3)
                ids = np.fromfile(fh, np.int32, count=n)
                mirrored = np.fromfile(fh, np.uint8, count=n).astype(np.int32)
                yield joints.reshape(n, skeleton.NUM_JOINTS, 3), ids, mirrored

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.remove(self.file)
        self.scratch.freed(self.size)


class AngleStore:
    """The used frames' joint angles on scratch disk: one float32 ``(U, 2)`` file per angle id.

    ``column(a)`` reads angle id ``a`` of every stored frame, in the order appended; the
    values are exactly the float32 angles an in-memory ``(U, 15, 2)`` array would hold.
    """

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.files = [scratch.path(f"angle_{a:02d}.f32") for a in range(skeleton.NUM_ANGLES)]
        self.handles = [open(f, "wb") for f in self.files]
        self.size = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, skeleton.NUM_ANGLES, 2)

    def __len__(self) -> int:
        return self.size

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        if block.shape[0] == 0:
            return
        try:
            for a, fh in enumerate(self.handles):
                fh.write(memoryview(np.ascontiguousarray(block[:, a])).cast("B"))
        except OSError as exc:
            raise disk_error(self.scratch, exc) from None
        self.size += block.shape[0]
        self.scratch.wrote(block.nbytes)

    def finish(self) -> None:
        try:
            for fh in self.handles:
                fh.close()
        except OSError as exc:
            raise disk_error(self.scratch, exc) from None

    def column(self, a: int) -> np.ndarray:
        return np.fromfile(self.files[a], np.float32).reshape(-1, 2)
