"""The teacher agent interface: what a config names (AgentSpec), what agents are built from (AgentContext), and
what every agent answers (Agent).

Usage:
    from teacher.spec import AgentContext, AgentSpec, default_agents
    specs = default_agents()                       # one feature agent per modality
    spec = AgentSpec(name="qwen-audio", kind="llm", options={"model": "...", "family": "qwen2_audio"})

Every agent answers `score(names)` with probabilities over clips.labels.LABELS. The agent kinds live in their own
modules (teacher.feature_agent, teacher.llm_agent) and import this one; teacher.agents dispatches on `kind`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from clips.folds import FoldAssignment
from teacher.llm_options import LLMAgentOptions

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
    # llm: model, family, view, ... (validated by teacher.llm_options.LLMAgentOptions)
    options: dict[str, Any] = field(default_factory=dict)
    # llm: a folder written by `teacher-train --folds K --run RUN` (fold_K/adapter, provenance.json); fold k's adapter
    # scores fold k's labelled clips (out of fold) and every fold's adapter scores the pool; None: options.adapter
    fold_adapters: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in AGENT_KINDS:
            raise ValueError(f"agent {self.name!r}: kind {self.kind!r} is not one of {AGENT_KINDS}")
        if self.kind == "features" and self.modality is None:
            raise ValueError(f"agent {self.name!r}: a features agent needs `modality` "
                             "(audio, visual, text or all)")
        if self.fold_adapters is not None and (self.kind != "llm" or self.options.get("adapter")):
            raise ValueError(f"agent {self.name!r}: fold_adapters is for an llm agent without options.adapter")
        if self.kind == "llm":
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

    # the loaded FeatureSet of all clips (features.FeatureSet)
    features: Any
    # labelled clip names and their label strings
    labels: dict[str, str]
    # every clip by name, for agents that read media (llm agents); None when not given
    clips: dict[str, Any] | None = None
    # the run's fold assignment of the labelled clips (clips.folds; None: a stratified 5-fold one made from `labels`)
    folds: FoldAssignment | None = None


class NoLabelledEvidence(ValueError):
    """An agent has too few labelled clips with its inputs to be fitted (e.g. a visual agent on audio-only clips)."""


def combine_folds(fold_probs: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """(n, 6) from (n, K, 6) fold-model probabilities: row i's own fold model where fold_of[i] >= 0 (a labelled
    clip, scored out of fold), else the mean over the fold models with evidence (NaN where none has any)."""
    has = ~np.isnan(fold_probs).any(axis=-1)                                       # (n, K)
    total = np.where(has[..., None], fold_probs, 0.0).sum(axis=1)                  # (n, 6)
    count = has.sum(axis=1)[:, None]
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    own = fold_probs[np.arange(len(fold_of)), np.maximum(fold_of, 0)]               # (n, 6)
    return np.where((fold_of >= 0)[:, None], own, mean).astype(np.float32)
