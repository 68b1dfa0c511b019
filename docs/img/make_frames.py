"""Draw ``docs/img/frames.png``: the frames and angles of DESIGN §4 on a synthetic right hand.

    python docs/img/make_frames.py      # needs the plot extra (matplotlib)

Left: a synthetic right hand (``bmc_calib.synthetic``, subject_01, a relaxed pose) in its hand
frame (fingers along +y, back of the hand +z, thumb towards −x), with the level-0 frame of the
index finger at its MCP joint and the level-1 frame carried to its PIP joint. Right: how one
bone b gives flexion and abduction in its frame (x into the palm, y towards the thumb, z along
the parent bone).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bmc_calib import synthetic

TARGET = Path(__file__).resolve().parent / "frames.png"
FINGER_COLORS = ("#8c6d46", "#333333", "#7a7a7a", "#7a7a7a", "#7a7a7a")
ELEV, AZIM = 30.0, -150.0
AXIS_COLORS = {"x": "#d62728", "y": "#2ca02c", "z": "#1f5fa8"}


def relaxed_angles() -> np.ndarray:
    """``(15, 2)`` flexion/abduction in radians of a relaxed right hand."""
    degrees = np.zeros((15, 2))
    degrees[0] = (20.0, 10.0)  # thumb CMC
    degrees[1:5, 0] = (15.0, 20.0, 25.0, 30.0)  # finger MCP flexion
    degrees[1:5, 1] = (8.0, 0.0, -5.0, -10.0)  # finger MCP abduction
    degrees[5] = (15.0, 0.0)  # thumb MCP
    degrees[6:10, 0] = (25.0, 30.0, 35.0, 40.0)  # PIP
    degrees[10, 0] = 15.0  # thumb IP
    degrees[11:15, 0] = (15.0, 20.0, 22.0, 25.0)  # DIP
    return np.radians(degrees)


def next_frame(x: np.ndarray, y: np.ndarray, z: np.ndarray, bone: np.ndarray) -> tuple:
    """Frame of the next level: the smallest rotation taking z onto the bone (DESIGN §4.6)."""
    b = bone / np.linalg.norm(bone)
    axis = np.cross(z, b)
    s, c = np.linalg.norm(axis), float(np.dot(z, b))
    if s < 1e-12:
        return x, y, b
    k = axis / s
    angle = math.atan2(s, c)

    def rotate(v: np.ndarray) -> np.ndarray:
        return (
            v * math.cos(angle)
            + np.cross(k, v) * math.sin(angle)
            + k * np.dot(k, v) * (1 - math.cos(angle))
        )

    return rotate(x), rotate(y), b


def arrow(ax, origin: np.ndarray, vector: np.ndarray, color: str, label: str, **kw) -> None:
    ax.quiver(*origin, *vector, color=color, arrow_length_ratio=0.18, lw=2.2, **kw)
    tip = origin + 1.18 * vector
    ax.text(*tip, label, color=color, fontsize=12, fontweight="bold", ha="center", va="center")


def draw_hand(ax) -> None:
    subject = synthetic.make_subjects(1)[0]
    joints = synthetic.forward_kinematics(
        subject.root_bones, relaxed_angles(), subject.finger_lengths
    )
    for finger in range(5):
        chain = [0, *range(4 * finger + 1, 4 * finger + 5)]
        xyz = joints[chain]
        ax.plot(*xyz[:2].T, color="0.55", lw=2.0)  # root bone: part of the palm
        ax.plot(*xyz[1:].T, color=FINGER_COLORS[finger], lw=3.0, marker="o", ms=4)
    mcps = joints[[1, 5, 9, 13, 17]]
    ax.plot(*mcps.T, color="0.75", lw=1.0, ls=":")
    ax.scatter(*joints[0], color="black", s=30)
    for index, name in ((0, "wrist"), (4, "thumb_tip"), (20, "little_tip")):
        ax.text(*(joints[index] + [0, 0, -12]), name, fontsize=10, ha="center", color="0.25")

    x, y, z = (v[1] for v in synthetic.level0_frames(subject.root_bones))  # index finger
    scale = 34.0
    origin = joints[5]
    for name, vector in (("x", x), ("y", y), ("z", z)):
        arrow(ax, origin, scale * vector, AXIS_COLORS[name], name)
    ax.text(
        *(origin + np.array([-6.0, 0.0, 12.0])), "index_mcp", fontsize=10, color="0.1", ha="center"
    )
    x1, y1, z1 = next_frame(x, y, z, joints[6] - joints[5])
    for name, vector in (("x′", x1), ("y′", y1), ("z′", z1)):
        arrow(ax, joints[6], 0.7 * scale * vector, AXIS_COLORS[name[0]], name, alpha=0.75)
    ax.text(*(joints[6] + [0, 0, -24]), "index_pip", fontsize=10, color="0.1", ha="right")

    low, high = joints.min(axis=0) - 12.0, joints.max(axis=0) + 12.0
    high[2] = max(high[2], 30.0)
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1])
    ax.set_zlim(low[2], high[2])
    ax.set_box_aspect(tuple(high - low))
    ax.view_init(elev=ELEV, azim=AZIM)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_ticklabels([])
    ax.set_xlabel("hand x", labelpad=-10)
    ax.set_ylabel("hand y", labelpad=-10)
    ax.set_zlabel("hand z", labelpad=-10)
    ax.set_title("A right hand (palm towards −z) and the frames of the index finger", pad=0)


def arc(ax, start: np.ndarray, end: np.ndarray, radius: float, color: str, label: str) -> None:
    """Arc between two unit vectors, labelled at its middle."""
    angle = math.acos(float(np.clip(np.dot(start, end), -1.0, 1.0)))
    normal = end - np.dot(start, end) * start
    normal /= np.linalg.norm(normal)
    t = np.linspace(0.0, angle, 40)[:, None]
    points = radius * (np.cos(t) * start + np.sin(t) * normal)
    ax.plot(*points.T, color=color, lw=2.0)
    middle = points[len(points) // 2] * 1.25
    ax.text(*middle, label, color=color, fontsize=13, ha="center", va="center")


ANGLE_VIEW = (25.0, -105.0)


def draw_angles(ax) -> None:
    origin = np.zeros(3)
    x, y, z = np.eye(3)
    flexion, abduction = math.radians(50.0), math.radians(35.0)
    b_xz = math.cos(abduction) * (math.sin(flexion) * x + math.cos(flexion) * z)
    b = b_xz + math.sin(abduction) * y
    labels = {
        "x": "x: into the palm",
        "y": "y: towards the thumb",
        "z": "z: along the parent bone",
    }
    for name, vector in (("x", x), ("y", y), ("z", z)):
        ax.quiver(*origin, *vector, color=AXIS_COLORS[name], arrow_length_ratio=0.12, lw=2.2)
        ax.text(
            *(1.15 * vector),
            labels[name],
            color=AXIS_COLORS[name],
            fontsize=11,
            ha="right" if name == "x" else "center",
            va="bottom" if name == "x" else "center",
        )
    ax.quiver(*origin, *b, color="black", lw=3.0, arrow_length_ratio=0.12)
    ax.text(*(1.1 * b), "bone b", fontsize=12, fontweight="bold", ha="left")
    ax.plot(*np.stack([origin, b_xz]).T, color="0.35", ls="--", lw=1.5)
    ax.plot(*np.stack([b_xz, b]).T, color="0.35", ls=":", lw=1.5)
    ax.text(
        *(0.9 * b_xz + [0.08, 0.0, -0.1]),
        "b projected on\nthe x–z plane",
        fontsize=10,
        color="0.3",
        ha="left",
        va="top",
    )
    unit_xz = b_xz / np.linalg.norm(b_xz)
    arc(ax, z, unit_xz, 0.42, AXIS_COLORS["z"], "θf")
    arc(ax, unit_xz, b, 0.7, AXIS_COLORS["x"], "θa")
    ax.set_xlim(-0.1, 1.0)
    ax.set_ylim(-0.1, 1.0)
    ax.set_zlim(-0.1, 1.0)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=ANGLE_VIEW[0], azim=ANGLE_VIEW[1])
    ax.set_axis_off()
    ax.set_title(
        "Flexion θf: from z to b's projection on the x–z plane (> 0 towards the palm)\n"
        "Abduction θa: from that projection to b (> 0 towards the thumb)",
        fontsize=11,
    )


def main() -> None:
    figure = Figure(figsize=(13.0, 6.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    draw_hand(figure.add_subplot(1, 2, 1, projection="3d"))
    draw_angles(figure.add_subplot(1, 2, 2, projection="3d"))
    figure.savefig(TARGET, dpi=100, metadata={"Software": None})
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
