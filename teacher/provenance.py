"""What trained a teacher model, written next to it by `teacher-train` and read back by `teacher-label`.

Usage:
    write_provenance(out / "adapter", Provenance.of_training(cfg_model, "qwen2_audio", train_names, fold=2,
                                                              folds=5, fold_seed=0, seed=0, product="adapter"))
    record = read_provenance(Path("runs/a/teacher/fold_2/adapter"))     # None: no record (a base model)
    kind, why = labelled_scores_of([model_record, adapter_record], fold=None, folds=assignment, names=labelled)

Every folder `teacher-train` writes (adapter/, adapter-vllm/, merged/) carries `provenance.json`: the base model,
the family, how many labelled clips trained it and a hash of their sorted names, the fold it leaves out (None when
it was trained on every labelled clip), and the run's folds and seed. `teacher-label` decides from these records,
never from the config, how an agent scored the labelled clips: a model used on exactly the clips its record leaves
out is out of fold, a teacher-train product used anywhere else is in-sample, and a model without a record is a base
model that saw no label (zero-shot). An adapter without a record came from elsewhere: nothing says what it saw, so
it counts as in-sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clips.io import atomic_write_text

FILE = "provenance.json"


def names_hash(names: Sequence[str]) -> str:
    """sha256 of the sorted clip names, one per line: the identity of a training set."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """What trained one model folder."""

    # the checkpoint the adapter was trained on (a hub id or folder)
    base_model: str
    # llm.families key
    family: str
    # what the folder holds: adapter, adapter-vllm or merged
    product: str
    # number of labelled clips that trained it
    train_clips: int
    # sha256 of their sorted names (names_hash)
    train_hash: str
    # the fold of the run's assignment it leaves out; None: trained on every labelled clip it was given
    held_out_fold: int | None
    # the run's fold assignment it follows (None, None without --folds)
    folds: int | None
    fold_seed: int | None
    # teacher-train's own seed
    seed: int

    @classmethod
    def of_training(cls, base_model: str, family: str, train_names: Sequence[str], fold: int | None,
                    folds: int | None, fold_seed: int | None, seed: int, product: str = "adapter") -> Provenance:
        return cls(base_model=str(base_model), family=family, product=product, train_clips=len(train_names),
                   train_hash=names_hash(train_names), held_out_fold=fold, folds=folds, fold_seed=fold_seed,
                   seed=seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def write_provenance(folder: Path, record: Provenance) -> Path:
    """Write `record` as folder/provenance.json (atomically); returns its path."""
    path = Path(folder) / FILE
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=True))
    return path


def read_provenance(folder: str | Path | None) -> Provenance | None:
    """The record beside a model folder, or None when it has none (a base model, a hub id, no folder).

    Raises ValueError naming the file when it is not a record teacher-train wrote.
    """
    if folder is None:
        return None
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        return Provenance(**json.loads(path.read_text(encoding="utf-8")))
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a provenance record teacher-train wrote ({error}); retrain, or remove the "
                         "file only if the folder is a base model that saw no labelled clip") from error


def labelled_scores_of(model: str | None, adapter: str | None) -> tuple[str, dict]:
    """("zero_shot" | "in_sample", what the records say) for a model (and adapter) that scores every labelled clip.

    A fold's own model used this way scores the clips it trained on as well as its held-out fold: in-sample.
    """
    records = {"model": read_provenance(model), "adapter": read_provenance(adapter)}
    seen = {k: r.to_dict() if r is not None else None for k, r in records.items()}
    if adapter is not None and records["adapter"] is None:
        return "in_sample", {**seen, "why": f"adapter {adapter} has no {FILE}: what it was trained on is unknown"}
    trained = [k for k, r in records.items() if r is not None and r.train_clips > 0]
    if trained:
        return "in_sample", {**seen, "why": f"{' and '.join(trained)} trained on labelled clips "
                                            f"({records[trained[0]].train_clips}) and scores them all"}
    return "zero_shot", {**seen, "why": "no record of training on labelled clips: a base model"}


def check_fold_product(folder: Path, fold: int, folds: int, fold_seed: int, train_names: Sequence[str]) -> Provenance:
    """The record of fold `fold`'s model, checked to leave out exactly that fold of the run's assignment.

    Raises ValueError naming the folder and the fix when the record is missing, is of another fold or run, or was
    trained on other clips than the run's labelled clips outside the fold.
    """
    record = read_provenance(folder)
    fix = "train the fold teachers on this run with `teacher-train --folds K --run RUN`"
    if record is None:
        raise ValueError(f"{folder}: no {FILE}, so nothing says which clips trained it; {fix}")
    problems = []
    if record.held_out_fold != fold:
        problems.append(f"it leaves out fold {record.held_out_fold}, it is used as fold {fold}")
    if (record.folds, record.fold_seed) != (folds, fold_seed):
        problems.append(f"it follows folds={record.folds}, seed={record.fold_seed}; the run has folds={folds}, "
                        f"seed={fold_seed}")
    if record.train_hash != names_hash(train_names):
        problems.append(f"it trained on {record.train_clips} clips that are not the run's {len(train_names)} "
                        "labelled clips outside the fold")
    if problems:
        raise ValueError(f"{folder}: " + "; ".join(problems) + f"; {fix}")
    return record
