"""Rich rendering of the summaries of :mod:`bmc_calib.summary` for people (stderr)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bmc_calib.edits import EDIT_LABELS


def _pct(x: Any) -> str:
    value = _number(x)
    return "–" if value is None else f"{100.0 * value:.1f} %"


def _number(x: Any) -> float | None:
    """``x`` as a float when it is one real number (statistics of a damaged or newer bundle
    may hold anything), else ``None``."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    return float(x)


def _text(x: Any) -> str:
    """A value as rich markup that shows exactly it (file names may hold ``[…]``)."""
    return escape(str(x))


def _table(title: str) -> Table:
    return Table(
        title=_text(title),
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
            _text(s["path"]),
            _text(s["format"]),
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
            _text(r["name"]),
            f"{r['min' + suffix]:.{digits}f}",
            f"{r['max' + suffix]:.{digits}f}",
            f"{r['tolerance' + suffix]:.{digits}f}",
        )
    return t


def joint_angle_table(rows: list[dict[str, Any]]) -> Table:
    t = _table(
        "Joint-angle regions [deg]: flexion and abduction extent of the stored region; "
        "vertices exact/RDP/final"
    )
    cols = ("joint", "vertices", "cover%", "area", "flexion", "abduction", "centre", "tol")
    for col in cols:
        t.add_column(col, justify="left" if col == "joint" else "right", no_wrap=True)
    for r in rows:
        verts = "/".join(
            str(r[k]) for k in ("exact_hull_vertices", "rdp_hull_vertices", "hull_vertices")
            if k in r
        )  # fmt: skip
        fr = r.get("region_flexion_deg", r["flexion_range_deg"])
        ar = r.get("region_abduction_deg", r["abduction_range_deg"])
        t.add_row(
            _text(r["name"]),
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
    console.print(f"Tolerances: {_text(method)}", highlight=False)
    if "person_level_method" in stats:
        console.print(
            f"Bone lengths and palm: {_text(stats.get('person_level_method'))}; "
            f"{_text(stats.get('person_level_people'))} people, "
            f"{_text(stats.get('person_level_hands'))} "
            f"hands, k = {_number(stats.get('person_level_factor')) or 0.0:.2f}",
            highlight=False,
            soft_wrap=True,
        )
    if "heldout_false_flag_rate_mean" in stats:
        console.print(
            "Held-out false-flag rate on an unseen group: "
            f"mean {_pct(stats.get('heldout_false_flag_rate_mean'))}, "
            f"worst {_pct(stats.get('heldout_false_flag_rate_max'))} "
            f"(without tolerances: {_pct(stats.get('heldout_flag_rate_without_tolerance_mean'))})",
            highlight=False,
            soft_wrap=True,
        )
        families = [
            f"{f.replace('_', ' ')} {_pct(stats[f'heldout_false_flag_rate_{f}_mean'])}"
            for f in ("bone_length", "palm_curvature", "palm_angle", "joint_angle")
            if f"heldout_false_flag_rate_{f}_mean" in stats
        ]
        if families:
            console.print("  by family (mean): " + ", ".join(families), highlight=False)
        caught = [
            f"{label} {_pct(stats[f'heldout_edit_caught_{kind}_mean'])}"
            for kind, label in EDIT_LABELS.items()
            if f"heldout_edit_caught_{kind}_mean" in stats
        ]
        if caught:
            console.print(
                "Impossible edits of held-out poses caught (mean): " + ", ".join(caught),
                highlight=False,
                soft_wrap=True,
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
    console.print(
        f"Wrote [bold]{_text(summary['output'])}[/bold] ({summary['content_digest']})",
        highlight=False,
        soft_wrap=True,
    )


def _digest_line(name: str, summary: dict[str, Any]) -> str:
    """``content digest sha256:…: ok`` (or MISMATCH with the computed value); an attribute
    digest that is absent where it may be (bundles before 1.2) says so."""
    stored, computed = summary[f"{name}_digest"], summary[f"{name}_digest_computed"]
    if summary[f"{name}_digest_ok"]:
        if stored is None:
            return f"{name} digest: none (bundles before 1.2 have none)"
        return f"{name} digest {_text(stored)}: [green]ok[/green]"
    shown = "missing" if stored is None else _text(stored)
    return f"{name} digest {shown}: [red]MISMATCH[/red] (computed {_text(computed)})"


def bundle_report(console: Console, summary: dict[str, Any]) -> None:
    """The human view of ``bmc-calib inspect``."""
    console.print(f"[bold]{_text(summary['path'])}[/bold]", highlight=False, soft_wrap=True)
    console.print(
        f"bmc-limits bundle v{_text(summary['encoding_version'])}, written by "
        f"{_text(summary['tool_name'])} {_text(summary['tool_version'])} at "
        f"{_text(summary['created'])}"
    )
    console.print(
        f"skeleton {_text(summary['skeleton'])}, normalization "
        f"{_text(summary['normalization'])}, length unit {_text(summary['length_unit'])}, "
        f"coverage {_text(summary['coverage'])}"
    )
    for name in ("content", "attribute"):  # each digest with its own verdict
        console.print(_digest_line(name, summary), soft_wrap=True)
    if summary.get("ignored"):
        console.print(
            f"ignored (added by a newer minor version): {_text(', '.join(summary['ignored']))}",
            soft_wrap=True,
        )
    params = ", ".join(f"{k}={v}" for k, v in summary["parameters"].items())
    console.print(f"fit parameters: {_text(params)}")
    console.print(sources_table(summary))
    console.print("Input files (SHA-256):")
    for s in summary["sources"]:
        console.print(
            f"  {_text(s['sha256'])}  {_text(s['path'])}", highlight=False, soft_wrap=True
        )
    limits_tables(console, summary)
    heldout_lines(console, summary["statistics"])


def _amount(value: float, unit: str) -> str:
    if unit == "fraction":
        return f"{100.0 * value:.1f} %"
    if unit == "deg":
        return f"{value:.1f}°"
    return f"{value:.3f}"


#: human names of the constraint families
FAMILY_LABELS = {
    "bone_length": "bone length",
    "palm_curvature": "palm curvature",
    "palm_angle": "palm angle",
    "joint_angle": "joint angle",
}


def validate_tables(summary: dict[str, Any]) -> list[Table]:
    """Verdicts, families, joints (and bones / palm items that were violated)."""
    verdicts = _table("Verdicts")
    for col in ("verdict", "poses", "rate"):
        verdicts.add_column(col, justify="left" if col == "verdict" else "right")
    for name in ("plausible", "implausible", "degenerate"):
        verdicts.add_row(name, str(summary[name]), _pct(summary["rates"][name]))

    families = _table("Constraints violated")
    for col in ("constraint", "poses", "rate", "worst seen"):
        families.add_column(col, justify="left" if col == "constraint" else "right")
    for family, rec in summary["families"].items():
        families.add_row(
            FAMILY_LABELS.get(family, family),
            str(rec["poses"]),
            _pct(rec["rate"]),
            _amount(rec["max"], rec["unit"]),
        )

    joints = _table("Joint angles [deg outside]")
    for col in ("joint", "poses", "rate", "worst seen", "tolerance"):
        joints.add_column(col, justify="left" if col == "joint" else "right")
    for r in summary["joints"]:
        joints.add_row(
            r["label"],
            str(r["poses"]),
            _pct(r["rate"]),
            f"{r['max_deg']:.1f}",
            f"{r['tolerance_deg']:.2f}",
        )
    tables = [verdicts, families, joints]

    others = _table("Other violated items")
    for col in ("constraint", "item", "poses", "rate", "worst seen", "tolerance"):
        others.add_column(col, justify="left" if col in ("constraint", "item") else "right")
    units = {f: rec["unit"] for f, rec in summary["families"].items()}
    for family, key, suffix in (
        ("bone_length", "bones", ""),
        ("palm_curvature", "palm_curvature", ""),
        ("palm_angle", "palm_angle", "_deg"),
    ):
        for r in summary[key]:
            if r["poses"]:
                others.add_row(
                    FAMILY_LABELS[family],
                    r["label"],
                    str(r["poses"]),
                    _pct(r["rate"]),
                    _amount(r["max" + suffix], units[family]),
                    _amount(r["tolerance" + suffix], units[family]),
                )
    if others.row_count:
        tables.append(others)
    return tables


def validate_report(console: Console, summary: dict[str, Any]) -> None:
    """The human summary of ``bmc-calib validate``."""
    if len(summary["sources"]) > 1:
        files = _table("Inputs")
        files.add_column("file", overflow="fold")
        for col in ("poses", "plausible", "implausible", "degenerate"):
            files.add_column(col, justify="right")
        for s in summary["sources"]:
            files.add_row(
                _text(s["path"]),
                str(s["poses"]),
                str(s["plausible"]),
                str(s["implausible"]),
                str(s["degenerate"]),
            )
        console.print(files)
    for table in validate_tables(summary):
        console.print(table)
    if summary["worst_poses"]:
        console.print("Worst poses:")
        for w in summary["worst_poses"]:
            console.print(
                f"  frame {w['frame']} (file {_text(w['source'])}): {_text(w['reason'])}",
                highlight=False,
                soft_wrap=True,
            )
    if summary["degenerate"]:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["degenerate_reasons"].items() if v)
        console.print(f"Degenerate poses: {summary['degenerate']} ({reasons})")
        for d in summary["degenerate_examples"]:
            console.print(
                f"  frame {d['frame']} (file {_text(d['source'])}): "
                f"{_text(', '.join(d['reasons']))}",
                highlight=False,
                soft_wrap=True,
            )
    acc = summary.get("accuracy")
    if acc:
        unit = acc["unit"]
        console.print(
            f"Accuracy vs ground truth ({acc['poses']} poses"
            + (f", {acc['skipped']} skipped: not finite or out of range" if acc["skipped"] else "")
            + f"): MPJPE {_mm(acc[f'mpjpe_root_aligned_{unit}'])} {unit} root-aligned, "
            f"{_mm(acc[f'mpjpe_procrustes_{unit}'])} {unit} Procrustes; PCK AUC 0–50 / 20–50 "
            f"{unit}: {_auc(acc['pck_auc_0_50_root_aligned'])} / "
            f"{_auc(acc['pck_auc_20_50_root_aligned'])} root-aligned, "
            f"{_auc(acc['pck_auc_0_50_procrustes'])} / {_auc(acc['pck_auc_20_50_procrustes'])} "
            "Procrustes",
            highlight=False,
            soft_wrap=True,
        )
        by = acc["by_verdict"]
        parts = [
            f"{name} {_mm(rec[f'mpjpe_procrustes_{unit}'])} {unit} ({rec['poses']})"
            for name, rec in by.items()
            if rec["poses"]
        ]
        console.print("  Procrustes MPJPE by verdict: " + ", ".join(parts), highlight=False)
    own = summary.get("personal_check")
    if own:
        worst = sorted(own["bones"], key=lambda b: -b["poses"])[:3]
        named = ", ".join(f"{b['name']} {b['poses']}" for b in worst if b["poses"])
        console.print(
            f"Personal bone check (--group-by {own['group_by']}, {own['groups']} groups): "
            f"{own['poses']} poses ({_pct(own['rate'])}) have a bone more than "
            f"{100 * min(b['allowance'] for b in own['bones']):.0f} % off their group's own "
            "length" + (f" ({named})" if named else ""),
            highlight=False,
            soft_wrap=True,
        )
    tolerance_lines(console, summary)
    if summary.get("diagnosis"):
        console.print(f"hint: {_text(summary['diagnosis'])}", highlight=False, soft_wrap=True)
    verdict = "[red]FAIL[/red]" if summary["failed"] else "[green]OK[/green]"
    console.print(
        f"{verdict}: {summary['plausible']} of {summary['poses']} poses plausible, "
        f"{summary['implausible']} implausible, {summary['degenerate']} degenerate "
        f"(--fail-on {summary['fail_on']})"
    )


def _mm(x: Any) -> str:
    return "–" if x is None else f"{float(x):.2f}"


def _auc(x: Any) -> str:
    return "–" if x is None else f"{float(x):.3f}"


def tolerance_lines(console: Console, summary: dict[str, Any]) -> None:
    """How the tolerances were estimated and the false-flag rate to expect."""
    b = summary["bundle"]
    scale = summary["tolerance_scale"]
    method = b["tolerance_method"]
    observed = summary["rates"]["implausible"]
    if method == "leave-one-group-out":
        console.print(
            f"Tolerances: bundle's leave-one-group-out estimates over {b['heldout_groups']} "
            f"groups × {scale:g}. Measured on the bundle's own people, each held out in turn "
            f"(at × 1): mean {_pct(b['heldout_false_flag_rate_mean'])}, worst "
            f"{_pct(b['heldout_false_flag_rate_max'])} of a new person's real poses flagged; "
            f"here: {_pct(observed)}"
            + ("" if scale == 1 else "; a smaller scale flags more, a larger one fewer")
            + (
                " (far more: the data may not match the bundle's)"
                if b["heldout_false_flag_rate_max"] is not None
                and observed > 5 * max(float(b["heldout_false_flag_rate_max"]), 0.01)
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
    elif method.startswith("merged"):
        console.print(
            f"Tolerances: {_text(method)} (× {scale:g}); a merged bundle has no held-out "
            f"estimate of its own (each input bundle has its own); here: {_pct(observed)}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"Tolerances: {_text(method or 'not recorded')} (× {scale:g}); no held-out false-flag "
            f"estimate: expect many poses of a new person to be flagged; here: {_pct(observed)}",
            highlight=False,
            soft_wrap=True,
        )
