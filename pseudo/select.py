"""Selecting pseudo-labels from the stored agent probabilities, and writing them with their evidence.

Usage:
    pseudo = select_pseudo_labels(probs, names, FilterConfig(), labelled_counts=counts,
                                  temperatures=calibration.temperatures, agent_scores=calibration.agent_scores)
    write_pseudo_labels([pseudo_fold_0, ...], agents, fold_probs, run / "pseudo" / "pseudo-labels.csv")

The steps, each a pure function of pseudo.filters or pseudo.calibration: calibrate each agent (temperatures fitted
on the labelled clips' out-of-fold probabilities), combine the agents, gate on agreement, mask by a threshold rule,
cap per class, and turn the kept clips into hard or (sharpened) soft targets with per-sample weights.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS
from pseudo.calibration import apply_temperatures
from pseudo.filters import (
    agent_weights,
    agreement_mask,
    cap_per_class,
    class_thresholds,
    class_topk_caps,
    combine_mean,
    combine_product,
    combine_weighted_mean,
    combine_weighted_product,
    confidence_mask,
    evidence_mask,
    flexmatch_thresholds,
    freematch_thresholds,
    sharpen,
)

log = logging.getLogger(__name__)

COMBINERS = {"mean": combine_mean, "product": combine_product}
WEIGHTED_COMBINERS = {"mean": combine_weighted_mean, "product": combine_weighted_product}
MASKS = ("fixed", "freematch", "flexmatch", "class_topk")
# the confidence threshold of "fixed" and tau of "flexmatch" when FilterConfig.threshold is None
DEFAULT_THRESHOLD = 0.8


@dataclass
class FilterConfig:
    """How agents' probabilities become pseudo-labels."""

    # how agents combine: "product" of experts or "mean" of probabilities
    combine: Literal["product", "mean"] = "product"
    # temperature-scale each agent first (temperatures fitted on the labelled clips' out-of-fold probabilities)
    calibrate: bool = True
    # correct each agent's label prior before anything else (pseudo.calibration.fit_prior, fitted per fold on the
    # other folds' labelled clips): a zero-shot LLM's favourite label stops winning every clip; an agent trained on
    # the labels is left nearly as it is
    prior: bool = True
    # agents count "equal"ly, or in proportion to their out-of-fold "waf" on the labelled clips
    weighting: Literal["equal", "waf"] = "equal"
    # an agent agrees when the combined label is within its top_k labels
    agree_top_k: int = 2
    # agreement of "all" agents with evidence, or a strict "majority"
    agree_rule: Literal["all", "majority"] = "majority"
    # minimum agents with evidence for a clip to be considered (lowered to the number of agents when fewer are
    # given: the agreement of one agent is trivial)
    min_agents: int = 2
    # threshold rule on the combined probability: "fixed" (FixMatch), "freematch" or "flexmatch" (per-class
    # adaptive), or "class_topk" (the most confident clips of each class, a quota from the labelled prior)
    mask: Literal["fixed", "freematch", "flexmatch", "class_topk"] = "class_topk"
    # confidence threshold of the "fixed" rule (None: 0.8), tau of the "flexmatch" rule (None: 0.8), and a floor
    # on the combined confidence under "freematch" and "class_topk" (None: no floor)
    threshold: float | None = None
    # per-class thresholds overriding `threshold` in the "fixed" rule, e.g. {"surprise": 0.7}
    class_thresholds: dict[str, float] = field(default_factory=dict)
    # multiplies FreeMatch's self-adaptive global threshold (1.0: FreeMatch as published)
    freematch_scale: float = 1.0
    # "class_topk" keeps this fraction of each class's expected count in the pool (pool size x labelled prior)
    topk_fraction: float = 0.5
    # choose per-class thresholds reaching this precision on the held-out labelled clips (None: use `mask`)
    target_precision: float | None = None
    # at most this many pseudo-labels per class, relative to the class's labelled count (None: no cap)
    max_ratio: float | None = 4.0
    # multiplies each pseudo-label's loss weight (its confidence)
    weight: float = 1.0
    # train on the combined distribution (True) or on one-hot labels (False)
    soft: bool = False
    # soft targets are sharpened as p ** (1 / sharpen) (1.0: the combined distribution as it is)
    sharpen: float = 1.0
    # do no harm (student.decide): per student fold, keep only the classes whose pseudo-labels, measured on that
    # fold's training clips each held out, were right at least as often as the student's own predictions, each
    # weighted `weight` x its class's measured precision; None: on unless the filter is chosen by hand (a field
    # other than this one set away from its default, e.g. --threshold or --target-precision), which is applied as is
    guard: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.combine not in COMBINERS:
            problems.append(f"combine={self.combine!r}; use one of {sorted(COMBINERS)}")
        if self.weighting not in ("equal", "waf"):
            problems.append(f"weighting={self.weighting!r}; use 'equal' or 'waf'")
        if self.mask not in MASKS:
            problems.append(f"mask={self.mask!r}; use one of {', '.join(MASKS)}")
        if self.freematch_scale <= 0:
            problems.append(f"freematch_scale={self.freematch_scale}; use a positive factor")
        if not 0.0 < self.topk_fraction <= 1.0:
            problems.append(f"topk_fraction={self.topk_fraction}; use a fraction in (0, 1]")
        if self.target_precision is not None and not 0.0 < self.target_precision <= 1.0:
            problems.append(f"target_precision={self.target_precision}; use a precision in (0, 1] or null")
        if self.sharpen <= 0:
            problems.append(f"sharpen={self.sharpen}; use a positive temperature (1.0 leaves targets as they are)")
        if not 1 <= self.agree_top_k <= NUM_LABELS:
            problems.append(f"agree_top_k={self.agree_top_k}; use 1 to {NUM_LABELS}")
        if self.agree_rule not in ("all", "majority"):
            problems.append(f"agree_rule={self.agree_rule!r}; use 'all' or 'majority'")
        bad = [k for k in self.class_thresholds if k not in LABELS]
        if bad:
            problems.append(f"class_thresholds: unknown label(s) {bad}; use {', '.join(LABELS)}")
        if self.min_agents < 1:
            problems.append(f"min_agents={self.min_agents}; use 1 or more")
        given = {"threshold": self.threshold} if self.threshold is not None else {}
        for name, value in {**given, **self.class_thresholds}.items():
            if not 0.0 <= value <= 1.0:
                problems.append(f"threshold for {name} is {value}; use a probability in [0, 1]")
        if self.max_ratio is not None and self.max_ratio <= 0:
            problems.append(f"max_ratio={self.max_ratio}; use a positive ratio or null for no cap")
        if self.weight <= 0:
            problems.append(f"weight={self.weight}; use a positive loss weight")
        if problems:
            raise ValueError("FilterConfig: " + "; ".join(problems))

    def guarded(self) -> bool:
        """Whether the do-no-harm decision applies: `guard` when set, else whether the filter is the default one
        (guard is None here, as in the default)."""
        if self.guard is not None:
            return self.guard
        return self == FilterConfig()


