"""The filter report of `distill`: the pseudo-label filters' precision against coverage on held-out labelled clips.

Usage:
    summary = measure_filters(evidence, cfg.filter, fit.point, run / "pseudo")   # filters.json + the PNG

Every point is cross-fitted: fold k's labelled clips are held out as if unlabelled, calibration, agent weights and
thresholds are fitted on the other folds, and the thresholds fold k's filter applied on the pool are applied to
fold k's clips, so the measured filter is the applied filter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from clips.io import atomic_write_text
from pseudo.measure import (
    FilterPoint,
    calibration_summary,
    plot_precision_coverage,
    precision_at_coverage,
    sweep_families,
)
from pseudo.select import FilterConfig
from student.inputs import AgentEvidence

# the FixMatch-style baseline the ablation and the filter report compare the chosen filter with
BASELINE_THRESHOLD = 0.95


def baseline_filter(cfg: FilterConfig) -> FilterConfig:
    """The FixMatch-style fixed-threshold filter the ablation and the filter report compare with."""
    return replace(cfg, mask="fixed", threshold=BASELINE_THRESHOLD, class_thresholds={}, target_precision=None,
                   soft=False)


def measure_filters(evidence: AgentEvidence, cfg: FilterConfig, chosen: FilterPoint, out: Path) -> dict:
    """Write out/filters.json (calibration, each family's cross-fitted curve, the chosen filter and the fixed
    baseline, per class kept and precision with Wilson intervals) and out/precision-coverage.png; returns the JSON."""
    curves = sweep_families(evidence.labelled, evidence.y, evidence.fold_of, evidence.pool, evidence.pool_names,
                            cfg, evidence.calibrations)
    baseline = evidence.fit(baseline_filter(cfg)).point
    plot_precision_coverage(curves, out / "precision-coverage.png",
                            marks={"chosen filter": chosen, f"fixed {BASELINE_THRESHOLD}": baseline})
    summary = {
        "note": "labelled clips of fold k held out as unlabelled; calibration, agent weights and thresholds fitted on "
                "the other folds; the thresholds each fold's filter applied on the pool (scored by the agents' fold-k "
                "models) applied to fold k's clips: the measured filter is the applied filter",
        "calibration": calibration_summary(evidence.labelled, evidence.y, evidence.fold_of, evidence.calibrations,
                                           evidence.names),
        "chosen": asdict(chosen), "fixed_baseline": asdict(baseline),
        "fixed_precision_at_chosen_coverage": precision_at_coverage(curves["fixed"], chosen.coverage),
        "curves": {family: [{"value": v, **asdict(p)} for v, p in curve] for family, curve in curves.items()},
    }
    atomic_write_text(out / "filters.json", json.dumps(summary, indent=2, allow_nan=True))
    return summary
