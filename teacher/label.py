"""`teacher-label`: run the configured agents over every clip and store their probabilities, resumably.

Usage:
    report = teacher_label(TeacherLabelConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))

Features are extracted first (cached, so a rerun costs nothing); each agent then scores the clips it has not
stored yet, in batches, one atomic shard per batch; with `features.engine: ray` the batches are scored by Ray
Data actors (one replica per GPU for LLM agents). One agent is alive at a time: it is built, scores every clip,
and is released (model dropped, vLLM engine shut down, CUDA cache emptied) before the next is built, so four LLM
agents need the memory of the largest one, not of all four. LLM agents store their label mass beside the
probabilities (the probability the model put on any label token).

Labelled clips are scored too: the filters calibrate and measure the agents on them, so each agent's meta.json
records `labelled_scores`: "out_of_fold" (feature agents, one model per fold of the run's assignment,
run/folds.csv, with every fold model's probabilities stored; LLM agents with fold adapters), "zero_shot" (an LLM
without an adapter: it saw no label) or "in_sample" (an LLM adapter trained on the labelled clips; distill refuses
to calibrate on it). An agent with no labelled evidence (a visual agent on an audio-only corpus) is skipped with
one line, and the other agents go on.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clips.dataset import Corpus, load_corpus
from clips.folds import FoldAssignment, run_folds
from clips.io import remove_partials
from clips.labels import NUM_LABELS
from clips.run import RunPaths
from features.stage import RunConfig, load_run_features, run_features
from teacher.agents import build_agent
from teacher.spec import Agent, AgentContext, AgentSpec, NoLabelledEvidence, combine_folds, default_agents
from teacher.store import AgentStore

log = logging.getLogger(__name__)


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
    # agents left out because no labelled clip had their inputs: name -> why
    no_evidence: dict[str, str] = field(default_factory=dict)


class RayAgentScorer:
    """One replica of an agent as a Ray Data actor; it rebuilds the agent from the run (same data, same seed)."""

    def __init__(self, cfg: TeacherLabelConfig, spec: AgentSpec) -> None:
        self.agent = build_agent(spec, _context(cfg))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        names = [str(name) for name in batch["name"]]
        probs, mass = _score(self.agent, names)
        out = {"name": names, "probs": list(probs), "mass": list(mass)}  # (n, 6) and (n,) as n rows
        if hasattr(self.agent, "score_folds"):
            out["fold_probs"] = list(self.agent.score_folds(names))      # (n, K, 6) as n rows
        return out


def _score(agent: Agent, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """((n, 6) probabilities, (n,) label mass) of an agent; NaN mass for agents that have none (feature agents)."""
    if hasattr(agent, "score_with_mass"):
        return agent.score_with_mass(names)
    return agent.score(names), np.full(len(names), np.nan, dtype=np.float32)


def release(agent: Agent) -> None:
    """Free what an agent holds before the next agent is built: an LLM agent's close() drops its model (or shuts
    its vLLM engine down) and hands the memory back (llm.hf_backend.release_memory); a feature agent holds only
    arrays, freed with the last reference to it."""
    close = getattr(agent, "close", None)
    if callable(close):
        close()


def labelled_scores(spec: AgentSpec) -> str:
    """How an agent scores the labelled clips: "out_of_fold", "zero_shot" (saw no label) or "in_sample"."""
    if spec.kind == "features" or spec.fold_adapters:
        return "out_of_fold"
    if spec.options.get("incontext_k") and not spec.options.get("adapter"):
        return "out_of_fold"  # a labelled clip's in-context examples come from the other folds (teacher.incontext)
    return "in_sample" if spec.options.get("adapter") else "zero_shot"


def fold_adapter_specs(spec: AgentSpec, folds: FoldAssignment) -> list[AgentSpec]:
    """One llm spec per fold adapter of spec.fold_adapters, checked against the run's fold assignment.

    Raises ValueError naming the folder when its adapters were trained on other folds.
    """
    root = Path(spec.fold_adapters)
    meta_path = root / "folds.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if (meta.get("folds"), meta.get("seed")) != (folds.folds, folds.seed):
        raise ValueError(f"agent {spec.name!r}: {meta_path} says folds={meta.get('folds')}, seed={meta.get('seed')}; "
                         f"the run has folds={folds.folds}, seed={folds.seed}: train the adapters with "
                         "`teacher-train --folds K --run RUN` on this run")
    return [replace(spec, fold_adapters=None, options={**spec.options, "adapter": str(root / f"fold_{k}" / "adapter")})
            for k in range(folds.folds)]


def _score_with_fold_adapters(spec: AgentSpec, context: AgentContext, todo: list[str]
                              ) -> tuple[dict, np.ndarray, np.ndarray]:
    """(settings, (n, K, 6) probabilities, (n, K) label mass) of `todo` under each fold adapter, one model loaded
    at a time.

    All of `todo` is scored by one adapter before the next loads, so a killed run redoes this agent's clips.
    """
    fold_probs = np.full((len(todo), context.folds.folds, NUM_LABELS), np.nan, dtype=np.float32)
    fold_mass = np.full((len(todo), context.folds.folds), np.nan, dtype=np.float32)
    settings: dict = {}
    for k, member in enumerate(fold_adapter_specs(spec, context.folds)):
        agent = build_agent(member, context)
        try:
            settings = {**agent.settings(), "adapter": None, "fold_adapters": spec.fold_adapters}
            fold_probs[:, k], fold_mass[:, k] = _score(agent, todo)
        finally:
            release(agent)
    return settings, fold_probs, fold_mass


def _scored_batches(
    cfg: TeacherLabelConfig, spec: AgentSpec, agent: Agent | None, todo: list[str]
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]]:
    """(names, (n, 6) probs, (n, K, 6) fold probs or None, (n,) mass) per batch of `todo`: with `agent` here, or
    on Ray Data actors (agent None) when cfg.features.engine is ray.

    With Ray an LLM agent gets one replica per GPU (num_gpus=1), other agents one CPU each; `workers` replicas.
    """
    if agent is not None:
        score_folds = getattr(agent, "score_folds", None)
        for begin in range(0, len(todo), cfg.batch_size):
            batch = todo[begin:begin + cfg.batch_size]
            probs, mass = _score(agent, batch)
            yield batch, probs, None if score_folds is None else score_folds(batch), mass
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
        fold_probs = np.stack(batch["fold_probs"]).astype(np.float32) if "fold_probs" in batch else None
        yield ([str(name) for name in batch["name"]], np.stack(batch["probs"]).astype(np.float32), fold_probs,
               np.asarray(batch["mass"], dtype=np.float32))


def _context(cfg: TeacherLabelConfig, corpus: Corpus | None = None) -> AgentContext:
    """What agents are built from: every clip's features, the labelled clips' labels and the clips themselves."""
    corpus = corpus if corpus is not None else load_corpus(cfg.data, cfg.unlabelled_dir)
    features = load_run_features(cfg.run, cfg.features, [ref.name for ref in corpus.all()])
    labels = {r.name: r.label for r in corpus.labelled}
    return AgentContext(features=features, labels=labels, clips={r.name: r for r in corpus.all()},
                        folds=run_folds(cfg.run, labels, cfg.folds, cfg.fold_seed))


def teacher_label(cfg: TeacherLabelConfig) -> TeacherLabelReport:
    """Score every clip of the corpus with every agent; returns counts of new and skipped clips.

    Raises ValueError when no agent has labelled evidence.
    """
    start = time.perf_counter()
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    names = [ref.name for ref in corpus.all()]
    scored, skipped, no_evidence = label_agents(cfg, _context(cfg, corpus), names)
    if len(no_evidence) == len(cfg.agents):
        raise ValueError(f"teacher-label: no agent has labelled evidence ({'; '.join(no_evidence.values())}); "
                         "check the features stage's status.csv for the modalities the corpus has")
    return TeacherLabelReport(scored=scored, skipped=skipped, elapsed=time.perf_counter() - start,
                              no_evidence=no_evidence)


def label_agents(cfg: TeacherLabelConfig, context: AgentContext, names: list[str]
                 ) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Each agent of `cfg` in turn: build, score the clips of `names` it has not stored, release.

    Returns (clips newly scored, clips already stored) per agent, and why each agent without labelled evidence
    was skipped.
    """
    store = AgentStore(RunPaths(cfg.run).agents)
    scored: dict[str, int] = {}
    skipped: dict[str, int] = {}
    no_evidence: dict[str, str] = {}
    for spec in cfg.agents:
        remove_partials(store.agent_dir(spec.name))  # the shard a killed run was writing; its batch is redone
        done = store.done(spec.name)
        todo = [n for n in names if n not in done]
        if not todo:
            skipped[spec.name], scored[spec.name] = len(names), 0
            continue
        try:
            if spec.fold_adapters:
                _label_fold_adapters(cfg, spec, context, store, todo)
            else:
                _label_agent(cfg, spec, context, store, todo)
        except NoLabelledEvidence as err:
            # a corpus without this agent's modality: the other agents still make pseudo-labels
            log.warning("skipping agent %r: %s", spec.name, err)
            no_evidence[spec.name] = str(err)
            continue
        skipped[spec.name], scored[spec.name] = len(names) - len(todo), len(todo)
    return scored, skipped, no_evidence


