"""Plain-data summaries of a fit and of a bundle (JSON-ready dicts, snake_case keys).

The CLI prints these with ``--json`` and renders them as tables otherwise; the library never
prints. Angles are reported in degrees here (``*_deg`` keys), everything else as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bmc_calib.limits import Interval, Limits


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(a, dtype=np.float64).ravel()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def interval_summary(interval: Interval, degrees: bool = False) -> list[dict[str, Any]]:
    """One record per item: name, min, max, tolerance (in degrees when ``degrees``)."""
    scale = 180.0 / np.pi if degrees else 1.0
    suffix = "_deg" if degrees else ""
    return [
        {
            "name": name,
            f"min{suffix}": float(lo * scale),
            f"max{suffix}": float(hi * scale),
            f"tolerance{suffix}": float(tol * scale),
        }
        for name, lo, hi, tol in zip(
            interval.names, interval.min, interval.max, interval.tolerance, strict=True
        )
    ]


def joint_angle_summary(limits: Limits) -> list[dict[str, Any]]:
    """One record per angle id: hull sizes, area (deg²), coverage, tolerance, centre, box."""
    ja = limits.joint_angle
    deg = 180.0 / np.pi
    out = []
    for a, name in enumerate(ja.names):
        rec: dict[str, Any] = {
            "id": a,
            "name": name,
            "flexion_center_deg": float(ja.flexion_center[a] * deg),
            "hull_vertices": int(ja.hulls[a].shape[0]),
            "hull_area_deg2": float(ja.area[a] * deg * deg),
            "coverage": float(ja.coverage[a]),
            "tolerance_deg": float(ja.tolerance[a] * deg),
            "flexion_range_deg": _floats(np.array([ja.box_min[a, 0], ja.box_max[a, 0]]) * deg),
            "abduction_range_deg": _floats(np.array([ja.box_min[a, 1], ja.box_max[a, 1]]) * deg),
        }
        if ja.exact_hulls is not None:
            rec["exact_hull_vertices"] = int(ja.exact_hulls[a].shape[0])
        if ja.rdp_hulls is not None:
            rec["rdp_hull_vertices"] = int(ja.rdp_hulls[a].shape[0])
        out.append(rec)
    return out


def limits_summary(limits: Limits) -> dict[str, Any]:
    """Everything a bundle holds, as plain data."""
    prov = limits.provenance
    return {
        "skeleton": limits.skeleton_name,
        "normalization": limits.normalization,
        "length_unit": limits.length_unit,
        "coverage": limits.coverage,
        "bone_length": interval_summary(limits.bone_length),
        "palm_curvature": interval_summary(limits.palm_curvature),
        "palm_angle": interval_summary(limits.palm_angle, degrees=True),
        "joint_angle": joint_angle_summary(limits),
        "sources": [
            {
                "path": s.path,
                "format": s.format,
                "sha256": s.sha256,
                "frames_read": s.frames_read,
                "frames_used": s.frames_used,
                "frames_mirrored": s.frames_mirrored,
                "rejected": dict(s.rejected),
            }
            for s in prov.sources
        ],
        "parameters": _jsonable(dict(prov.parameters)),
        "statistics": _jsonable(dict(limits.statistics)),
    }


def fit_summary(limits: Limits, output: str, digest: str) -> dict[str, Any]:
    """What ``bmc-calib fit --json`` prints."""
    stats = limits.statistics
    rejected = {
        k.removeprefix("rejected_"): int(v) for k, v in stats.items() if k.startswith("rejected_")
    }
    return {
        "output": output,
        "content_digest": digest,
        "frames_read": int(stats.get("frames_read", 0)),
        "frames_used": int(stats.get("frames_used", 0)),
        "frames_mirrored": int(stats.get("frames_mirrored", 0)),
        "frames_rejected": rejected,
        "tolerance_method": str(stats.get("tolerance_method", "")),
        "heldout_false_flag_rate_mean": _jsonable(stats.get("heldout_false_flag_rate_mean")),
        "heldout_false_flag_rate_max": _jsonable(stats.get("heldout_false_flag_rate_max")),
        "limits": limits_summary(limits),
    }


def fit_hints(sources: Sequence[Any], group_by: str) -> list[str]:
    """Advice after a fit: ``--group-by label`` when one group per input gives too few groups
    for held-out tolerances but the inputs' format has per-frame subject/sequence labels."""
    from bmc_calib.fit import MIN_GROUPS_FOR_TOLERANCE
    from bmc_calib.formats import readers

    if group_by != "file" or len(sources) >= MIN_GROUPS_FOR_TOLERANCE:
        return []
    groups = {reader.name: reader.groups for reader in readers()}
    labels = {s.format: groups.get(s.format, "") for s in sources}
    labelled = [f"{name} ({what})" for name, what in labels.items() if what]
    if not labelled:
        return []
    return [
        f"--group-by file made {len(sources)} group(s), fewer than the "
        f"{MIN_GROUPS_FOR_TOLERANCE} held-out tolerances need, so tolerances are 0; the data "
        f"has per-frame labels ({', '.join(labelled)}): rerun with --group-by label"
    ]


