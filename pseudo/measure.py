"""Precision against coverage of the pseudo-label filters, measured on the labelled clips as if unlabelled.

Usage:
    held = hold_out_agents(store.matrix(agents, labelled), y)       # cross-fitted calibration, agent WAFs
    point = measure(held, cfg, counts)                              # kept, coverage, precision, per class
    curves = sweep_families(held, cfg, counts)                      # one curve per threshold rule
    plot_precision_coverage(curves, run / "pseudo" / "precision-coverage.png", marks={"chosen": point})
    thresholds = target_thresholds(held, cfg, 0.95)                 # (6,) per-class thresholds for the pool

The feature agents store out-of-fold probabilities for the labelled clips, so those clips behave like unlabelled
ones with known truth. Calibration is cross-fitted: the temperatures applied to a labelled clip were fitted on
the other folds, so no measured precision saw its own label. The per-class thresholds of `target_thresholds` are
chosen on these same clips: their held-out precision is in-sample for that choice (it is reported as such).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clips.labels import LABELS, NUM_LABELS
from clips.scoring import score
from pseudo.calibration import (
    cross_fit_calibration,
    expected_calibration_error,
    fit_temperatures,
)
from pseudo.filters import evidence_mask
from pseudo.select import FilterConfig, combine_agents, gate_mask, keep_mask

# the sweep of each threshold rule's parameter that draws its precision-coverage curve
SWEEPS: dict[str, tuple[str, list[float]]] = {
    "fixed": ("threshold", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
    "freematch": ("freematch_scale", [0.5, 0.7, 0.8, 0.9, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3]),
    "flexmatch": ("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
    "class_topk": ("topk_fraction", [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
}


@dataclass
class HeldOut:
    """The labelled clips' agent probabilities, ready to be filtered as if unlabelled."""

    # (agents, clips, 6) out-of-fold probabilities as stored
    probs: np.ndarray
    # (agents, clips, 6) the same, temperature-scaled with temperatures fitted on the other folds
    calibrated: np.ndarray
    # (clips,) true label indices
    labels: np.ndarray
    # (agents,) temperatures fitted on all labelled clips: those applied to the pool
    temperatures: np.ndarray
    # (agents,) each agent's out-of-fold WAF on the labelled clips it has evidence for
    agent_scores: np.ndarray
    # (agents,) ECE (15 bins) before calibration and after the cross-fitted calibration
    ece_before: np.ndarray
    ece_after: np.ndarray


@dataclass
class FilterPoint:
    """Kept pseudo-labels of one filter on the held-out labelled clips, against their truth."""

    kept: int
    # kept / clips
    coverage: float
    # correct / kept (nan when nothing is kept)
    precision: float
    # per label: kept (by pseudo-label), precision (among those), coverage (kept of the class's true clips)
    per_class: dict[str, dict[str, float]]


