"""bmc-calib: biomechanical limits of the human hand, measured from 3D hand-joint data.

Library layout (one job per module):

- :mod:`bmc_calib.skeleton`   canonical joints, bones, angle ids, keypoint layouts, mirroring
- :mod:`bmc_calib.kinematics` bone lengths, palm curvature/angles, flexion/abduction
- :mod:`bmc_calib.hulls`      convex-hull pipeline for joint-angle regions
- :mod:`bmc_calib.fit`        limits from poses (coverage, glitch rejection, tolerances)
- :mod:`bmc_calib.violations` per-pose violation magnitudes against limits
- :mod:`bmc_calib.bundle`     versioned HDF5 bundle read/write
- :mod:`bmc_calib.formats`    readers turning files into canonical right-hand poses
- :mod:`bmc_calib.synthetic`  forward kinematics and synthetic subjects
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bmc-calib")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.1.0"

from bmc_calib.errors import BMCError

__all__ = ["BMCError", "__version__"]
