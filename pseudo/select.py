"""Selecting pseudo-labels from the stored agent probabilities, and writing them with their evidence.

Usage:
    pseudo = select_pseudo_labels(probs, names, FilterConfig(), labelled_counts=counts)
    write_pseudo_labels(pseudo, agents, probs_kept, run / "pseudo" / "pseudo-labels.csv")
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS
from pseudo.filters import (
    agreement_mask,
    cap_per_class,
    class_thresholds,
    combine_mean,
    combine_product,
    confidence_mask,
)

COMBINERS = {"mean": combine_mean, "product": combine_product}


@dataclass
class FilterConfig:
    """How agents' probabilities become pseudo-labels."""

    # how agents combine: "product" of experts or "mean" of probabilities
    combine: Literal["product", "mean"] = "product"
    # an agent agrees when the combined label is within its top_k labels
    agree_top_k: int = 2
    # agreement of "all" agents with evidence, or a strict "majority"
    agree_rule: Literal["all", "majority"] = "all"
    # minimum agents with evidence for a clip to be considered
    min_agents: int = 2
    # confidence threshold on the combined probability
    threshold: float = 0.8
    # per-class thresholds overriding `threshold`, e.g. {"surprise": 0.7}
    class_thresholds: dict[str, float] = field(default_factory=dict)
    # at most this many pseudo-labels per class, relative to the class's labelled count (None: no cap)
    max_ratio: float | None = 4.0
    # multiplies each pseudo-label's loss weight (its confidence)
    weight: float = 1.0
    # train on the combined distribution (True) or on one-hot labels (False)
    soft: bool = False

    def __post_init__(self) -> None:
        if self.combine not in COMBINERS:
            raise ValueError(f"combine={self.combine!r}; use one of {sorted(COMBINERS)}")
        if not 1 <= self.agree_top_k <= NUM_LABELS:
            raise ValueError(f"agree_top_k={self.agree_top_k}; use 1 to {NUM_LABELS}")
        if self.agree_rule not in ("all", "majority"):
            raise ValueError(f"agree_rule={self.agree_rule!r}; use 'all' or 'majority'")
        bad = [k for k in self.class_thresholds if k not in LABELS]
        if bad:
            raise ValueError(f"class_thresholds: unknown label(s) {bad}; use {', '.join(LABELS)}")
        for name, value in {"threshold": self.threshold, **self.class_thresholds}.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold for {name} is {value}; use a probability in [0, 1]")
        if self.max_ratio is not None and self.max_ratio <= 0:
            raise ValueError(f"max_ratio={self.max_ratio}; use a positive ratio or null for no cap")
        if self.weight <= 0:
            raise ValueError(f"weight={self.weight}; use a positive loss weight")


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


def select_pseudo_labels(
    probs: np.ndarray, names: list[str], cfg: FilterConfig, labelled_counts: np.ndarray | None = None,
) -> PseudoLabels:
    """Pseudo-labels for the clips in `names` from `probs` (agents, clips, 6) probabilities."""
    combined = COMBINERS[cfg.combine](probs)                          # (clips, 6)
    label = combined.argmax(axis=1)
    enough = (~np.isnan(probs).any(axis=-1)).sum(axis=0) >= cfg.min_agents
    kept = enough & agreement_mask(probs, label, cfg.agree_top_k, cfg.agree_rule)
    kept &= confidence_mask(combined, class_thresholds(cfg.threshold, cfg.class_thresholds))
    if cfg.max_ratio is not None and labelled_counts is not None:
        cap = np.ceil(cfg.max_ratio * np.asarray(labelled_counts, dtype=np.float64))
        kept = cap_per_class(combined, kept, cap)
    index = np.flatnonzero(kept)
    confidence = combined[index, label[index]]
    targets = combined[index] if cfg.soft else np.eye(NUM_LABELS, dtype=np.float32)[label[index]]
    return PseudoLabels(
        names=[names[i] for i in index], labels=label[index], targets=targets.astype(np.float32),
        weights=(cfg.weight * confidence).astype(np.float32), confidence=confidence.astype(np.float32),
        index=index,
    )


def write_pseudo_labels(pseudo: PseudoLabels, agents: list[str], probs: np.ndarray, path: Path) -> None:
    """CSV of kept clips: label, confidence, weight, targets, and each agent's top label and probability.

    `probs` is the (agents, clips, 6) array given to select_pseudo_labels.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "discrete", "confidence", "weight", *[f"p_{label}" for label in LABELS],
                     *[f"{a}_label" for a in agents], *[f"{a}_p" for a in agents]])
    for k, name in enumerate(pseudo.names):
        evidence = probs[:, pseudo.index[k]]                          # (agents, 6)
        tops = [LABELS[int(row.argmax())] if not np.isnan(row).any() else "" for row in evidence]
        top_p = [f"{row.max():.4f}" if not np.isnan(row).any() else "" for row in evidence]
        writer.writerow([name, LABELS[int(pseudo.labels[k])], f"{pseudo.confidence[k]:.4f}",
                         f"{pseudo.weights[k]:.4f}", *[f"{v:.4f}" for v in pseudo.targets[k]], *tops, *top_p])
    atomic_write_text(path, buffer.getvalue())
