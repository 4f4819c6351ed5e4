"""`distill`: train the fusion student on the labelled clips plus the kept pseudo-labelled clips.

Usage:
    report = distill(DistillConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))
    report.scores.waf          # 5-fold out-of-fold WAF on the labelled clips
    report.kept                # pseudo-labels kept per class

Pseudo-labels come only from the unlabelled pool, and the 5-fold score is measured on labelled clips alone,
so nothing leaks into the reported WAF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from clips.scoring import Scores

from clips.config import to_dict
from clips.dataset import load_corpus
from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS, label_index
from clips.run import RunPaths
from pseudo.select import FilterConfig, PseudoLabels, select_pseudo_labels, write_pseudo_labels
from student.extract import FeatureSettings, load_run_features, run_features
from student.train import StudentConfig, save_student, train_student
from teacher.store import AgentStore


@dataclass
class DistillConfig:
    """Settings of `distill`."""

    # dataset folder (MER2024 release layout or a generic folder)
    data: Path
    # run folder written by `teacher-label`
    run: Path
    # the unlabelled folder's name inside `data`; found automatically when None
    unlabelled_dir: str | None = None
    # extractors and their options; must match those of the other stages of the run
    features: FeatureSettings = field(default_factory=FeatureSettings)
    # stored agents whose probabilities make the pseudo-labels (None: every agent in the store)
    agents: list[str] | None = None
    # add pseudo-labelled clips (False trains on labelled clips only)
    use_pseudo: bool = True
    # the consistency filter
    filter: FilterConfig = field(default_factory=FilterConfig)
    # the student's training settings
    student: StudentConfig = field(default_factory=StudentConfig)
    # where the student is saved (default: run/student)
    out: Path | None = None
    # show progress bars
    progress: bool = True

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = RunPaths(self.run).student


@dataclass
class DistillReport:
    """What `distill` trained and how well."""

    # out-of-fold scores on the labelled clips
    scores: Scores
    # pseudo-labels kept per class (all zero without pseudo-labels)
    kept: dict[str, int]
    # the folder holding the saved student
    student_dir: Path
    # labelled clips trained on
    labelled: int


def pseudo_labels_from_store(
    run: Path, pool: list[str], labelled_counts: np.ndarray, cfg: FilterConfig, agents: list[str] | None,
) -> tuple[PseudoLabels, list[str], np.ndarray]:
    """Filter the stored agents' probabilities of the pool; returns (pseudo, agent names, probs)."""
    store = AgentStore(RunPaths(run).agents)
    agents = agents if agents is not None else store.agents()
    missing = [a for a in agents if a not in store.agents()]
    if not agents or missing:
        raise ValueError(
            f"{RunPaths(run).agents}: no stored outputs for agent(s) {missing or 'any'}; "
            "run `python cli.py teacher-label` with this --run first"
        )
    probs = store.matrix(agents, pool)                                 # (agents, pool, 6)
    return select_pseudo_labels(probs, pool, cfg, labelled_counts), agents, probs


def distill(cfg: DistillConfig) -> DistillReport:
    """Train and save the student; returns its out-of-fold scores and the kept pseudo-label counts."""
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    labelled = [r.name for r in corpus.labelled]
    pool = [r.name for r in corpus.unlabelled]
    y = np.array([label_index(r.label) for r in corpus.labelled], dtype=np.int64)
    counts = np.bincount(y, minlength=NUM_LABELS)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)

    kept = {label: 0 for label in LABELS}
    names, targets, weights = labelled, np.eye(NUM_LABELS, dtype=np.float32)[y], np.ones(len(y), np.float32)
    if cfg.use_pseudo:
        pseudo, agents, probs = pseudo_labels_from_store(cfg.run, pool, counts, cfg.filter, cfg.agents)
        write_pseudo_labels(pseudo, agents, probs, RunPaths(cfg.run).pseudo / "pseudo-labels.csv")
        kept = pseudo.counts()
        names = labelled + pseudo.names
        targets = np.concatenate([targets, pseudo.targets])
        weights = np.concatenate([weights, pseudo.weights])
    is_labelled = np.arange(len(names)) < len(labelled)

    features = load_run_features(cfg.run, cfg.features, names)
    result = train_student(features.blocks, features.masks, targets, weights, is_labelled, cfg.student,
                           progress=cfg.progress)
    save_student(result, cfg.out)
    report = DistillReport(scores=result.scores, kept=kept, student_dir=cfg.out, labelled=len(labelled))
    atomic_write_text(cfg.out / "report.json", json.dumps({
        "waf": report.scores.waf, "accuracy": report.scores.accuracy,
        "per_class_f1": report.scores.per_class_f1, "kept": kept, "labelled": len(labelled),
        "extractors": features.extractors, "config": to_dict(cfg),
    }, indent=2, ensure_ascii=False))
    return report