def _label_fold_adapters(cfg: TeacherLabelConfig, spec: AgentSpec, context: AgentContext, store: AgentStore,
                         todo: list[str]) -> None:
    """Score `todo` with each fold adapter in turn and store the clips' out-of-fold (labelled) or fold-mean (pool)
    probabilities with every fold's."""
    settings, fold_probs, fold_mass = _score_with_fold_adapters(spec, context, todo)
    store.write_meta(spec.name, {**settings, "labelled_scores": labelled_scores(spec)})
    fold_of = context.folds.of(todo)
    probs = combine_folds(fold_probs, fold_of)
    mass = combine_folds(fold_mass[..., None], fold_of)[:, 0]  # the same rule on the (n, K) label mass
    for begin in range(0, len(todo), cfg.batch_size):
        part = slice(begin, begin + cfg.batch_size)
        store.append(spec.name, todo[part], probs[part], fold_probs[part],
                     mass=None if np.isnan(mass[part]).all() else mass[part])


def _label_agent(cfg: TeacherLabelConfig, spec: AgentSpec, context: AgentContext, store: AgentStore,
                 todo: list[str]) -> None:
    """Build one agent, store its scores of `todo` batch by batch, and release it even when scoring fails.

    Raises NoLabelledEvidence (from the build) before anything is stored.
    """
    agent = build_agent(spec, context)
    try:
        store.write_meta(spec.name, {**agent.settings(), "labelled_scores": labelled_scores(spec)})
        if cfg.features.engine == "ray":  # the actors build their own replicas: free this one first
            release(agent)
            agent = None
        bar = tqdm(total=len(todo), desc=f"agent {spec.name}", unit="clip", disable=not cfg.progress)
        for batch, probs, fold_probs, mass in _scored_batches(cfg, spec, agent, todo):
            store.append(spec.name, batch, probs, fold_probs, mass=None if np.isnan(mass).all() else mass)
            bar.update(len(batch))
        bar.close()
    finally:
        if agent is not None:
            release(agent)
