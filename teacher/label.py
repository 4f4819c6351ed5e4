"""`teacher-label`: run the configured agents over every clip and store their probabilities, resumably.

Usage:
    report = teacher_label(TeacherLabelConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))

Features are extracted first (cached, so a rerun costs nothing); each agent then scores the clips it has not
stored yet, in batches, one atomic shard per batch; with `features.engine: ray` the batches are scored by Ray
Data actors (one replica per GPU for LLM agents). Labelled clips are scored too: the filters calibrate and measure
the agents on them, so each agent's meta.json records `labelled_scores`: "out_of_fold" (feature agents, one model
per fold of the run's assignment, run/folds.csv, with every fold model's probabilities stored), "zero_shot" (an
LLM without an adapter: it saw no label) or "in_sample" (an LLM adapter trained on the labelled clips; distill
refuses to calibrate on it). An agent with no labelled evidence (a visual agent on an audio-only corpus) is
skipped with one line, and the other agents go on.
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
        out = {"name": names, "probs": list(self.agent.score(names))}  # (n, 6) as n rows
        if hasattr(self.agent, "score_folds"):
            out["fold_probs"] = list(self.agent.score_folds(names))      # (n, K, 6) as n rows
        return out


def labelled_scores(spec: AgentSpec) -> str:
    """How an agent scores the labelled clips: "out_of_fold", "zero_shot" (saw no label) or "in_sample"."""
    if spec.kind == "features" or spec.fold_adapters:
        return "out_of_fold"
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


def _score_with_fold_adapters(spec: AgentSpec, context: AgentContext, todo: list[str]) -> tuple[dict, np.ndarray]:
    """(settings, (n, K, 6) probabilities) of `todo` under each fold adapter, one model loaded at a time.

    All of `todo` is scored by one adapter before the next loads, so a killed run redoes this agent's clips.
    """
    fold_probs = np.full((len(todo), context.folds.folds, NUM_LABELS), np.nan, dtype=np.float32)
    settings: dict = {}
    for k, member in enumerate(fold_adapter_specs(spec, context.folds)):
        agent = build_agent(member, context)
        settings = {**agent.settings(), "adapter": None, "fold_adapters": spec.fold_adapters}
        fold_probs[:, k] = agent.score(todo)
        del agent
    return settings, fold_probs


def _scored_batches(
    cfg: TeacherLabelConfig, spec: AgentSpec, agent: Agent, todo: list[str]
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
    """(names, (n, 6) probs, (n, K, 6) fold probs or None) per batch of `todo`: here, or on Ray Data actors when
    cfg.features.engine is ray.

    With Ray an LLM agent gets one replica per GPU (num_gpus=1), other agents one CPU each; `workers` replicas.
    """
    score_folds = getattr(agent, "score_folds", None)
    if cfg.features.engine != "ray":
        for begin in range(0, len(todo), cfg.batch_size):
            batch = todo[begin:begin + cfg.batch_size]
            yield batch, agent.score(batch), None if score_folds is None else score_folds(batch)
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
        yield [str(name) for name in batch["name"]], np.stack(batch["probs"]).astype(np.float32), fold_probs


def _context(cfg: TeacherLabelConfig, corpus: Corpus | None = None) -> AgentContext:
    """What agents are built from: every clip's features, the labelled clips' labels and the clips themselves."""
    corpus = corpus if corpus is not None else load_corpus(cfg.data, cfg.unlabelled_dir)
    features = load_run_features(cfg.run, cfg.features, [ref.name for ref in corpus.all()])
    labels = {r.name: r.label for r in corpus.labelled}
    return AgentContext(features=features, labels=labels, clips={r.name: r for r in corpus.all()},
                        folds=run_folds(cfg.run, labels, cfg.folds, cfg.fold_seed))


def teacher_label(cfg: TeacherLabelConfig) -> TeacherLabelReport:
    """Score every clip of the corpus with every agent; returns counts of new and skipped clips."""
    start = time.perf_counter()
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    names = [ref.name for ref in corpus.all()]
    context = _context(cfg, corpus)
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
            agent = None if spec.fold_adapters else build_agent(spec, context)
        except NoLabelledEvidence as err:
            # a corpus without this agent's modality: the other agents still make pseudo-labels
            log.warning("skipping agent %r: %s", spec.name, err)
            no_evidence[spec.name] = str(err)
            continue
        skipped[spec.name], scored[spec.name] = len(names) - len(todo), len(todo)
        if spec.fold_adapters:
            settings, fold_probs = _score_with_fold_adapters(spec, context, todo)
            store.write_meta(spec.name, {**settings, "labelled_scores": labelled_scores(spec)})
            probs = combine_folds(fold_probs, context.folds.of(todo))
            for begin in range(0, len(todo), cfg.batch_size):
                part = slice(begin, begin + cfg.batch_size)
                store.append(spec.name, todo[part], probs[part], fold_probs[part])
            continue
        store.write_meta(spec.name, {**agent.settings(), "labelled_scores": labelled_scores(spec)})
        bar = tqdm(total=len(todo), desc=f"agent {spec.name}", unit="clip", disable=not cfg.progress)
        for batch, probs, fold_probs in _scored_batches(cfg, spec, agent, todo):
            store.append(spec.name, batch, probs, fold_probs)
            bar.update(len(batch))
        bar.close()
    if len(no_evidence) == len(cfg.agents):
        raise ValueError(f"teacher-label: no agent has labelled evidence ({'; '.join(no_evidence.values())}); "
                         "check the features stage's status.csv for the modalities the corpus has")
    return TeacherLabelReport(scored=scored, skipped=skipped, elapsed=time.perf_counter() - start,
                              no_evidence=no_evidence)
