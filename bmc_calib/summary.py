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
            # the stored region's extent (what validate checks against) ...
            "region_flexion_deg": _floats(
                np.array([ja.hulls[a][:, 0].min(), ja.hulls[a][:, 0].max()]) * deg
            ),
            "region_abduction_deg": _floats(
                np.array([ja.hulls[a][:, 1].min(), ja.hulls[a][:, 1].max()]) * deg
            ),
            # ... and the coverage quantile box (the independent-limits variant)
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
        "heldout": heldout_summary(limits),
        "limits": limits_summary(limits),
    }


def heldout_summary(limits: Limits) -> dict[str, Any] | None:
    """The nested leave-one-group-out figures: false flags per family, edits caught."""
    from bmc_calib import edits
    from bmc_calib.violations import FAMILIES

    stats = limits.statistics
    if "heldout_false_flag_rate_mean" not in stats:
        return None
    out: dict[str, Any] = {
        "groups": _jsonable(stats.get("heldout_groups")),
        "false_flag_rate": {
            "all": {
                "mean": _jsonable(stats.get("heldout_false_flag_rate_mean")),
                "max": _jsonable(stats.get("heldout_false_flag_rate_max")),
                "per_group": _jsonable(stats.get("heldout_false_flag_rate")),
            },
        },
        "edits_caught": {},
        "person_level": {
            "method": _jsonable(stats.get("person_level_method")),
            "factor": _jsonable(stats.get("person_level_factor")),
            "people": _jsonable(stats.get("person_level_people")),
            "hands": _jsonable(stats.get("person_level_hands")),
            "confidence": _jsonable(limits.provenance.parameters.get("person_confidence")),
        },
    }
    for family in FAMILIES:
        arr = _numbers(stats.get(f"heldout_false_flag_rate_{family}"))
        if arr is not None and arr.size:
            out["false_flag_rate"][family] = {
                "mean": float(arr.mean()), "max": float(arr.max()), "per_group": _jsonable(arr)
            }  # fmt: skip
    for kind in edits.EDIT_KINDS:
        if f"heldout_edit_caught_{kind}_mean" in stats:
            out["edits_caught"][kind] = {
                "label": edits.EDIT_LABELS[kind],
                "mean": _jsonable(stats.get(f"heldout_edit_caught_{kind}_mean")),
                "min": _jsonable(stats.get(f"heldout_edit_caught_{kind}_min")),
            }
    return out


def _numbers(value: Any) -> np.ndarray | None:
    """A statistic as a float array; ``None`` when it is absent or not numeric (a bundle of a
    newer minor version, or one whose statistics were damaged)."""
    if value is None or isinstance(value, str):
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        return None
    return arr.astype(float).reshape(-1)


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


#: a group with fewer used frames than this share of the median group's, and fewer than
#: SMALL_GROUP_FRAMES, narrows the consensus regions to what its few poses reach
SMALL_GROUP_SHARE = 0.05
SMALL_GROUP_FRAMES = 200


def group_hints(limits: Limits) -> list[str]:
    """Advice after a fit whose groups cannot give usable regions: two groups (the regions are
    their intersection, with no held-out tolerance), a group of a handful of poses beside
    large ones (it narrows every region to what those poses reach), or inputs with identical
    contents (copies count as separate people; the held-out figures then hold a copy of the
    held-out person in the training folds)."""
    out = []
    stats = limits.statistics
    names = [str(n) for n in np.asarray(stats.get("groups", []), dtype=object).tolist()]
    used = np.asarray(stats.get("group_frames_used", []), dtype=np.int64)
    if len(names) == 2:
        out.append(
            "2 groups: each joint-angle region keeps only what both reach and has no held-out "
            "tolerance, so many correct poses will be flagged; fit 3 or more people, or pool "
            "them with --group-by none"
        )
    if len(used) >= 2 and len(used) == len(names):
        typical = float(np.median(used))
        small = [
            f"{name} ({count} poses)"
            for name, count in zip(names, used.tolist(), strict=True)
            if count < SMALL_GROUP_FRAMES and count < SMALL_GROUP_SHARE * typical
        ]
        if small:
            out.append(
                f"group(s) {', '.join(small[:3])} hold few poses beside the others (median "
                f"{typical:.0f}): the regions keep only what every group reaches, so these "
                "few poses narrow them; leave such groups out or join them to another"
            )
    digests: dict[str, str] = {}
    for source in limits.provenance.sources:
        first = digests.setdefault(source.sha256, source.path)
        if first != source.path:
            out.append(
                f"{source.path} has the same contents as {first}: copies count as separate "
                "people, which widens the limits and makes the held-out figures meaningless"
            )
            break
    return out


