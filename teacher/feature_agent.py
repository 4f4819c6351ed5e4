"""Feature agents: a standardised logistic regression on one modality's cached features.

Usage:
    agent = build_feature_agent(AgentSpec(name="audio", kind="features", modality="audio"), context)
    probs = agent.score(names)          # (n, 6); NaN rows where the clip has no features of that modality
    fold_probs = agent.score_folds(names)   # (n, K, 6): each fold model's probabilities

Feature agents fit one model per fold of the run's assignment (clips.folds): `score_folds(names)` gives each fold
model's probabilities (n, K, 6), so the pseudo-labels that student fold k trains on come from a model that never
saw fold k's labels; `score(names)` gives a labelled clip its own fold's (out-of-fold) probabilities and a pool
clip the mean of the fold models. No model is fitted on every labelled clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clips.folds import assign_folds
from clips.labels import NUM_LABELS, label_index
from teacher.spec import Agent, AgentContext, AgentSpec, NoLabelledEvidence, combine_folds


class FeatureAgent:
    """Standardised logistic regression on one modality's features, one model per fold of the run's assignment.

    Raises NoLabelledEvidence when fewer than 2 classes have labelled clips with the modality's features.
    """

    def __init__(self, spec: AgentSpec, context: AgentContext):
        self.name = spec.name
        self.spec = spec
        features = context.features
        chosen = [i for i, m in enumerate(features.modalities) if spec.modality in (m, "all")]
        if not chosen:
            raise ValueError(
                f"agent {spec.name!r}: no extractor of modality {spec.modality!r} among "
                f"{list(zip(features.extractors, features.modalities, strict=True))}; add one to `extractors`"
            )
        self.extractors = [features.extractors[i] for i in chosen]
        self.folds = context.folds if context.folds is not None else assign_folds(context.labels)
        self._row = {n: i for i, n in enumerate(features.names)}
        self._x = np.hstack([features.blocks[i] for i in chosen]).astype(np.float32)  # (clips, dims)
        self._present = features.masks[:, chosen].any(axis=1)                          # (clips,)
        self._fold_probs = np.full((len(features.names), self.folds.folds, NUM_LABELS), np.nan,
                                   dtype=np.float32)                                  # (clips, K, 6)
        self._fold_of = self.folds.of(features.names)                                 # (clips,) -1: pool
        self._fit(context.labels)

    def settings(self) -> dict[str, Any]:
        return {"kind": "features", "modality": self.spec.modality, "C": self.spec.C,
                "folds": self.folds.folds, "fold_seed": self.folds.seed, "extractors": self.extractors}

    def _model(self):
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.spec.C, max_iter=2000))

    def _fit(self, labels: dict[str, str]) -> None:
        rows = np.array([self._row[n] for n in sorted(labels) if n in self._row], dtype=np.int64)
        y = np.array([label_index(labels[n]) for n in sorted(labels) if n in self._row], dtype=np.int64)
        keep = self._present[rows]
        rows, y = rows[keep], y[keep]
        if len(np.unique(y)) < 2:
            raise NoLabelledEvidence(
                f"agent {self.name!r}: {len(rows)} labelled clip(s) with {self.spec.modality} features, "
                f"{len(np.unique(y))} class(es); it needs 2 or more")
        present = np.flatnonzero(self._present)
        fold_of = self._fold_of[rows]
        for k in range(self.folds.folds):
            train = fold_of != k
            if len(np.unique(y[train])) < 2:
                continue  # this fold's model cannot be fitted: no evidence from it
            model = self._model().fit(self._x[rows[train]], y[train])
            self._fold_probs[present, k] = _aligned_proba(model, self._x[present])

    def score_folds(self, names: Sequence[str]) -> np.ndarray:
        """(len(names), K, 6) each fold model's probabilities; NaN where the agent has no evidence."""
        out = np.full((len(names), self.folds.folds, NUM_LABELS), np.nan, dtype=np.float32)
        known = [(i, self._row[n]) for i, n in enumerate(names) if n in self._row]
        if known:
            dst, src = map(list, zip(*known, strict=True))
            out[dst] = self._fold_probs[src]
        return out

    def score(self, names: Sequence[str]) -> np.ndarray:
        """(len(names), 6): a labelled clip's own fold model (out of fold), the mean of the fold models for others."""
        return combine_folds(self.score_folds(names), self.folds.of(names))


def _aligned_proba(model, x: np.ndarray) -> np.ndarray:
    """predict_proba with columns placed at their label index (a class absent from training gets 0)."""
    probs = np.zeros((len(x), NUM_LABELS), dtype=np.float32)
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def build_feature_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    return FeatureAgent(spec, context)
