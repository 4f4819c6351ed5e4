"""The teacher agent interface and the feature agents (per-modality classifiers on cached features).

Usage:
    agent = build_agent(AgentSpec(name="audio", kind="features", modality="audio"), context)
    probs = agent.score(names)          # (n, 6); NaN rows where the agent has no evidence

Every agent answers `score(names)` with probabilities over clips.labels.LABELS.
Feature agents are trained on the labelled clips; for those clips they return out-of-fold predictions so that
their agreement with the true labels can be measured without leakage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clips.labels import NUM_LABELS, label_index

AGENT_KINDS = ("features", "llm")


@dataclass
class AgentSpec:
    """One teacher agent as a config file names it."""

    # unique agent name; also its folder name in the store
    name: str
    # "features": a classifier on cached features of one modality; "llm": a Qwen teacher (teacher.llm_agent)
    kind: Literal["features", "llm"] = "features"
    # features: which modality's extractors it reads ("audio", "visual", "text", or "all")
    modality: str | None = None
    # features: inverse L2 strength of the logistic regression
    C: float = 0.5
    # features: folds for the out-of-fold predictions on labelled clips
    folds: int = 5
    # random seed of the fold split
    seed: int = 0
    # llm: model, family, view, ... (validated by teacher.llm_agent.LLMAgentOptions)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in AGENT_KINDS:
            raise ValueError(f"agent {self.name!r}: kind {self.kind!r} is not one of {AGENT_KINDS}")
        if self.kind == "features" and self.modality is None:
            raise ValueError(f"agent {self.name!r}: a features agent needs `modality` "
                             "(audio, visual, text or all)")
        if self.folds < 2:
            raise ValueError(f"agent {self.name!r}: folds={self.folds}; use at least 2")
        if self.kind == "llm":
            from teacher.llm_agent import LLMAgentOptions  # light: torch loads only when the agent is built

            LLMAgentOptions.from_options(self.options, self.name)


def default_agents() -> list[AgentSpec]:
    """One feature agent per modality: the embedded default teacher."""
    return [AgentSpec(name=m, kind="features", modality=m) for m in ("audio", "visual", "text")]


class Agent(Protocol):
    """Anything that scores clips with a probability over the 6 labels."""

    name: str

    def settings(self) -> dict[str, Any]:
        """What changes the agent's outputs; stored beside them."""
        ...

    def score(self, names: Sequence[str]) -> np.ndarray:
        """(len(names), 6) probabilities; a row of NaN where the agent has no evidence."""
        ...


@dataclass
class AgentContext:
    """What agents are built from: the features of every clip and the labelled clips' labels."""

    # the loaded FeatureSet of all clips (student.features.FeatureSet)
    features: Any
    # labelled clip names and their label strings
    labels: dict[str, str]
    # every clip by name, for agents that read media (llm agents); None when not given
    clips: dict[str, Any] | None = None


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


def _build_feature_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    return FeatureAgent(spec, context)


def _build_llm_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    from teacher.llm_agent import build_llm_agent  # torch and transformers load only when an llm agent is used

    return build_llm_agent(spec, context)


AGENT_BUILDERS: dict[str, Callable[[AgentSpec, AgentContext], Agent]] = {
    "features": _build_feature_agent,
    "llm": _build_llm_agent,
}


def build_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    """The agent for `spec`, chosen by its kind."""
    return AGENT_BUILDERS[spec.kind](spec, context)
