"""Pseudo-label maths: pure functions on probability arrays (never logits) with named terms.

Usage:
    combined = combine_product(probs)                       # (agents, clips, 6) -> (clips, 6)
    agree = agreement_mask(probs, combined.argmax(1), top_k=2, rule="all")
    confident = confidence_mask(combined, class_thresholds(0.8))
    kept = agree & confident

Rows of NaN in `probs` mean an agent has no evidence for a clip; every function skips those agents for that clip.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from clips.labels import LABELS, NUM_LABELS

EPS = 1e-6


def evidence_mask(probs: np.ndarray) -> np.ndarray:
    """(agents, clips) True where an agent has a probability row for a clip."""
    return ~np.isnan(probs).any(axis=-1)


def combine_mean(probs: np.ndarray) -> np.ndarray:
    """Mean of the agents' probabilities over the agents with evidence; uniform where none has any."""
    has = evidence_mask(probs)                                       # (agents, clips)
    total = np.where(has[..., None], probs, 0.0).sum(axis=0)         # (clips, 6)
    count = has.sum(axis=0)[:, None]                                 # (clips, 1)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0 / NUM_LABELS).astype(np.float32)


def combine_product(probs: np.ndarray) -> np.ndarray:
    """Product of experts: normalised product of the agents' probabilities (agents without evidence skipped).

    Complementary views multiply: an audio agent sure of {neutral, sad} and a visual agent sure of
    {neutral, worried} give neutral, where their mean would stay split.
    """
    has = evidence_mask(probs)
    logp = np.where(has[..., None], np.log(np.clip(np.nan_to_num(probs), EPS, 1.0)), 0.0)
    summed = logp.sum(axis=0)                                        # (clips, 6)
    summed -= summed.max(axis=1, keepdims=True)
    combined = np.exp(summed)
    return (combined / combined.sum(axis=1, keepdims=True)).astype(np.float32)


def agreement_mask(
    probs: np.ndarray, label: np.ndarray, top_k: int = 1, rule: Literal["all", "majority"] = "all",
) -> np.ndarray:
    """(clips,) True where the agents agree with `label`: it is within an agent's top_k labels.

    top_k=1 is the classic "same top label"; top_k=2 lets agents that only separate groups of classes (a voice
    that tells arousal, not valence) agree without having to guess inside the group. `rule` asks all agents
    with evidence, or a strict majority of them; a clip with no evidence never agrees.
    """
    has = evidence_mask(probs)                                       # (agents, clips)
    ranks = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=-1)     # (agents, clips, 6)
    in_top = (ranks[..., :top_k] == label[None, :, None]).any(axis=-1) & has
    votes, voters = in_top.sum(axis=0), has.sum(axis=0)
    if rule == "all":
        return (voters > 0) & (votes == voters)
    return (voters > 0) & (2 * votes > voters)


def class_thresholds(default: float, per_class: dict[str, float] | None = None) -> np.ndarray:
    """(6,) confidence threshold per class: `default`, overridden by name in `per_class`."""
    thresholds = np.full(NUM_LABELS, default, dtype=np.float32)
    for name, value in (per_class or {}).items():
        thresholds[LABELS.index(name)] = value
    return thresholds


