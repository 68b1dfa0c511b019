"""Rich rendering of the summaries of :mod:`bmc_calib.summary` for people (stderr)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100.0 * float(x):.1f} %"


def _table(title: str) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        show_edge=False,
    )


#: short column labels of rejection rules
RULE_LABELS = {"degenerate": "degenerate", "bone_length_outlier": "glitch"}


def sources_table(summary: dict[str, Any]) -> Table:
    rules = sorted({r for s in summary["sources"] for r in s["rejected"]})
    t = _table("Inputs")
    t.add_column("file", overflow="fold")
    t.add_column("format")
    for col in ("read", "used", *(RULE_LABELS.get(r, r) for r in rules), "mirrored"):
        t.add_column(col, justify="right")
    for s in summary["sources"]:
        t.add_row(
            s["path"],
            s["format"],
            str(s["frames_read"]),
            str(s["frames_used"]),
            *(str(s["rejected"].get(r, 0)) for r in rules),
            str(s["frames_mirrored"]),
        )
    return t


def interval_table(title: str, rows: list[dict[str, Any]], unit: str, digits: int = 3) -> Table:
    deg = unit == "deg"
    suffix = "_deg" if deg else ""
    t = _table(f"{title} [{unit}]")
    for col in ("item", "min", "max", "tolerance"):
        t.add_column(col, justify="left" if col == "item" else "right")
    for r in rows:
        t.add_row(
            r["name"],
            f"{r['min' + suffix]:.{digits}f}",
            f"{r['max' + suffix]:.{digits}f}",
            f"{r['tolerance' + suffix]:.{digits}f}",
        )
    return t


def joint_angle_table(rows: list[dict[str, Any]]) -> Table:
    t = _table("Joint-angle regions [deg]; vertices exact/RDP/final")
    cols = ("joint", "vertices", "cover%", "area", "flexion", "abduction", "centre", "tol")
    for col in cols:
        t.add_column(col, justify="left" if col == "joint" else "right", no_wrap=True)
    for r in rows:
        verts = "/".join(
            str(r[k]) for k in ("exact_hull_vertices", "rdp_hull_vertices", "hull_vertices")
            if k in r
        )  # fmt: skip
        fr, ar = r["flexion_range_deg"], r["abduction_range_deg"]
        t.add_row(
            r["name"],
            verts,
            f"{100 * r['coverage']:.2f}",
            f"{r['hull_area_deg2']:.0f}",
            f"{fr[0]:.1f}…{fr[1]:.1f}",
            f"{ar[0]:.1f}…{ar[1]:.1f}",
            f"{r['flexion_center_deg']:.1f}",
            f"{r['tolerance_deg']:.2f}",
        )
    return t


def limits_tables(console: Console, limits: dict[str, Any]) -> None:
    unit = limits["length_unit"]
    console.print(interval_table("Bone lengths", limits["bone_length"], unit))
    console.print(interval_table("Palm curvature", limits["palm_curvature"], f"1/{unit}"))
    console.print(interval_table("Palm angles", limits["palm_angle"], "deg", digits=2))
    console.print(joint_angle_table(limits["joint_angle"]))


def heldout_lines(console: Console, stats: dict[str, Any]) -> None:
    method = stats.get("tolerance_method", "")
    console.print(f"Tolerances: {method}")
    if "heldout_false_flag_rate_mean" in stats:
        console.print(
            "Held-out false-flag rate on an unseen group: "
            f"mean {_pct(stats['heldout_false_flag_rate_mean'])}, "
            f"worst {_pct(stats['heldout_false_flag_rate_max'])} "
            f"(without tolerances: {_pct(stats.get('heldout_flag_rate_without_tolerance_mean'))})"
        )


def fit_report(console: Console, summary: dict[str, Any]) -> None:
    """The human summary of ``bmc-calib fit``."""
    limits = summary["limits"]
    console.print(sources_table(limits))
    rejected = ", ".join(f"{k} {v}" for k, v in summary["frames_rejected"].items())
    console.print(
        f"Frames: read {summary['frames_read']}, used {summary['frames_used']}, "
        f"rejected {rejected or 'none'}, mirrored {summary['frames_mirrored']}"
    )
    limits_tables(console, limits)
    heldout_lines(console, limits["statistics"])
    console.print(f"Wrote [bold]{summary['output']}[/bold] ({summary['content_digest']})")


def bundle_report(console: Console, summary: dict[str, Any]) -> None:
    """The human view of ``bmc-calib inspect``."""
    digest = "[green]ok[/green]" if summary["digest_ok"] else "[red]MISMATCH[/red]"
    console.print(f"[bold]{summary['path']}[/bold]")
    console.print(
        f"bmc-limits bundle v{summary['encoding_version']}, written by {summary['tool_name']} "
        f"{summary['tool_version']} at {summary['created']}"
    )
    console.print(
        f"skeleton {summary['skeleton']}, normalization {summary['normalization']}, "
        f"length unit {summary['length_unit']}, coverage {summary['coverage']}"
    )
    console.print(f"content digest {summary['content_digest']}: {digest}")
    params = ", ".join(f"{k}={v}" for k, v in summary["parameters"].items())
    console.print(f"fit parameters: {params}")
    console.print(sources_table(summary))
    limits_tables(console, summary)
    heldout_lines(console, summary["statistics"])
