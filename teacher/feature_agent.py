"""Feature agents: a standardised logistic regression on one modality's cached features.

Usage:
    agent = build_feature_agent(AgentSpec(name="audio", kind="features", modality="audio"), context)
    probs = agent.score(names)          # (n, 6); NaN rows where the clip has no features of that modality

Feature agents are trained on the labelled clips; for those clips they return out-of-fold predictions so that
their agreement with the true labels can be measured without leakage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clips.labels import NUM_LABELS, label_index
from teacher.spec import Agent, AgentContext, AgentSpec


class FeatureAgent:
    """Standardised logistic regression on one modality's features; out-of-fold on labelled clips."""

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
        self._row = {n: i for i, n in enumerate(features.names)}
        self._x = np.hstack([features.blocks[i] for i in chosen]).astype(np.float32)  # (clips, dims)
        self._present = features.masks[:, chosen].any(axis=1)                          # (clips,)
        self._probs = np.full((len(features.names), NUM_LABELS), np.nan, dtype=np.float32)
        self._fit(context.labels)

    def settings(self) -> dict[str, Any]:
        return {"kind": "features", "modality": self.spec.modality, "C": self.spec.C,
                "folds": self.spec.folds, "seed": self.spec.seed, "extractors": self.extractors}

    def _model(self):
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.spec.C, max_iter=2000))

    def _fit(self, labels: dict[str, str]) -> None:
        rows = np.array([self._row[n] for n in sorted(labels) if n in self._row], dtype=np.int64)
        y = np.array([label_index(labels[n]) for n in sorted(labels) if n in self._row], dtype=np.int64)
        keep = self._present[rows]
        rows, y = rows[keep], y[keep]
        if len(np.unique(y)) < 2:
            raise ValueError(f"agent {self.name!r}: fewer than 2 classes among labelled clips with "
                             f"{self.spec.modality} features; check the features stage")
        full = self._model().fit(self._x[rows], y)
        unlabelled = np.flatnonzero(self._present)
        self._probs[unlabelled] = _aligned_proba(full, self._x[unlabelled])
        # Labelled clips get out-of-fold predictions, so agreement with truth is measured honestly.
        counts = np.bincount(y)
        folds = max(2, min(self.spec.folds, int(counts[counts > 0].min())))
        split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.spec.seed)
        for train, held in split.split(rows, y):
            model = self._model().fit(self._x[rows[train]], y[train])
            self._probs[rows[held]] = _aligned_proba(model, self._x[rows[held]])

    def score(self, names: Sequence[str]) -> np.ndarray:
        out = np.full((len(names), NUM_LABELS), np.nan, dtype=np.float32)
        known = [(i, self._row[n]) for i, n in enumerate(names) if n in self._row]
        if known:
            dst, src = map(list, zip(*known, strict=True))
            out[dst] = self._probs[src]
        return out


def _aligned_proba(model, x: np.ndarray) -> np.ndarray:
    """predict_proba with columns placed at their label index (a class absent from training gets 0)."""
    probs = np.zeros((len(x), NUM_LABELS), dtype=np.float32)
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def build_feature_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    return FeatureAgent(spec, context)