@dataclass
class PseudoLabels:
    """The kept clips with their labels, training targets and weights."""

    names: list[str]
    # (kept,) label indices
    labels: np.ndarray
    # (kept, 6) training targets (one-hot or the combined distribution)
    targets: np.ndarray
    # (kept,) loss weights
    weights: np.ndarray
    # (kept,) combined probability of the label
    confidence: np.ndarray
    # (kept,) index of each kept clip in the names given to select_pseudo_labels
    index: np.ndarray

    def counts(self) -> dict[str, int]:
        """Kept clips per class."""
        counts = np.bincount(self.labels, minlength=NUM_LABELS)
        return {label: int(counts[i]) for i, label in enumerate(LABELS)}


def combine_agents(
    probs: np.ndarray, cfg: FilterConfig, temperatures: np.ndarray | None = None,
    agent_scores: np.ndarray | None = None,
) -> np.ndarray:
    """(clips, 6) combined probabilities of `probs` (agents, clips, 6): calibrated (when `cfg.calibrate` and
    `temperatures` are given), then combined by `cfg.combine`, weighted by `agent_scores` when `cfg.weighting`
    is "waf". Raises ValueError when "waf" weighting has no agent scores."""
    if cfg.calibrate and temperatures is not None:
        probs = apply_temperatures(probs, temperatures)
    if cfg.weighting == "equal":
        return COMBINERS[cfg.combine](probs)
    if agent_scores is None:
        raise ValueError("weighting='waf' needs each agent's out-of-fold WAF (agent_scores); "
                         "pass them or use weighting='equal'")
    return WEIGHTED_COMBINERS[cfg.combine](probs, agent_weights(agent_scores))


def rule_thresholds(combined: np.ndarray, cfg: FilterConfig) -> np.ndarray | None:
    """(6,) per-class thresholds of `cfg.mask` on `combined` probabilities (with cfg.threshold as a floor under
    "freematch"); None for "class_topk" (a quota, no threshold)."""
    tau = DEFAULT_THRESHOLD if cfg.threshold is None else cfg.threshold
    if cfg.mask == "fixed":
        return class_thresholds(tau, cfg.class_thresholds)
    if cfg.mask == "flexmatch":
        return flexmatch_thresholds(combined, tau)
    if cfg.mask == "freematch":
        thresholds = freematch_thresholds(combined, cfg.freematch_scale)
        return thresholds if cfg.threshold is None else np.maximum(thresholds, cfg.threshold)
    return None


def min_agents(probs: np.ndarray, cfg: FilterConfig) -> int:
    """cfg.min_agents, lowered to the number of agents in `probs` (agents, clips, 6) when fewer are given."""
    return max(1, min(cfg.min_agents, len(probs)))