def hold_out_agents(probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> HeldOut:
    """Cross-fitted calibration, temperatures and scores of the agents from the labelled clips' probabilities.

    `probs` (agents, clips, 6) are the agents' out-of-fold probabilities of the labelled clips, `labels` (clips,).
    Raises ValueError when there are fewer labelled clips than folds.
    """
    calibrated = cross_fit_calibration(probs, labels, folds, seed)
    has = evidence_mask(probs)                                       # (agents, clips)
    scores = np.array([score(labels[h], p[h].argmax(axis=1)).waf if h.any() else 0.0
                       for p, h in zip(probs, has, strict=True)], dtype=np.float32)
    return HeldOut(
        probs=probs, calibrated=calibrated, labels=labels, temperatures=fit_temperatures(probs, labels),
        agent_scores=scores,
        ece_before=np.array([expected_calibration_error(p, labels) for p in probs], dtype=np.float32),
        ece_after=np.array([expected_calibration_error(p, labels) for p in calibrated], dtype=np.float32),
    )


def held_out_combined(held: HeldOut, cfg: FilterConfig) -> np.ndarray:
    """(clips, 6) the held-out clips' combination under `cfg` (cross-fitted calibration when cfg.calibrate)."""
    probs = held.calibrated if cfg.calibrate else held.probs
    # the cross-fitted probabilities are already calibrated: no second scaling
    return combine_agents(probs, cfg, None, held.agent_scores)


def precision_coverage(kept: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> FilterPoint:
    """Precision and coverage of the pseudo-labels `predicted` (clips,) kept where `kept` (clips,), overall and
    per class, against `truth` (clips,)."""
    correct = kept & (predicted == truth)
    per_class = {}
    for c, label in enumerate(LABELS):
        mine = kept & (predicted == c)
        per_class[label] = {
            "kept": int(mine.sum()),
            "precision": float(correct[mine].mean()) if mine.any() else float("nan"),
            "coverage": float(kept[truth == c].mean()) if (truth == c).any() else float("nan"),
        }
    return FilterPoint(kept=int(kept.sum()), coverage=float(kept.mean()),
                       precision=float(correct[kept].mean()) if kept.any() else float("nan"), per_class=per_class)


def measure(held: HeldOut, cfg: FilterConfig, labelled_counts: np.ndarray,
            thresholds: np.ndarray | None = None) -> FilterPoint:
    """The filter `cfg` (with per-class `thresholds` if given) applied to the held-out labelled clips."""
    combined = held_out_combined(held, cfg)
    kept = keep_mask(held.calibrated if cfg.calibrate else held.probs, combined, cfg, labelled_counts, thresholds)
    return precision_coverage(kept, combined.argmax(axis=1), held.labels)


def sweep_families(held: HeldOut, cfg: FilterConfig, labelled_counts: np.ndarray,
                   ) -> dict[str, list[tuple[float, FilterPoint]]]:
    """Per threshold rule, (parameter, point) along its SWEEPS grid, with `cfg`'s other settings."""
    curves = {}
    for family, (field_name, grid) in SWEEPS.items():
        curves[family] = [(value, measure(held, replace(cfg, mask=family, **{field_name: value}), labelled_counts))
                          for value in grid]
    return curves


def precision_at_coverage(curve: list[tuple[float, FilterPoint]], coverage: float) -> float:
    """A curve's precision linearly interpolated at `coverage` (nan outside the curve's coverage range)."""
    points = sorted((p.coverage, p.precision) for _, p in curve if p.kept > 0)
    if not points or not points[0][0] <= coverage <= points[-1][0]:
        return float("nan")
    xs, ys = zip(*points, strict=True)
    return float(np.interp(coverage, xs, ys))


def target_thresholds(held: HeldOut, cfg: FilterConfig, target: float) -> np.ndarray:
    """(6,) per class, the lowest confidence threshold at which the held-out clips that pass `cfg`'s agreement
    gate and are pseudo-labelled with that class reach `target` precision; 1.0 (keep almost nothing) for a
    class that never does. Chosen on the labelled clips: their precision at these thresholds is in-sample."""
    combined = held_out_combined(held, cfg)                          # (clips, 6)
    gate = gate_mask(held.calibrated if cfg.calibrate else held.probs, combined, cfg)
    label, confidence = combined.argmax(axis=1), combined.max(axis=1)
    thresholds = np.ones(NUM_LABELS, dtype=np.float32)
    for c in range(NUM_LABELS):
        idx = np.flatnonzero(gate & (label == c))
        order = idx[np.argsort(-confidence[idx], kind="stable")]
        # precision of keeping the k most confident, k = 1..n; the lowest bar whose precision reaches the target
        precision = np.cumsum(held.labels[order] == c) / np.arange(1, len(order) + 1)
        reach = np.flatnonzero(precision >= target)
        if len(reach):
            thresholds[c] = confidence[order[reach[-1]]]
    return thresholds


def cross_fit_target_point(held: HeldOut, cfg: FilterConfig, labelled_counts: np.ndarray, target: float,
                           folds: int = 5, seed: int = 0) -> FilterPoint:
    """The target-precision filter measured out of sample: each fold's thresholds are chosen on the other folds."""
    from pseudo.calibration import fold_ids

    combined = held_out_combined(held, cfg)
    probs = held.calibrated if cfg.calibrate else held.probs
    ids = fold_ids(len(held.labels), folds, seed + 1)
    kept = np.zeros(len(held.labels), dtype=bool)
    for fold in range(folds):
        others = replace(held, calibrated=held.calibrated[:, ids != fold], probs=held.probs[:, ids != fold],
                         labels=held.labels[ids != fold])
        thresholds = target_thresholds(others, cfg, target)
        kept[ids == fold] = keep_mask(probs[:, ids == fold], combined[ids == fold], cfg, labelled_counts,
                                      thresholds)
    return precision_coverage(kept, combined.argmax(axis=1), held.labels)


def plot_precision_coverage(curves: dict[str, list[tuple[float, FilterPoint]]], path, title: str = "",
                            marks: dict[str, FilterPoint] | None = None) -> None:
    """Write a PNG of precision against coverage, one line per filter family and one marker per entry of `marks`."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clips.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for family, curve in curves.items():
        points = sorted((p.coverage, p.precision) for _, p in curve if p.kept > 0)
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=family)
    for name, point in (marks or {}).items():
        ax.scatter([point.coverage], [point.precision], marker="*", s=160, zorder=5, label=name)
    ax.set_xlabel("coverage (kept / held-out labelled clips)")
    ax.set_ylabel("precision of kept pseudo-labels")
    ax.set_title(title or "pseudo-label filters on held-out labelled clips")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