def tolerance_hints(limits: Limits) -> list[str]:
    """Advice after a fit whose tolerance quantile lies above the default 0.999 (e.g.
    ``--coverage 1``, whose tolerance quantile defaults to 1: the largest held-out distance)
    and whose held-out edits are then often missed."""
    from bmc_calib import edits

    quantile = float(limits.provenance.parameters.get("tolerance_quantile", 0.0) or 0.0)
    if quantile <= 0.999:
        return []
    stats = limits.statistics
    caught = {
        kind: float(stats[f"heldout_edit_caught_{kind}_mean"])
        for kind in edits.EDIT_KINDS
        if f"heldout_edit_caught_{kind}_mean" in stats
    }
    missed = {kind: rate for kind, rate in caught.items() if rate < 0.9}
    if not missed:
        return []
    kind = min(missed, key=missed.__getitem__)
    return [
        f"the tolerances are the {quantile:g} quantile of held-out distances, so impossible "
        f"edits are often let through ({edits.EDIT_LABELS[kind]} caught in "
        f"{100 * missed[kind]:.0f} % of held-out poses); --tolerance-quantile 0.999 keeps "
        "these regions with tighter tolerances"
    ]


def unit_hints(sources: Sequence[Any], limits: Limits) -> list[str]:
    """Advice after a fit without normalisation whose inputs are not in one unit."""
    from bmc_calib import diagnose

    if limits.normalization != "none":
        return []  # (the reference-bone normalisation makes units irrelevant)
    found = diagnose.scale_mismatch(list(sources))
    return [] if found is None else [found]


def glitch_hints(sources: Sequence[Any], limits: Limits, max_deviation: float) -> list[str]:
    """Advice after a fit that rejected many frames as glitches: another reading of the
    inputs (layout) under which far fewer frames break the glitch rule, when there is one."""
    from bmc_calib import diagnose
    from bmc_calib.errors import UsageError

    stats = limits.statistics
    read = int(stats.get("frames_read", 0))
    rejected = int(stats.get("rejected_bone_length_outlier", 0))
    if not read or rejected / read < diagnose.GLITCH_SHARE:
        return []
    sample, layout = diagnose.first_frames(list(sources))
    try:
        found = diagnose.glitch_mismatch(sample, layout, max_deviation)
    except UsageError:
        found = None
    text = f"{100 * rejected / read:.1f} % of the frames were rejected as glitches"
    if found is not None and found.better:
        name, share = found.better[0]
        return [f"{text}; {name}, only {100 * share:.1f} % of the first frames would be"]
    return [f"{text}: check --layout (the joint order) and the data's units"]


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
        "attribute_digest": getattr(info, "attribute_digest_stored", None),
        "attribute_digest_computed": getattr(info, "attribute_digest_computed", None),
        "digest_ok": bool(info.digest_ok),
        "content_digest_ok": bool(info.content_digest_ok),
        "attribute_digest_ok": bool(info.attribute_digest_ok),
        # what a newer minor version added and this reader ignored (bundle-format §2.4)
        "ignored": list(getattr(info, "unknown", ())),
        **limits_summary(limits),
    }


def _personal(result: Any) -> dict[str, Any] | None:
    """The personal bone check's figures (None when it was off)."""
    from bmc_calib import personal, skeleton

    if result.personal_group_by is None:
        return None
    n = result.poses
    allowed = personal.allowance(result.limits)
    counts = result.personal_item_poses
    return {
        "group_by": result.personal_group_by,
        "groups": int(result.personal_groups),
        "poses": int(result.personal_poses),
        "rate": result.personal_poses / n if n else 0.0,
        "bones": [
            {
                "name": name,
                "poses": int(counts[k]) if counts is not None else 0,
                "allowance": float(allowed[k]),
                "max": float(result.personal_item_max[k]) if counts is not None else 0.0,
            }
            for k, name in enumerate(skeleton.BONE_NAMES)
        ],
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
        "personal_check": _personal(result),
        "diagnosis": result.mismatch,
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
