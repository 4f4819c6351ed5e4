"""`teacher-label`: run the configured agents over every clip and store their probabilities, resumably.

Usage:
    report = teacher_label(TeacherLabelConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))

Features are extracted first (cached, so a rerun costs nothing); each agent then scores the clips it has not
stored yet, in batches, one atomic shard per batch; with `features.engine: ray` the batches are scored by Ray
Data actors (one replica per GPU for LLM agents). One agent is alive at a time: it is built, scores every clip,
and is released (model dropped, vLLM engine shut down, CUDA cache emptied) before the next is built, so four LLM
agents need the memory of the largest one, not of all four. LLM agents store their label mass beside the
probabilities (the probability the model put on any label token). Labelled clips are scored too (out-of-fold for feature
agents): the filters calibrate and measure the agents on them.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from clips.dataset import Corpus, load_corpus
from clips.io import remove_partials
from clips.run import RunPaths
from features.stage import RunConfig, load_run_features, run_features
from teacher.agents import build_agent
from teacher.spec import Agent, AgentContext, AgentSpec, default_agents
from teacher.store import AgentStore


@dataclass
class TeacherLabelConfig(RunConfig):
    """Settings of `teacher-label`."""

    # the teacher agents to run
    agents: list[AgentSpec] = field(default_factory=default_agents)
    # clips scored per stored shard
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}; use a positive number of clips per shard")
        names = [a.name for a in self.agents]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"agents: the name(s) {doubled} appear more than once; give each agent its own name")
        if not self.agents:
            raise ValueError("agents: the list is empty; name at least one agent")


@dataclass
class TeacherLabelReport:
    """What one `teacher-label` run did."""

    # clips newly scored per agent
    scored: dict[str, int]
    # clips found already stored per agent
    skipped: dict[str, int]
    elapsed: float


class RayAgentScorer:
    """One replica of an agent as a Ray Data actor; it rebuilds the agent from the run (same data, same seed)."""

    def __init__(self, cfg: TeacherLabelConfig, spec: AgentSpec) -> None:
        self.agent = build_agent(spec, _context(cfg))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        names = [str(name) for name in batch["name"]]
        probs, mass = _score(self.agent, names)
        return {"name": names, "probs": list(probs), "mass": list(mass)}  # (n, 6) and (n,) as n rows


def _score(agent: Agent, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """((n, 6) probabilities, (n,) label mass) of an agent; NaN mass for agents that have none (feature agents)."""
    if hasattr(agent, "score_with_mass"):
        return agent.score_with_mass(names)
    return agent.score(names), np.full(len(names), np.nan, dtype=np.float32)


def release(agent: Agent) -> None:
    """Free what an agent holds (its model, a vLLM engine) before the next agent is built."""
    close = getattr(agent, "close", None)
    if callable(close):
        close()
    gc.collect()
    torch = sys.modules.get("torch")  # only when some agent loaded it: feature agents never need torch
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _scored_batches(
    cfg: TeacherLabelConfig, spec: AgentSpec, agent: Agent | None, todo: list[str]
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(names, (n, 6) probs, (n,) mass) per batch of `todo`: with `agent` here, or on Ray Data actors (agent None)
    when cfg.features.engine is ray.

    With Ray an LLM agent gets one replica per GPU (num_gpus=1), other agents one CPU each; `workers` replicas.
    """
    if agent is not None:
        for begin in range(0, len(todo), cfg.batch_size):
            batch = todo[begin:begin + cfg.batch_size]
            yield (batch, *_score(agent, batch))
        return
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=cfg.features.workers, include_dashboard=False, log_to_driver=False)
    resources = {"num_gpus": 1} if spec.kind == "llm" else {"num_cpus": 1}
    dataset = ray.data.from_items([{"name": name} for name in todo]).map_batches(
        RayAgentScorer, fn_constructor_args=(cfg, spec), concurrency=cfg.features.workers,
        batch_size=cfg.batch_size, **resources,
    )
    for batch in dataset.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
        yield ([str(name) for name in batch["name"]], np.stack(batch["probs"]).astype(np.float32),
               np.asarray(batch["mass"], dtype=np.float32))


def _context(cfg: TeacherLabelConfig, corpus: Corpus | None = None) -> AgentContext:
    """What agents are built from: every clip's features, the labelled clips' labels and the clips themselves."""
    corpus = corpus if corpus is not None else load_corpus(cfg.data, cfg.unlabelled_dir)
    features = load_run_features(cfg.run, cfg.features, [ref.name for ref in corpus.all()])
    return AgentContext(features=features, labels={r.name: r.label for r in corpus.labelled},
                        clips={r.name: r for r in corpus.all()})


def teacher_label(cfg: TeacherLabelConfig) -> TeacherLabelReport:
    """Score every clip of the corpus with every agent; returns counts of new and skipped clips."""
    start = time.perf_counter()
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    names = [ref.name for ref in corpus.all()]
    context = _context(cfg, corpus)
    scored, skipped = label_agents(cfg, context, names)
    return TeacherLabelReport(scored=scored, skipped=skipped, elapsed=time.perf_counter() - start)


def label_agents(cfg: TeacherLabelConfig, context: AgentContext, names: list[str]
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """Each agent of `cfg` in turn: build, score the clips of `names` it has not stored, release.

    Returns (clips newly scored, clips already stored) per agent.
    """
    store = AgentStore(RunPaths(cfg.run).agents)
    scored: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for spec in cfg.agents:
        remove_partials(store.agent_dir(spec.name))  # the shard a killed run was writing; its batch is redone
        done = store.done(spec.name)
        todo = [n for n in names if n not in done]
        skipped[spec.name], scored[spec.name] = len(names) - len(todo), len(todo)
        if todo:
            _label_agent(cfg, spec, context, store, todo)
    return scored, skipped


def _label_agent(cfg: TeacherLabelConfig, spec: AgentSpec, context: AgentContext, store: AgentStore,
                 todo: list[str]) -> None:
    """Build one agent, store its scores of `todo` batch by batch, and release it even when scoring fails."""
    agent = build_agent(spec, context)
    try:
        store.write_meta(spec.name, agent.settings())
        if cfg.features.engine == "ray":  # the actors build their own replicas: free this one first
            release(agent)
            agent = None
        bar = tqdm(total=len(todo), desc=f"agent {spec.name}", unit="clip", disable=not cfg.progress)
        for batch, probs, mass in _scored_batches(cfg, spec, agent, todo):
            store.append(spec.name, batch, probs, mass=None if np.isnan(mass).all() else mass)
            bar.update(len(batch))
        bar.close()
    finally:
        if agent is not None:
            release(agent)
