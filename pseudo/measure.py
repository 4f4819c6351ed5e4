"""Cross-fitted pseudo-labelling: per fold of the run's assignment, the filter that makes student fold k's
pseudo-labels, and the same filter measured on fold k's labelled clips held out as if unlabelled.

Usage:
    calibrations = fold_calibrations(labelled_probs, y, fold_of)     # temperatures and agent WAFs per fold
    fit = cross_fit(labelled_probs, y, fold_of, pool_fold_probs, pool_names, FilterConfig(), calibrations)
    fit.pseudo[k]          # PseudoLabels that student fold k trains on
    fit.point              # precision, coverage, per-class kept and Wilson intervals on the held-out clips
    curves = sweep_families(labelled_probs, y, fold_of, pool_fold_probs, pool_names, cfg, calibrations)

For fold k everything is fitted on the labelled clips of the other folds: the agents' label priors and temperatures,
their WAF weights and any target-precision thresholds. The pool is scored by the agents' fold-k models (which never
saw fold k's labels), the filter's rule (quota, caps, adaptive thresholds) runs on the pool, and the per-class
confidence thresholds it amounts to there (pseudo.filters.applied_thresholds) are applied, behind the same agreement
gate, to fold k's labelled clips. So the measured filter is the applied filter, and no measured clip's label took
part in choosing it. `labelled_probs` must be out of fold (each clip scored by a model that never saw its label).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clips.labels import LABELS, NUM_LABELS
from clips.scoring import score
from pseudo.calibration import (
    apply_priors,
    apply_temperatures,
    expected_calibration_error,
    fit_priors,
    fit_temperatures,
)
from pseudo.filters import applied_thresholds, confidence_mask, evidence_mask, wilson_interval
from pseudo.select import FilterConfig, PseudoLabels, combine_agents, gate_mask, select_pseudo_labels

# the sweep of each threshold rule's parameter that draws its precision-coverage curve
SWEEPS: dict[str, tuple[str, list[float]]] = {
    "fixed": ("threshold", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
    "freematch": ("freematch_scale", [0.5, 0.7, 0.8, 0.9, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3]),
    "flexmatch": ("threshold", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]),
    "class_topk": ("topk_fraction", [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
}


@dataclass
class Calibration:
    """What one fold's filter learns from the labelled clips of the other folds."""

    # (agents,) temperatures, fitted on the prior-corrected probabilities
    temperatures: np.ndarray
    # (agents,) each agent's WAF on those clips (where it has evidence), after the prior correction
    agent_scores: np.ndarray
    # (agents, 6) prior weights of each agent (pseudo.calibration.fit_prior); None: no prior correction
    priors: np.ndarray | None = None


@dataclass
class FilterPoint:
    """Kept pseudo-labels of one filter on the held-out labelled clips, against their truth."""

    kept: int
    # kept / clips
    coverage: float
    # correct / kept (nan when nothing is kept)
    precision: float
    # per label: kept (by pseudo-label), precision (among those) with its 95% Wilson interval (precision_low,
    # precision_high), coverage (kept of the class's true clips)
    per_class: dict[str, dict[str, float]]
    # 95% Wilson interval of `precision`
    precision_low: float = float("nan")
    precision_high: float = float("nan")


@dataclass
class CrossFit:
    """One filter, cross-fitted over the run's folds."""

    # pseudo[k]: the pool clips student fold k trains on
    pseudo: list[PseudoLabels]
    # the same filter on the labelled clips, each fold's clips held out
    point: FilterPoint
    # per fold: the per-class thresholds the filter amounted to on the pool
    thresholds: list[np.ndarray]
    # (clips,) per labelled clip, held out with its fold: whether the filter kept it, and its pseudo-label
    held_kept: np.ndarray
    held_label: np.ndarray


def fold_calibrations(labelled_probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
                      prior: bool = True) -> list[Calibration]:
    """Per fold k, the agents' prior weights (when `prior`), temperatures and WAFs fitted on the labelled clips
    outside fold k.

    `labelled_probs` (agents, clips, 6) out-of-fold probabilities, `labels` (clips,), `fold_of` (clips,).
    """
    out = []
    for k in range(int(fold_of.max()) + 1):
        train = fold_of != k
        probs, y = labelled_probs[:, train], labels[train]
        priors = fit_priors(probs, y) if prior else None
        probs = apply_priors(probs, priors)
        has = evidence_mask(probs)                                   # (agents, clips)
        scores = np.array([score(y[h], p[h].argmax(axis=1)).waf if h.any() else 0.0
                           for p, h in zip(probs, has, strict=True)], dtype=np.float32)
        out.append(Calibration(temperatures=fit_temperatures(probs, y), agent_scores=scores, priors=priors))
    return out


