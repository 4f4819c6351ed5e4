"""What `distill` reads from a run: the clips, their labels, folds and features, and the agents' evidence.

Usage:
    inputs = load_inputs(cfg, hidden_labels)     # RunInputs: labelled + pool features, labels, the run's folds
    evidence = load_agent_evidence(cfg, inputs, agents, FilterConfig())  # what the cross-fitted filter reads
    fit = evidence.fit(FilterConfig())            # the filter cross-fitted over the run's folds (computed once)
    kept_counts(fit.pseudo)                       # kept pseudo-labels per class, mean over the folds

Agents whose labelled-clip scores are in-sample are refused (check_out_of_fold), naming the agent and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clips.dataset import load_corpus, read_label_csv
from clips.folds import run_folds
from clips.labels import LABELS, NUM_LABELS, label_index
from clips.run import RunPaths
from features.stage import RunConfig, load_run_features, run_features
from pseudo.measure import Calibration, CrossFit, cross_fit, fold_calibrations
from pseudo.select import FilterConfig, PseudoLabels, min_agents
from teacher.store import AgentStore

log = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """Everything the students of one distill call share."""

    labelled: list[str]
    pool: list[str]
    # (labelled,) label indices, (6,) their counts and (labelled,) the run's fold of each
    y: np.ndarray
    counts: np.ndarray
    fold_of: np.ndarray
    # features of labelled + pool, rows in that order
    blocks: list[np.ndarray]
    masks: np.ndarray
    # (pool,) hidden label indices, or None
    hidden: np.ndarray | None
    # the feature extractors behind `blocks`
    extractors: list[str] = field(default_factory=list)


@dataclass
class AgentEvidence:
    """The agents' probabilities as the cross-fitted filter reads them."""

    names: list[str]
    # (agents, labelled, 6) out-of-fold probabilities of the labelled clips
    labelled: np.ndarray
    # (agents, pool, K, 6) each agent's fold-model probabilities of the pool
    pool: np.ndarray
    # per fold, fitted on the other folds' labelled clips
    calibrations: list[Calibration]
    # the labelled clips' labels and folds, and the pool's names, as in RunInputs
    y: np.ndarray
    fold_of: np.ndarray
    pool_names: list[str]
    # cross-fits already computed on these agents, by the filter's repr: distill, the filter report and the
    # ablation ask for the chosen filter and the fixed baseline more than once
    fits: dict[str, CrossFit] = field(default_factory=dict)
    # calibrations fitted the other way (with or without the label prior) for a filter that asks for it
    other: list[Calibration] | None = None

    def calibrations_for(self, prior: bool) -> list[Calibration]:
        """The per-fold calibrations with (`prior`) or without the label-prior step."""
        if (self.calibrations[0].priors is not None) == prior:
            return self.calibrations
        if self.other is None:
            self.other = fold_calibrations(self.labelled, self.y, self.fold_of, prior=prior)
        return self.other

    def fit(self, cfg: FilterConfig) -> CrossFit:
        """The filter `cfg` cross-fitted on these agents (computed once per filter)."""
        key = repr(cfg)
        if key not in self.fits:
            self.fits[key] = cross_fit(self.labelled, self.y, self.fold_of, self.pool, self.pool_names, cfg,
                                       self.calibrations_for(cfg.prior))
        return self.fits[key]


def kept_counts(pseudo: list[PseudoLabels]) -> dict[str, int]:
    """Kept pseudo-labels per class, mean over the student's folds (rounded)."""
    per_fold = np.array([[p.counts()[label] for label in LABELS] for p in pseudo])   # (K, 6)
    return {label: int(round(v)) for label, v in zip(LABELS, per_fold.mean(axis=0), strict=True)}


def read_hidden_labels(path: Path, pool: list[str]) -> np.ndarray:
    """(pool,) label indices of the pool's clips from a name,discrete CSV (checked by read_label_csv).

    Raises ValueError naming the pool clips the file lacks.
    """
    labels = read_label_csv(path)
    missing = [n for n in pool if n not in labels]
    if missing:
        raise ValueError(f"{path}: {len(missing)} pool clip(s) without a label ({', '.join(missing[:10])}); "
                         "give a name,discrete CSV covering the whole pool")
    return np.array([label_index(labels[n]) for n in pool], dtype=np.int64)


