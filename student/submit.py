"""`submit`: predict every candidate name with the trained student and write a checked `name,discrete` CSV.

Usage:
    summary = submit(SubmitConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))
    summary.fallbacks     # {"all_modalities": ..., "some_modalities": ..., "class_prior": ...}

Every candidate gets a prediction: from the modalities its clip has, else the labelled class prior.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clips.dataset import load_corpus, read_names_csv
from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS, is_label, label_index
from clips.run import RunPaths
from features.stage import RunConfig, load_run_features, run_features
from student.train import load_student, predict_student


@dataclass
class SubmitConfig(RunConfig):
    """Settings of `submit`."""

    # CSV with a `name` column of the names to predict (default: every clip of the unlabelled pool)
    candidates: Path | None = None
    # trained student folder (default: run/student)
    student: Path | None = None
    # where the submission goes (default: run/submission.csv)
    out: Path | None = None

    def __post_init__(self) -> None:
        self.student = self.student or RunPaths(self.run).student
        self.out = self.out or RunPaths(self.run).submission


@dataclass
class SubmitSummary:
    """What `submit` wrote."""

    path: Path
    # predictions per label
    counts: dict[str, int]
    # how many predictions came from each source
    fallbacks: dict[str, int]


def check_submission(rows: list[tuple[str, str]], candidates: list[str]) -> None:
    """Raise ValueError listing every missing, doubled, unexpected name or unknown label."""
    problems = []
    names = Counter(name for name, _ in rows)
    doubled = sorted(n for n, c in names.items() if c > 1)
    missing = sorted(set(candidates) - set(names))
    extra = sorted(set(names) - set(candidates))
    bad = sorted({label for _, label in rows if not is_label(label)})
    for what, items in (("doubled names", doubled), ("missing names", missing),
                        ("names not among the candidates", extra), ("unknown labels", bad)):
        if items:
            problems.append(f"{len(items)} {what}: {', '.join(items[:20])}{' ...' if len(items) > 20 else ''}")
    if problems:
        raise ValueError("submission check failed: " + "; ".join(problems))


def submission_text(rows: list[tuple[str, str]]) -> str:
    """The `name,discrete` CSV text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "discrete"])
    writer.writerows(rows)
    return buffer.getvalue()


def submit(cfg: SubmitConfig) -> SubmitSummary:
    """Predict, check and atomically write the submission; returns label and fallback counts.

    Raises:
        ValueError: when there is no candidate name, a bad candidates CSV (every bad row listed) or a bad
            submission (see check_submission).
    """
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    candidates = read_names_csv(cfg.candidates) if cfg.candidates else [r.name for r in corpus.unlabelled]
    if not candidates:
        source = f"{cfg.candidates} lists no names" if cfg.candidates else f"the unlabelled pool of {cfg.data} is empty"
        raise ValueError(f"no candidate names to predict: {source} -- pass --candidates with a CSV of names, "
                         "or point --data/--unlabelled-dir at the folder that holds the pool")
    known = {r.name for r in corpus.all()}
    with_clip = [n for n in candidates if n in known]
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    features = load_run_features(cfg.run, cfg.features, with_clip)
    result = load_student(cfg.student)

    y = np.array([label_index(r.label) for r in corpus.labelled], dtype=np.int64)
    prior = np.bincount(y, minlength=NUM_LABELS).argmax() if len(y) else 0
    predicted = dict(zip(with_clip, predict_student(result, features.blocks, features.masks).argmax(1),
                         strict=True))
    present = dict(zip(with_clip, features.masks.sum(axis=1), strict=True))
    rows, fallbacks = [], Counter({"all_modalities": 0, "some_modalities": 0, "class_prior": 0})
    for name in candidates:
        n_present = present.get(name, 0)
        if n_present == 0:
            fallbacks["class_prior"] += 1
            rows.append((name, LABELS[prior]))
            continue
        fallbacks["all_modalities" if n_present == features.masks.shape[1] else "some_modalities"] += 1
        rows.append((name, LABELS[int(predicted[name])]))
    check_submission(rows, candidates)
    atomic_write_text(cfg.out, submission_text(rows))
    counts = Counter(label for _, label in rows)
    return SubmitSummary(path=cfg.out, counts={label: counts[label] for label in LABELS},
                         fallbacks=dict(fallbacks))