def calibrated_held_out(labelled_probs: np.ndarray, fold_of: np.ndarray, calibrations: list[Calibration],
                        temperature: bool = True) -> np.ndarray:
    """(agents, clips, 6) each fold's labelled clips corrected by the priors and scaled by the temperatures
    (unless not `temperature`) fitted on the other folds."""
    out = np.full_like(labelled_probs, np.nan, dtype=np.float32)
    for k, cal in enumerate(calibrations):
        held = apply_priors(labelled_probs[:, fold_of == k], cal.priors)
        out[:, fold_of == k] = apply_temperatures(held, cal.temperatures) if temperature else held
    return out


def target_thresholds(probs: np.ndarray, labels: np.ndarray, cfg: FilterConfig, cal: Calibration,
                      target: float) -> np.ndarray:
    """(6,) per class, the lowest confidence threshold at which the clips of `probs` (agents, clips, 6) that pass
    cfg's agreement gate and are pseudo-labelled with that class reach `target` precision against `labels`; 1.0 for
    a class that never does. Fitted on the training folds' clips by cross_fit, so never measured on them."""
    combined = combine_agents(probs, cfg, cal.temperatures, cal.agent_scores)   # (clips, 6)
    gate = gate_mask(probs, combined, cfg)
    label, confidence = combined.argmax(axis=1), combined.max(axis=1)
    thresholds = np.ones(NUM_LABELS, dtype=np.float32)
    for c in range(NUM_LABELS):
        idx = np.flatnonzero(gate & (label == c))
        order = idx[np.argsort(-confidence[idx], kind="stable")]
        # precision of keeping the k most confident, k = 1..n; the lowest bar whose precision reaches the target
        precision = np.cumsum(labels[order] == c) / np.arange(1, len(order) + 1)
        reach = np.flatnonzero(precision >= target)
        if len(reach):
            thresholds[c] = confidence[order[reach[-1]]]
    return thresholds