def bundle_summary(limits: Limits, info: Any) -> dict[str, Any]:
    """What ``bmc-calib inspect --json`` prints: the bundle's header plus its contents."""
    return {
        "path": str(info.path),
        "encoding_version": info.encoding_version,
        "tool_name": info.tool_name,
        "tool_version": info.tool_version,
        "created": info.created,
        "content_digest": info.digest_stored,
        "content_digest_computed": info.digest_computed,
        "digest_ok": bool(info.digest_ok),
        **limits_summary(limits),
    }


def validate_summary(result: Any, choice: Any, fail_on: str) -> dict[str, Any]:
    """What ``bmc-calib validate --json`` prints.

    ``result`` is a :class:`bmc_calib.validate.Validation`, ``choice`` the
    :class:`bmc_calib.default_bundle.BundleChoice` it was checked against. Rates are
    fractions of all poses. Bone-length magnitudes are fractions of the violated limit, palm
    curvature in 1 / the bundle's length unit, angles in degrees (``*_deg``).
    """
    from bmc_calib import validate as v

    limits = result.limits
    n = result.poses

    def rate(count: int) -> float:
        return count / n if n else 0.0

    def items(family: str, key_suffix: str) -> list[dict[str, Any]]:
        f = v.FAMILIES.index(family)
        factor = v.DISPLAY_FACTOR[family]
        out = []
        for i in range(int(v.FAMILY_OFFSETS[f]), int(v.FAMILY_OFFSETS[f + 1])):
            count = int(result.item_poses[i])
            out.append(
                {
                    "name": v.ITEM_NAMES[i],
                    "label": v.item_label(i),
                    "poses": count,
                    "rate": rate(count),
                    f"max{key_suffix}": float(result.item_max[i] * factor),
                    f"tolerance{key_suffix}": float(result.tolerance[i] * factor),
                }
            )
        return out

    families = {}
    for f, family in enumerate(v.FAMILIES):
        part = slice(int(v.FAMILY_OFFSETS[f]), int(v.FAMILY_OFFSETS[f + 1]))
        count = int(result.family_poses[f])
        families[family] = {
            "poses": count,
            "rate": rate(count),
            "max": float(result.item_max[part].max() * v.DISPLAY_FACTOR[family]),
            "unit": v.display_unit(family, limits),
        }
    stats = limits.statistics
    info = choice.info
    summary: dict[str, Any] = {
        "poses": n,
        "plausible": result.count("plausible"),
        "implausible": result.count("implausible"),
        "degenerate": result.count("degenerate"),
        "rates": {name: rate(result.count(name)) for name in v.VERDICTS},
        "failed": result.failed(fail_on),
        "fail_on": fail_on,
        "tolerance_scale": result.tolerance_scale,
        "families": families,
        "joints": items("joint_angle", "_deg"),
        "bones": items("bone_length", ""),
        "palm_curvature": items("palm_curvature", ""),
        "palm_angle": items("palm_angle", "_deg"),
        "degenerate_reasons": dict(result.degenerate_reasons),
        "worst_poses": [
            {
                "source": w.source,
                "frame": w.frame,
                "constraint": w.family,
                "item": w.item,
                "magnitude": w.magnitude,
                "unit": w.unit,
                "direction": w.direction,
                "violations": w.violations,
                "reason": w.reason,
            }
            for w in result.worst
        ],
        "degenerate_examples": [
            {"source": d.source, "frame": d.frame, "reasons": list(d.reasons)}
            for d in result.degenerate_examples
        ],
        "sources": [
            {
                "path": path,
                "poses": int(counts.sum()),
                **{name: int(counts[k]) for k, name in enumerate(v.VERDICTS)},
            }
            for path, counts in zip(result.sources, result.source_counts, strict=True)
        ],
        "bundle": {
            "path": choice.path,
            "origin": choice.origin,
            "encoding_version": info.encoding_version,
            "tool_version": info.tool_version,
            "created": info.created,
            "content_digest": info.digest_stored,
            "normalization": limits.normalization,
            "length_unit": limits.length_unit,
            "coverage": limits.coverage,
            "tolerance_method": str(stats.get("tolerance_method", "")),
            "heldout_groups": len(_jsonable(stats.get("heldout_groups", [])) or []),
            "heldout_false_flag_rate_mean": _jsonable(stats.get("heldout_false_flag_rate_mean")),
            "heldout_false_flag_rate_max": _jsonable(stats.get("heldout_false_flag_rate_max")),
        },
        "accuracy": None,
    }
    acc = result.accuracy
    if acc is not None:
        unit = result.accuracy_unit
        accuracy: dict[str, Any] = {
            "unit": unit,
            "poses": acc.poses,
            "skipped": acc.skipped,
            f"mpjpe_root_aligned_{unit}": acc.mpjpe_root,
            f"mpjpe_procrustes_{unit}": acc.mpjpe_procrustes,
        }
        for name, aucs in (("root_aligned", acc.auc_root), ("procrustes", acc.auc_procrustes)):
            for (lo, hi), value in aucs.items():
                accuracy[f"pck_auc_{lo:g}_{hi:g}_{name}"] = value
        accuracy["by_verdict"] = {
            name: {
                "poses": acc.by_group[k]["poses"],
                f"mpjpe_root_aligned_{unit}": acc.by_group[k]["mpjpe_root"],
                f"mpjpe_procrustes_{unit}": acc.by_group[k]["mpjpe_procrustes"],
            }
            for k, name in enumerate(v.VERDICTS)
        }
        summary["accuracy"] = accuracy
    return _jsonable(summary)
