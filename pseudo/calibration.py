"""Calibration of each agent's probabilities: its label prior corrected, then temperature scaling; and the expected
calibration error around it.

Usage:
    weights = fit_prior(oof_probs, y)                            # (clips, 6) probabilities, (clips,) labels
    corrected = apply_prior(oof_probs, weights)                  # an agent that says "worried" to all lines does not
    temperature = fit_temperature(corrected, y)
    calibrated = apply_temperature(apply_prior(pool_probs, weights), temperature)
    ece_before, ece_after = expected_calibration_error(oof_probs, y), expected_calibration_error(calibrated, y)

The label prior: an agent's mean probabilities over labelled clips against those clips' label frequencies; its
probabilities are multiplied by frequency / mean and renormalised (the prior-shift correction of Saerens et al.
2002, with the labelled clips' prior as the target). A zero-shot LLM's bias toward some label is removed; an agent
trained on the labels (mean probabilities near the frequencies) is left nearly as it is. A temperature cannot do
this: it never changes an agent's top label.

Cross-fitting over the run's folds (fold k's prior and temperature fitted on the other folds) is pseudo.measure's
fold_calibrations and calibrated_held_out.

Every function takes probabilities (rows summing to 1, NaN rows = no evidence) and works in log-probability space:
softmax(log p / T) is temperature scaling of the logits log p + const, so no agent has to store its logits.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from llm.calibration import prior_weights, reweight

EPS = 1e-6
# T is searched in [1/20, 20] on a log scale: wider than any agent needs, narrow enough to stay finite
T_BOUNDS = (0.05, 20.0)


def fit_prior(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(6,) prior weights of one agent: the frequency of each label in `labels` (clips,) over the agent's mean
    probability of it in `probs` (clips, 6), on the rows with evidence (llm.calibration.prior_weights, the mean
    floored). Ones when no row has evidence."""
    has = ~np.isnan(probs).any(axis=-1)
    if not has.any():
        return np.ones(probs.shape[-1], dtype=np.float32)
    frequency = np.bincount(labels[has], minlength=probs.shape[-1]) / has.sum()
    return prior_weights(probs[has].mean(axis=0), frequency).astype(np.float32)


def apply_prior(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """probs * weights renormalised over the last axis (llm.calibration.reweight); NaN rows stay NaN. A label
    that no clip carries (weight 0) is never predicted; a row whose weighted mass is 0 stays as it was."""
    return reweight(probs, weights)


def fit_priors(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(agents, 6) prior weights of each agent of `probs` (agents, clips, 6)."""
    return np.stack([fit_prior(agent_probs, labels) for agent_probs in probs])


def apply_priors(probs: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """(agents, ...) each agent's probabilities `probs` (agents, ..., 6) corrected by its own prior weights
    (agents, 6); as they are when `weights` is None."""
    if weights is None:
        return probs
    return np.stack([apply_prior(p, w) for p, w in zip(probs, weights, strict=True)])


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
