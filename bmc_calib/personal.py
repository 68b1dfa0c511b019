"""The personal bone check: within one person or recording, bones keep their length.

A pose whose bone is far from the median of *its own group* (a person, a sequence, a file;
the hands of one side apart) is implausible even when the bone lies inside the population
interval: a phalanx 60 % too long on one frame of a recording whose other frames agree.

Magnitude per bone (relative, like the population bone check): ``max(0, |x / m − 1| − a)``
with ``x`` the pose's normalised bone length, ``m`` its group's median and ``a`` the
allowance :func:`allowance` (at least :data:`PERSONAL_FLOOR`, more where the fit measured
more within-person spread). Shapes: lengths ``(n, 20)``, group ids ``(n,)``.
"""

from __future__ import annotations

import numpy as np

from bmc_calib import population, skeleton
from bmc_calib.limits import Limits

#: Smallest relative deviation from one's own median that counts (0.15 = 15 %): annotation
#: and prediction noise of a few millimetres on a 20 mm phalanx stays below it.
PERSONAL_FLOOR = 0.15
GROUP_BY: tuple[str, ...] = ("label", "file", "none")
#: frames per group used for its medians (evenly spaced)
MEDIAN_FRAMES = 20_000


def allowance(limits: Limits) -> np.ndarray:
    """``(20,)`` relative allowance per bone: the fit's within-person spread, at least the
    floor (bundles without ``within_person`` use the floor)."""
    within = limits.bone_length.within_person
    floor = np.full(skeleton.NUM_BONES, PERSONAL_FLOOR)
    return floor if within is None else np.maximum(floor, within)


def group_medians(lengths: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, 20)`` median bone lengths per group (1 where a group has no pose)."""
    out = population.group_medians(lengths, group, n_groups)
    return np.where(out > 0, out, 1.0)  # NaN > 0 is False: empty groups get 1


def personal_violation(
    lengths: np.ndarray, reference: np.ndarray, allowed: np.ndarray
) -> np.ndarray:
    """``(n, 20)`` magnitudes: relative deviation from the own-group median beyond ``allowed``.

    ``reference`` ``(n, 20)`` is each pose's group median; degenerate poses (all-zero
    lengths) give 0.
    """
    x = np.asarray(lengths, dtype=np.float64)
    ref = np.where(reference > 0, reference, 1.0)
    dev = np.abs(x / ref - 1.0) - allowed
    return np.where(x.any(axis=1, keepdims=True), np.maximum(dev, 0.0), 0.0)
