"""One cross-validation fold assignment per run, shared by every stage that fits on labels.

Usage:
    folds = run_folds(run, {"sample_1": "happy", ...}, folds=5, seed=0)   # reads run/folds.csv or writes it
    folds.of(["sample_1", "sample_7"])       # (2,) fold index of each clip
    train, held = folds.fold_of != k, folds.fold_of == k
    fold_of = stratified_folds(labels, folds=5, seed=0)                  # (n,) without a run folder

Feature agents, LLM teachers (`teacher-train --folds`), calibration, filter measurement and the student all read
the same assignment: the models behind student fold k's pseudo-labels then never saw fold k's labels, and every
number reported on fold k is out of sample. The assignment is stratified by label and seeded; it is written once
(run/folds.csv: name, discrete, fold; run/folds.json: folds, seed) and a stage that finds other labelled clips,
other labels or another fold count refuses the run: a changed assignment is a new run.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from clips.io import atomic_write_text
from clips.labels import label_index

FOLDS_CSV = "folds.csv"
FOLDS_JSON = "folds.json"


def stratified_folds(labels: Sequence[int] | np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(n,) fold index in [0, folds) of each clip: stratified by `labels` (label indices), shuffled by `seed`.

    A class with fewer clips than folds is spread over as many folds as it has clips; when no class fills every
    fold the split is a seeded permutation, unstratified.
    Raises ValueError when there are fewer clips than folds or fewer than 2 folds.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if folds < 2:
        raise ValueError(f"folds={folds}: cross-validation needs at least 2")
    if len(labels) < folds:
        raise ValueError(f"{len(labels)} labelled clip(s) cannot fill folds={folds}; lower folds")
    fold_of = np.empty(len(labels), dtype=np.int64)
    if np.bincount(labels).max() < folds:
        # no class fills every fold (a handful of clips): a seeded permutation cut into near-equal parts
        fold_of[np.random.default_rng(seed).permutation(len(labels))] = np.arange(len(labels)) % folds
        return fold_of
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            fold_of[held] = k
    return fold_of


@dataclass(frozen=True)
class FoldAssignment:
    """The labelled clips of a run, each with its fold."""

    # labelled clip names, sorted
    names: tuple[str, ...]
    # their labels (strings of clips.labels.LABELS)
    labels: tuple[str, ...]
    # (n,) fold of each clip
    fold_of: np.ndarray
    folds: int
    seed: int

    def of(self, names: Sequence[str]) -> np.ndarray:
        """(len(names),) fold of each name; -1 for a name that is not a labelled clip of the run."""
        position = {n: i for i, n in enumerate(self.names)}
        return np.array([self.fold_of[position[n]] if n in position else -1 for n in names], dtype=np.int64)

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["name", "discrete", "fold"])
        writer.writerows(zip(self.names, self.labels, self.fold_of.tolist(), strict=True))
        return buffer.getvalue()


def assign_folds(labels: dict[str, str], folds: int = 5, seed: int = 0) -> FoldAssignment:
    """A stratified, seeded assignment of the labelled clips `labels` (name -> label) to `folds` folds."""
    names = tuple(sorted(labels))
    fold_of = stratified_folds([label_index(labels[n]) for n in names], folds, seed)
    return FoldAssignment(names=names, labels=tuple(labels[n] for n in names), fold_of=fold_of, folds=folds,
                          seed=seed)


def write_folds(run: Path, assignment: FoldAssignment) -> None:
    """run/folds.csv and run/folds.json, each written atomically."""
    atomic_write_text(Path(run) / FOLDS_CSV, assignment.csv_text())
    atomic_write_text(Path(run) / FOLDS_JSON, json.dumps({"folds": assignment.folds, "seed": assignment.seed,
                                                          "clips": len(assignment.names)}, indent=2) + "\n")


def read_folds(run: Path) -> FoldAssignment | None:
    """The assignment stored in `run`, or None when the run has none yet.

    Raises ValueError naming the file when it is malformed.
    """
    csv_path, json_path = Path(run) / FOLDS_CSV, Path(run) / FOLDS_JSON
    if not csv_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        with open(csv_path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        names = tuple(r["name"] for r in rows)
        fold_of = np.array([int(r["fold"]) for r in rows], dtype=np.int64)
        labels = tuple(r["discrete"] for r in rows)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{csv_path} (with {json_path}) cannot be read ({err}); it belongs to the run: start a new "
                         "--run folder") from err
    folds = int(meta["folds"])
    if fold_of.size and (fold_of.min() < 0 or fold_of.max() >= folds):
        raise ValueError(f"{csv_path}: fold indices outside [0, {folds}); start a new --run folder")
    return FoldAssignment(names=names, labels=labels, fold_of=fold_of, folds=folds, seed=int(meta["seed"]))


def run_folds(run: Path, labels: dict[str, str], folds: int = 5, seed: int = 0) -> FoldAssignment:
    """The run's fold assignment: read from run/folds.csv, or made from `labels` and written there.

    Raises ValueError, naming the file and the fix, when the stored assignment covers other clips, other labels,
    another fold count or another seed: a changed assignment is a new run (its agents and students were fitted on
    the old folds).
    """
    stored = read_folds(run)
    if stored is None:
        assignment = assign_folds(labels, folds, seed)
        write_folds(run, assignment)
        return assignment
    problems = []
    if (stored.folds, stored.seed) != (folds, seed):
        problems.append(f"it has folds={stored.folds}, seed={stored.seed}; this stage asks folds={folds}, "
                        f"seed={seed}")
    current = dict(zip(stored.names, stored.labels, strict=True))
    added, removed = sorted(set(labels) - set(current)), sorted(set(current) - set(labels))
    relabelled = sorted(n for n in set(labels) & set(current) if labels[n] != current[n])
    for what, items in (("labelled clip(s) not in it", added), ("of its clips no longer labelled", removed),
                        ("clip(s) with another label now", relabelled)):
        if items:
            problems.append(f"{len(items)} {what} ({', '.join(items[:5])}{' ...' if len(items) > 5 else ''})")
    if problems:
        raise ValueError(
            f"{Path(run) / FOLDS_CSV}: the run's fold assignment does not fit this stage: {'; '.join(problems)}. "
            "A changed assignment is a new run: use a new --run folder (features can be copied over), or "
            "set folds/fold_seed back to the run's values")
    return stored
