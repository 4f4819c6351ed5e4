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
records `labelled_scores`, decided from the provenance records teacher-train writes beside every model
(teacher.provenance), not from the config: "out_of_fold" (feature agents, one model per fold of the run's
assignment, run/folds.csv, with every fold model's probabilities stored; LLM agents served from `fold_adapters`,
each fold model's record checked to leave out exactly its fold), "zero_shot" (an LLM whose model has no record of
training: it saw no label) or "in_sample" (a teacher-train product, or an adapter of unknown origin, scoring the
clips it may have trained on; distill refuses to calibrate on it). An agent with no labelled evidence (a visual
agent on an audio-only corpus) is skipped with one line, and the other agents go on.

An LLM agent with `fold_adapters` is served the way its backend can (fold_serving): the transformers backend loads
the base once with the K adapters and switches between them; vLLM serves the K LoRA adapters from one engine
(`adapter-vllm` for Omni), and Qwen2-Audio, which has no LoRA in vLLM, from each fold's merged export in turn.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clips.dataset import Corpus, load_corpus
from clips.folds import FoldAssignment, run_folds
from clips.io import remove_partials
from clips.labels import NUM_LABELS
from clips.run import RunPaths
from features.stage import RunConfig, load_run_features, run_features
from llm.families import Family
from teacher.agents import build_agent
from teacher.llm_agent import LLMAgent
from teacher.llm_options import LLMAgentOptions
from teacher.provenance import check_fold_product, labelled_scores_of
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


def labelled_evidence(spec: AgentSpec, context: AgentContext) -> dict:
    """How an agent scores the labelled clips, from what trained its models (teacher.provenance), never from the
    config alone: {"labelled_scores": "out_of_fold" | "zero_shot" | "in_sample", "provenance": ...}.

    Feature agents and fold-served llm agents fit or load one model per fold of the run's assignment (out of fold,
    with `folds` and `fold_seed`), and so does a zero-shot model shown in-context examples of the other folds only;
    a single llm model is "in_sample" when its record (or its adapter's) says it
    trained on labelled clips, or when an adapter has no record, and "zero_shot" when nothing records training.
    Raises ValueError naming the folder when a fold model's record does not leave out its fold of this run.
    """
    if spec.kind == "features":
        return {"labelled_scores": "out_of_fold"}
    folds = context.folds
    if spec.fold_adapters:
        return _fold_evidence(_records(fold_serving(spec, folds, sorted(context.labels))), folds)
    kind, records = labelled_scores_of(spec.options.get("model"), spec.options.get("adapter"))
    if kind == "zero_shot" and spec.options.get("incontext_k"):
        # a model that saw no label, shown labelled lines of the other folds only (teacher.incontext)
        return _fold_evidence(records, folds)
    return {"labelled_scores": kind, "provenance": records}


def _records(serving: list[FoldServing]) -> list[dict]:
    """The provenance records of every fold model in `serving`."""
    return [record for group in serving for record in group.records]


def _fold_evidence(records: list[dict], folds: FoldAssignment) -> dict:
    """labelled_evidence of an agent scored out of fold on the run's assignment, with its models' records."""
    return {"labelled_scores": "out_of_fold", "folds": folds.folds, "fold_seed": folds.seed, "provenance": records}


@dataclass(frozen=True)
class FoldServing:
    """One model an agent's fold scoring loads: a base with fold adapters, or one fold's merged export."""

    # checkpoint folder or hub id loaded
    model: str
    # LoRA adapter folders served on it (empty: the model is itself one fold's model)
    adapters: tuple[str, ...]
    # fold of each adapter (or of the model when there is no adapter)
    folds: tuple[int, ...]
    # provenance record of each fold model (teacher.provenance), as stored in the agent's meta
    records: tuple[dict, ...]

    def adapter_of(self, fold: int) -> int | None:
        """The scorer's adapter index for `fold`'s model (None: the model itself)."""
        return self.folds.index(fold) if self.adapters else None


def fold_product(family: Family, backend: str) -> str:
    """Which of teacher-train's fold products a backend serves for `family`: the peft adapter (transformers; vLLM
    LoRA), the adapter with the keys vLLM maps (adapter-vllm: Omni's thinker prefix), or the merged export (vLLM
    has no LoRA for the family: Qwen2-Audio)."""
    if backend == "hf":
        return "adapter"
    if not family.vllm_lora:
        return "merged"
    return "adapter-vllm" if family.vllm_adapter_prefix else "adapter"


def fold_serving(spec: AgentSpec, folds: FoldAssignment, labelled: list[str]) -> list[FoldServing]:
    """The models that serve spec.fold_adapters' K fold models under the agent's backend, each fold's record
    checked to leave out exactly that fold of the run's labelled clips (teacher.provenance.check_fold_product).

    One model with K adapters where the backend serves LoRA for the family; else K merged exports in turn.
    Raises ValueError naming the missing or mismatched folder and the fix.
    """
    options = LLMAgentOptions.from_options(spec.options, spec.name)
    family = options.family_record()
    product = fold_product(family, options.backend)
    root = Path(spec.fold_adapters)
    fold_of = folds.of(labelled)
    folders, records = [], []
    for k in range(folds.folds):
        folder = root / f"fold_{k}" / product
        if not folder.is_dir():
            fix = ("train the fold teachers with `merge: true` (teacher-train writes fold_K/merged, the layout vLLM "
                   "loads), or score with backend: hf" if product == "merged" else
                   "train them with `teacher-train --folds K --run RUN`")
            raise ValueError(f"agent {spec.name!r}: {folder} is missing; {options.backend} serves {family.name} "
                             f"fold models from fold_K/{product}: {fix}")
        train = [n for n, f in zip(labelled, fold_of, strict=True) if f != k]
        records.append(check_fold_product(folder, k, folds.folds, folds.seed, train).to_dict())
        folders.append(str(folder))
    if product == "merged":
        return [FoldServing(model=folder, adapters=(), folds=(k,), records=(record,))
                for k, (folder, record) in enumerate(zip(folders, records, strict=True))]
    return [FoldServing(model=options.model, adapters=tuple(folders), folds=tuple(range(folds.folds)),
                        records=tuple(records))]