def load_agents(run: Path, agents: list[str] | None) -> tuple[AgentStore, list[str]]:
    """The run's agent store and the agents to use; raises ValueError naming missing agents."""
    store = AgentStore(RunPaths(run).agents)
    agents = agents if agents is not None else store.agents()
    available = set(store.agents())
    missing = [a for a in agents if a not in available]
    if not agents or missing:
        raise ValueError(
            f"{RunPaths(run).agents}: no stored outputs for agent(s) {missing or 'any'}; "
            "run `python cli.py teacher-label` with this --run first"
        )
    return store, agents


def check_out_of_fold(store: AgentStore, agents: list[str], folds: int, fold_seed: int) -> None:
    """Raise ValueError naming every agent whose labelled-clip scores are not out of fold under the run's folds,
    with the fix: calibration and held-out measurement on in-sample scores would report what is not there."""
    problems = []
    for agent in agents:
        meta = store.read_meta(agent) or {}
        kind = meta.get("labelled_scores")
        if kind == "in_sample":
            problems.append(f"agent {agent!r} scored the labelled clips with a model trained on them (in-sample); "
                            "train one adapter per fold (`teacher-train --folds K --run RUN`) and label with its "
                            "`fold_adapters`, or leave the agent out of `agents`")
        elif kind is None:
            problems.append(f"agent {agent!r} was stored without a record of how it scored the labelled clips (a run "
                            "from before per-fold teachers); relabel it with teacher-label in a new --run folder")
        elif kind == "out_of_fold" and (meta.get("folds"), meta.get("fold_seed")) != (folds, fold_seed):
            problems.append(f"agent {agent!r} was fitted on folds={meta.get('folds')}, seed={meta.get('fold_seed')}; "
                            f"the run has folds={folds}, seed={fold_seed}: relabel it in a new --run folder")
    if problems:
        raise ValueError(f"{store.root}: " + "; ".join(problems))


def load_inputs(cfg: RunConfig, hidden_labels: Path | None = None) -> RunInputs:
    """The run's labelled and pool clips with their features (extracted first where missing), the run's folds, and
    the pool's labels from `hidden_labels` (a name,discrete CSV) when given."""
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    labelled = [r.name for r in corpus.labelled]
    pool = [r.name for r in corpus.unlabelled]
    y = np.array([label_index(r.label) for r in corpus.labelled], dtype=np.int64)
    folds = run_folds(cfg.run, {r.name: r.label for r in corpus.labelled}, cfg.folds, cfg.fold_seed)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    features = load_run_features(cfg.run, cfg.features, labelled + pool)
    return RunInputs(labelled=labelled, pool=pool, y=y, counts=np.bincount(y, minlength=NUM_LABELS),
                     fold_of=folds.of(labelled), blocks=features.blocks, masks=features.masks,
                     hidden=read_hidden_labels(hidden_labels, pool) if hidden_labels else None,
                     extractors=features.extractors)


def load_agent_evidence(cfg: RunConfig, inputs: RunInputs, agents: list[str] | None,
                        filter_cfg: FilterConfig) -> AgentEvidence:
    """The stored `agents`' probabilities of the run's clips (None: every stored agent), with per-fold
    calibrations; `filter_cfg` is the filter they will feed (its min_agents is checked against them).

    Raises ValueError for missing agents or agents whose labelled-clip scores are not out of fold.
    """
    store, names = load_agents(cfg.run, agents)
    check_out_of_fold(store, names, cfg.folds, cfg.fold_seed)
    labelled = store.matrix(names, inputs.labelled)                    # (agents, labelled, 6) out of fold
    pool = store.matrix_folds(names, inputs.pool, cfg.folds)           # (agents, pool, K, 6)
    if min_agents(labelled, filter_cfg) < filter_cfg.min_agents:
        log.info("%d agent(s): min_agents lowered from %d to %d (the agreement of one agent is trivial)",
                 len(names), filter_cfg.min_agents, min_agents(labelled, filter_cfg))
    return AgentEvidence(names=names, labelled=labelled, pool=pool,
                         calibrations=fold_calibrations(labelled, inputs.y, inputs.fold_of, prior=filter_cfg.prior),
                         y=inputs.y, fold_of=inputs.fold_of, pool_names=inputs.pool)
