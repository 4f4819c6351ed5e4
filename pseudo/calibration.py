"""Temperature scaling of each agent's probabilities, and the expected calibration error around it.

Usage:
    temperature = fit_temperature(oof_probs, y)                  # (clips, 6) probabilities, (clips,) labels
    calibrated = apply_temperature(pool_probs, temperature)
    ece_before, ece_after = expected_calibration_error(oof_probs, y), expected_calibration_error(calibrated, y)

Cross-fitting over the run's folds (temperatures of fold k fitted on the other folds) is pseudo.measure's
fold_calibrations and calibrated_held_out.

Every function takes probabilities (rows summing to 1, NaN rows = no evidence) and works in log-probability space:
softmax(log p / T) is temperature scaling of the logits log p + const, so no agent has to store its logits.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-6
# T is searched in [1/20, 20] on a log scale: wider than any agent needs, narrow enough to stay finite
T_BOUNDS = (0.05, 20.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature) over the last axis; NaN rows stay NaN. T > 1 softens, T < 1 sharpens."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; use a positive temperature")
    has = ~np.isnan(probs).any(axis=-1, keepdims=True)
    logits = np.log(np.clip(np.where(has, probs, 1.0), EPS, 1.0)) / temperature
    scaled = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.where(has, scaled / scaled.sum(axis=-1, keepdims=True), np.nan).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of `labels` (clips,) under `probs` (clips, 6)."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in T_BOUNDS minimising the NLL of softmax(log(probs) / T) on `labels`; rows with NaN are skipped.

    A bounded 1-D search over log T (the NLL is convex in 1/T). Returns 1.0 when no row has evidence.
    """
    has = ~np.isnan(probs).any(axis=-1)
    if not has.any():
        return 1.0
    probs, labels = probs[has], labels[has]
    result = minimize_scalar(lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), labels),
                             bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def fit_temperatures(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(agents,) temperature of each agent of `probs` (agents, clips, 6), fitted on its clips with evidence."""
    return np.array([fit_temperature(agent_probs, labels) for agent_probs in probs], dtype=np.float32)


def apply_temperatures(probs: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """(agents, clips, 6) each agent's probabilities scaled by its own temperature."""
    return np.stack([apply_temperature(p, float(t)) for p, t in zip(probs, temperatures, strict=True)])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - mean confidence| * bin share.

    Uses the top probability of each row of `probs` (clips, 6); rows with NaN are skipped; 0.0 when none is left.
    """
    has = ~np.isnan(probs).any(axis=-1)
    if not has.any():
        return 0.0
    confidence, correct = probs[has].max(axis=1), probs[has].argmax(axis=1) == labels[has]
    # a confidence of exactly 1.0 belongs to the last bin, not to a 16th one
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)