def precision_coverage(kept: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> FilterPoint:
    """Precision (with 95% Wilson intervals) and coverage of the pseudo-labels `predicted` (clips,) kept where
    `kept` (clips,), overall and per class, against `truth` (clips,)."""
    correct = kept & (predicted == truth)
    per_class = {}
    for c, label in enumerate(LABELS):
        mine = kept & (predicted == c)
        low, high = wilson_interval(int(correct[mine].sum()), int(mine.sum()))
        per_class[label] = {
            "kept": int(mine.sum()),
            "precision": float(correct[mine].mean()) if mine.any() else float("nan"),
            "precision_low": low, "precision_high": high,
            "coverage": float(kept[truth == c].mean()) if (truth == c).any() else float("nan"),
        }
    low, high = wilson_interval(int(correct.sum()), int(kept.sum()))
    return FilterPoint(kept=int(kept.sum()), coverage=float(kept.mean()) if len(kept) else 0.0,
                       precision=float(correct[kept].mean()) if kept.any() else float("nan"), per_class=per_class,
                       precision_low=low, precision_high=high)


def cross_fit(labelled_probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, pool_probs: np.ndarray,
              pool_names: list[str], cfg: FilterConfig, calibrations: list[Calibration]) -> CrossFit:
    """The filter `cfg` per fold: pool pseudo-labels for each student fold and the held-out measurement.

    `labelled_probs` (agents, clips, 6) out of fold, `labels` (clips,), `fold_of` (clips,), `pool_probs`
    (agents, pool, K, 6) the agents' fold-model probabilities of the pool, `calibrations` from fold_calibrations.

    Raises ValueError when the calibrations were fitted with the label prior and `cfg.prior` is off, or the reverse.
    """
    if calibrations and (calibrations[0].priors is not None) != cfg.prior:
        raise ValueError(f"filter prior={cfg.prior} but the calibrations were fitted "
                         f"{'with' if calibrations[0].priors is not None else 'without'} the label prior; "
                         f"fit them with fold_calibrations(..., prior={cfg.prior})")
    kept = np.zeros(len(labels), dtype=bool)
    predicted = np.zeros(len(labels), dtype=np.int64)
    pseudo, thresholds = [], []
    for k, cal in enumerate(calibrations):
        train, held = fold_of != k, fold_of == k
        # fold k's prior weights on every clip it filters (agreement, confidence and combination all see them)
        fold_labelled = apply_priors(labelled_probs, cal.priors)
        fold_pool = apply_priors(pool_probs[:, :, k], cal.priors)
        # the labelled prior of the training folds, at the size of the whole labelled set
        counts = np.bincount(labels[train], minlength=NUM_LABELS) * len(labels) / max(int(train.sum()), 1)
        targets = (None if cfg.target_precision is None
                   else target_thresholds(fold_labelled[:, train], labels[train], cfg, cal, cfg.target_precision))
        chosen = select_pseudo_labels(fold_pool, pool_names, cfg, counts, cal.temperatures,
                                      cal.agent_scores, targets)
        applied = applied_thresholds(chosen.labels, chosen.confidence)      # (6,)
        # the same filter on fold k's labelled clips: same calibration, same gate, the thresholds it applied
        held_probs = fold_labelled[:, held]
        combined = combine_agents(held_probs, cfg, cal.temperatures, cal.agent_scores)
        kept[held] = gate_mask(held_probs, combined, cfg) & confidence_mask(combined, applied)
        predicted[held] = combined.argmax(axis=1)
        pseudo.append(chosen)
        thresholds.append(applied)
    return CrossFit(pseudo=pseudo, point=precision_coverage(kept, predicted, labels), thresholds=thresholds,
                    held_kept=kept, held_label=predicted)


def sweep_families(labelled_probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, pool_probs: np.ndarray,
                   pool_names: list[str], cfg: FilterConfig, calibrations: list[Calibration],
                   ) -> dict[str, list[tuple[float, FilterPoint]]]:
    """Per threshold rule, (parameter, cross-fitted held-out point) along its SWEEPS grid, with cfg's other
    settings (no target precision: each rule as it is)."""
    curves = {}
    for family, (field_name, grid) in SWEEPS.items():
        curves[family] = [
            (value, cross_fit(labelled_probs, labels, fold_of, pool_probs, pool_names,
                              replace(cfg, mask=family, target_precision=None, **{field_name: value}),
                              calibrations).point)
            for value in grid]
    return curves


def calibration_summary(labelled_probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
                        calibrations: list[Calibration], agents: list[str]) -> dict[str, dict[str, float]]:
    """Per agent: mean temperature and prior weights over the folds, out-of-fold WAF before and after the
    cross-fitted prior correction, ECE before and after cross-fitted calibration."""
    corrected = calibrated_held_out(labelled_probs, fold_of, calibrations, temperature=False)
    calibrated = np.full_like(corrected, np.nan)
    for k, cal in enumerate(calibrations):
        calibrated[:, fold_of == k] = apply_temperatures(corrected[:, fold_of == k], cal.temperatures)
    has = evidence_mask(labelled_probs)
    out = {}
    for a, agent in enumerate(agents):
        h = has[a]
        out[agent] = {
            "temperature": float(np.mean([c.temperatures[a] for c in calibrations])),
            "prior_weights": (np.mean([c.priors[a] for c in calibrations], axis=0).round(6).tolist()
                              if calibrations and calibrations[0].priors is not None else None),
            "oof_waf": float(score(labels[h], labelled_probs[a, h].argmax(axis=1)).waf) if h.any() else 0.0,
            "oof_waf_prior": float(score(labels[h], corrected[a, h].argmax(axis=1)).waf) if h.any() else 0.0,
            "ece_before": expected_calibration_error(labelled_probs[a], labels),
            "ece_after_cross_fitted": expected_calibration_error(calibrated[a], labels),
        }
    return out


def precision_at_coverage(curve: list[tuple[float, FilterPoint]], coverage: float) -> float:
    """A curve's precision linearly interpolated at `coverage` (nan outside the curve's coverage range)."""
    points = sorted((p.coverage, p.precision) for _, p in curve if p.kept > 0)
    if not points or not points[0][0] <= coverage <= points[-1][0]:
        return float("nan")
    xs, ys = zip(*points, strict=True)
    return float(np.interp(coverage, xs, ys))


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
    ax.set_title(title or "pseudo-label filters on held-out labelled clips (cross-fitted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