def _fold_stores(store: AgentStore, agent: str) -> AgentStore:
    """Where an agent's fold scoring keeps each fold model's scores as it goes (agent/fold-scores/fold_K/)."""
    return AgentStore(store.agent_dir(agent) / "fold-scores")


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
    """Score `todo` with the agent's K fold models and store each clip's out-of-fold (labelled) or fold-mean (pool)
    probabilities with every fold's.

    A labelled clip is scored once, by its own fold's model; a pool clip once by each. Where the backend serves
    LoRA, one model (one vLLM engine) holds all K adapters and each batch goes to it as one call; otherwise each
    fold's merged export is loaded in turn. Each fold model's scores are written as shards as they come
    (agent/fold-scores/fold_K/), so a killed run loses at most one batch; the agent's own shards are written from
    them once every fold model has scored every clip.
    """
    serving = fold_serving(spec, context.folds, sorted(context.labels))  # every fold's record read and checked once
    evidence = _fold_evidence(_records(serving), context.folds)
    fold_stores = _fold_stores(store, spec.name)
    fold_of = dict(zip(todo, context.folds.of(todo).tolist(), strict=True))
    options = LLMAgentOptions.from_options(spec.options, spec.name)
    # (clip, fold model) scores still to make: a labelled clip's own fold, every fold for a pool clip
    done = {}
    for k in range(context.folds.folds):
        remove_partials(fold_stores.agent_dir(f"fold_{k}"))
        done[k] = fold_stores.done(f"fold_{k}")
    needed = {n: [k for k in range(context.folds.folds) if fold_of[n] in (k, -1)] for n in todo}
    bar = tqdm(total=sum(map(len, needed.values())), desc=f"agent {spec.name} (fold models)", unit="score",
               disable=not cfg.progress)
    bar.update(sum(n in done[k] for n in todo for k in needed[n]))
    for group in serving:
        wanted = {n: [k for k in needed[n] if k in group.folds and n not in done[k]] for n in todo}
        names = [n for n in todo if wanted[n]]
        if not names:
            continue
        agent = LLMAgent(spec.name, dataclasses.replace(options, model=group.model), context.clips,
                         adapters=list(group.adapters))
        try:
            settings = {**agent.settings(), "model": options.model, "fold_adapters": spec.fold_adapters,
                        "fold_product": fold_product(options.family_record(), options.backend)}
            store.write_meta(spec.name, {**settings, **evidence})
            for begin in range(0, len(names), cfg.batch_size):
                batch = names[begin:begin + cfg.batch_size]
                probs, mass = agent.score_adapters(batch, [[group.adapter_of(k) for k in wanted[n]] for n in batch])
                for k in group.folds:
                    rows = [i for i, n in enumerate(batch) if k in wanted[n]]
                    slot = group.adapter_of(k) or 0
                    if rows:
                        fold_stores.append(f"fold_{k}", [batch[i] for i in rows], probs[rows, slot],
                                           mass=mass[rows, slot])
                bar.update(sum(len(wanted[n]) for n in batch))
        finally:
            release(agent)
    bar.close()
    _store_fold_scores(cfg, spec.name, store, fold_stores, todo, context.folds)


def _store_fold_scores(cfg: TeacherLabelConfig, agent: str, store: AgentStore, fold_stores: AgentStore,
                       todo: list[str], folds: FoldAssignment) -> None:
    """The agent's shards of `todo` from its fold models' stored scores: (n, K, 6) fold probabilities, NaN where a
    fold model did not score the clip (a labelled clip outside its fold), and the combined (n, 6)."""
    row = {name: i for i, name in enumerate(todo)}
    fold_probs = np.full((len(todo), folds.folds, NUM_LABELS), np.nan, dtype=np.float32)
    fold_mass = np.full((len(todo), folds.folds), np.nan, dtype=np.float32)
    for k in range(folds.folds):
        names, probs, mass = fold_stores.read_with_mass(f"fold_{k}")
        mine = [(row[n], i) for i, n in enumerate(names) if n in row]
        fold_probs[[r for r, _ in mine], k] = probs[[i for _, i in mine]]
        fold_mass[[r for r, _ in mine], k] = mass[[i for _, i in mine]]
    fold_of = folds.of(todo)
    probs = combine_folds(fold_probs, fold_of)
    mass = combine_folds(fold_mass[..., None], fold_of)[:, 0]  # the same rule on the (n, K) label mass
    for begin in range(0, len(todo), cfg.batch_size):
        part = slice(begin, begin + cfg.batch_size)
        store.append(agent, todo[part], probs[part], fold_probs[part],
                     mass=None if np.isnan(mass[part]).all() else mass[part])


def _label_agent(cfg: TeacherLabelConfig, spec: AgentSpec, context: AgentContext, store: AgentStore,
                 todo: list[str]) -> None:
    """Build one agent, store its scores of `todo` batch by batch, and release it even when scoring fails.

    Raises NoLabelledEvidence (from the build) before anything is stored.
    """
    agent = build_agent(spec, context)
    try:
        store.write_meta(spec.name, {**agent.settings(), **labelled_evidence(spec, context)})
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