def gate_mask(probs: np.ndarray, combined: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """(clips,) clips with at least min_agents(probs, cfg) agents with evidence, agreeing with the combined label."""
    enough = evidence_mask(probs).sum(axis=0) >= min_agents(probs, cfg)
    return enough & agreement_mask(probs, combined.argmax(axis=1), cfg.agree_top_k, cfg.agree_rule)


def keep_mask(
    probs: np.ndarray, combined: np.ndarray, cfg: FilterConfig, labelled_counts: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> np.ndarray:
    """(clips,) the kept clips: agreement gate, then `thresholds` (per class, e.g. chosen for a target precision)
    or else `cfg.mask`'s rule, then the per-class caps. Takes probabilities.

    Raises ValueError when "class_topk" has no labelled class counts to set its quotas from.
    """
    kept = gate_mask(probs, combined, cfg)
    thresholds = thresholds if thresholds is not None else rule_thresholds(combined, cfg)
    if thresholds is not None:
        kept &= confidence_mask(combined, thresholds)
    elif labelled_counts is None:
        raise ValueError("mask='class_topk' sets its per-class quotas from the labelled class counts; "
                         "pass labelled_counts")
    else:
        if cfg.threshold is not None:
            kept &= combined.max(axis=1) >= cfg.threshold
        kept = cap_per_class(combined, kept, class_topk_caps(labelled_counts, len(combined), cfg.topk_fraction))
    if cfg.max_ratio is not None and labelled_counts is not None:
        cap = np.ceil(cfg.max_ratio * np.asarray(labelled_counts, dtype=np.float64))
        kept = cap_per_class(combined, kept, cap)
    return kept


def select_pseudo_labels(
    probs: np.ndarray, names: list[str], cfg: FilterConfig, labelled_counts: np.ndarray | None = None,
    temperatures: np.ndarray | None = None, agent_scores: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> PseudoLabels:
    """Pseudo-labels for the clips in `names` from `probs` (agents, clips, 6) probabilities.

    `temperatures` (agents,) calibrate each agent (fitted by pseudo.calibration; None: as stored),
    `agent_scores` (agents,) are the out-of-fold WAFs for weighting="waf", `thresholds` (6,) replace the
    mask's per-class thresholds (e.g. those chosen for cfg.target_precision). Logs the kept fraction.
    """
    combined = combine_agents(probs, cfg, temperatures, agent_scores)   # (clips, 6)
    label = combined.argmax(axis=1)
    kept = keep_mask(probs, combined, cfg, labelled_counts, thresholds)
    index = np.flatnonzero(kept)
    log.info("pseudo-labels: kept %d of %d clips (%.1f%%)", len(index), len(names),
             100.0 * len(index) / max(len(names), 1))
    if len(names) and not len(index):
        log.debug("pseudo-labels: none kept: %s", why_none_kept(probs, combined, cfg))
    confidence = combined[index, label[index]]
    targets = sharpen(combined[index], cfg.sharpen) if cfg.soft else np.eye(NUM_LABELS, dtype=np.float32)[label[index]]
    return PseudoLabels(
        names=[names[i] for i in index], labels=label[index], targets=targets.astype(np.float32),
        weights=(cfg.weight * confidence).astype(np.float32), confidence=confidence.astype(np.float32),
        index=index,
    )


def why_none_kept(probs: np.ndarray, combined: np.ndarray, cfg: FilterConfig) -> str:
    """Where the clips of `probs` (agents, clips, 6) fall out of the filter, step by step, in one line."""
    evidence = evidence_mask(probs).sum(axis=0) >= min_agents(probs, cfg)
    gate = gate_mask(probs, combined, cfg)
    return (f"{len(probs)} agent(s); {int(evidence.sum())} of {combined.shape[0]} clips have >= "
            f"{min_agents(probs, cfg)} agent(s) with evidence, {int(gate.sum())} of those agree "
            f"(agree_rule={cfg.agree_rule}, agree_top_k={cfg.agree_top_k}); top combined confidence among them "
            f"{float(combined[gate].max(axis=1).max()) if gate.any() else float('nan'):.3f} under mask={cfg.mask}, "
            f"threshold={cfg.threshold}")


def write_pseudo_labels(folds: list[PseudoLabels], agents: list[str], probs: np.ndarray, path: Path) -> None:
    """CSV of the clips each student fold trains on: fold, name, label, confidence, weight, targets, and each agent's
    top label and probability under that fold's agent models.

    `folds[k]` is fold k's selection and `probs` (agents, clips, K, 6) the fold-model probabilities it came from.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "name", "discrete", "confidence", "weight", *[f"p_{label}" for label in LABELS],
                     *[f"{a}_label" for a in agents], *[f"{a}_p" for a in agents]])
    for fold, pseudo in enumerate(folds):
        for k, name in enumerate(pseudo.names):
            evidence = probs[:, pseudo.index[k], fold]                        # (agents, 6)
            tops = [LABELS[int(row.argmax())] if not np.isnan(row).any() else "" for row in evidence]
            top_p = [f"{row.max():.4f}" if not np.isnan(row).any() else "" for row in evidence]
            writer.writerow([fold, name, LABELS[int(pseudo.labels[k])], f"{pseudo.confidence[k]:.4f}",
                             f"{pseudo.weights[k]:.4f}", *[f"{v:.4f}" for v in pseudo.targets[k]], *tops, *top_p])
    atomic_write_text(path, buffer.getvalue())