def confidence_mask(combined: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(clips,) True where the top probability passes its class's threshold."""
    top = combined.argmax(axis=1)
    return combined.max(axis=1) >= thresholds[top]


def cap_per_class(combined: np.ndarray, kept: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Keep at most cap[c] clips of each class c, the most confident first."""
    label, confidence = combined.argmax(axis=1), combined.max(axis=1)
    out = np.zeros_like(kept)
    for c in range(NUM_LABELS):
        idx = np.flatnonzero(kept & (label == c))
        out[idx[np.argsort(-confidence[idx], kind="stable")][: int(cap[c])]] = True
    return out


def agent_weights(scores: np.ndarray) -> np.ndarray:
    """(agents,) combination weights proportional to each agent's out-of-fold WAF, normalised to mean 1.

    Mean 1 keeps a weighted product as sharp as the unweighted one: only the agents' relative say changes.
    """
    scores = np.clip(np.asarray(scores, dtype=np.float64), EPS, None)
    return (scores / scores.mean()).astype(np.float32)


def combine_weighted_mean(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the agents' probabilities over the agents with evidence; uniform where none has any."""
    has = evidence_mask(probs)                                       # (agents, clips)
    w = np.where(has, np.asarray(weights, np.float32)[:, None], 0.0)  # (agents, clips)
    total = (w[..., None] * np.nan_to_num(probs)).sum(axis=0)        # (clips, 6)
    norm = w.sum(axis=0)[:, None]                                    # (clips, 1)
    return np.where(norm > 0, total / np.maximum(norm, EPS), 1.0 / NUM_LABELS).astype(np.float32)


def combine_weighted_product(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted product of experts: normalised prod_a p_a ** w_a over the agents with evidence."""
    has = evidence_mask(probs)
    logp = np.where(has[..., None], np.log(np.clip(np.nan_to_num(probs), EPS, 1.0)), 0.0)
    summed = (np.asarray(weights, np.float32)[:, None, None] * logp).sum(axis=0)   # (clips, 6)
    combined = np.exp(summed - summed.max(axis=1, keepdims=True))
    return (combined / combined.sum(axis=1, keepdims=True)).astype(np.float32)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Soft targets p ** (1/T) renormalised (MixMatch's sharpening); T < 1 sharpens, T = 1 returns `probs`.

    Takes probabilities (clips, 6). Raises ValueError for a non-positive temperature.
    """
    if temperature <= 0:
        raise ValueError(f"sharpen temperature={temperature}; use a positive temperature")
    powered = np.clip(probs, EPS, 1.0) ** (1.0 / temperature)
    return (powered / powered.sum(axis=-1, keepdims=True)).astype(np.float32)


def freematch_thresholds(combined: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(6,) self-adaptive per-class thresholds of FreeMatch (Wang et al., ICLR 2023, "FreeMatch: Self-adaptive
    Thresholding for Semi-supervised Learning"; semilearn `algorithms/freematch` masking).

    Takes probabilities (clips, 6). The global threshold tau is the mean top probability over the clips; the
    class's local level p_c is its mean probability over the clips; tau_c = p_c / max_c' p_c' * tau, so a class
    the models rarely predict gets a lower bar. FreeMatch tracks both by EMA over batches; offline over the whole
    pool they are these means. `scale` multiplies tau (1.0 = FreeMatch; sweeping it draws the family's curve).
    """
    tau = scale * float(combined.max(axis=1).mean())
    level = combined.mean(axis=0)                                    # (6,)
    return np.clip(level / level.max() * tau, 0.0, 1.0).astype(np.float32)


def flexmatch_thresholds(combined: np.ndarray, tau: float) -> np.ndarray:
    """(6,) per-class thresholds of FlexMatch's curriculum pseudo-labelling (Zhang et al., NeurIPS 2021).

    Takes probabilities (clips, 6). The learning effect sigma_c counts clips predicted c above `tau`;
    beta_c = sigma_c / max_c' sigma_c'; tau_c = M(beta_c) * tau with the convex mapping M(x) = x / (2 - x), so a
    class that is rarely confident gets a lower bar. FlexMatch's warm-up variant also divides by the unused
    clips; offline, with most clips below tau, that sends every threshold to 0, so it is left out. Offline there
    is no curriculum to lift a bar again, so a class never goes below tau / 2: at M(0) = 0 every clip predicted
    as a class no clip is confident of would be kept.
    """
    label, confidence = combined.argmax(axis=1), combined.max(axis=1)
    sigma = np.bincount(label[confidence > tau], minlength=NUM_LABELS).astype(np.float64)
    beta = sigma / max(sigma.max(), 1.0)
    return np.maximum(beta / (2.0 - beta) * tau, tau / 2).astype(np.float32)


def applied_thresholds(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(6,) the per-class confidence thresholds that a kept set amounts to, from its pseudo-labels `labels` (kept,)
    and combined confidences `confidence` (kept,): each class's lowest kept confidence, inf (nothing passes) for a
    class with no kept clip.

    A rule with quotas or caps (class_topk, max_ratio) keeps the most confident clips of each class, so on another
    set of clips (the held-out labelled ones) the same rule is exactly these thresholds.
    """
    out = np.full(NUM_LABELS, np.inf, dtype=np.float64)
    np.minimum.at(out, np.asarray(labels, dtype=np.int64), np.asarray(confidence, dtype=np.float64))
    return out


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z = 1.96) of a binomial proportion; (nan, nan) without trials."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def class_topk_caps(prior: np.ndarray, clips: int, fraction: float) -> np.ndarray:
    """(6,) clips to keep per class: ceil(fraction * clips * prior_c), the class's expected share of the pool.

    `prior` is the labelled class distribution (counts or frequencies); a class with a small prior (surprise,
    190 of 5,030 labelled clips) gets a small quota rather than being crowded out or flooding the student.
    """
    prior = np.asarray(prior, dtype=np.float64)
    return np.ceil(fraction * clips * prior / max(prior.sum(), EPS)).astype(np.int64)
