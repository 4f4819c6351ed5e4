"""Reading what a run stored, for the report: every file optional, nothing recomputed that a stage wrote.

Usage:
    run = read_run(Path("runs/a"), data=None)          # data: the dataset folder (None: the one distill recorded)
    run.statuses, run.folds, run.agents, run.pseudo_rows, run.filters, run.students, run.notes

Sources: features/status.csv, folds.csv, agents/<agent>/ (teacher.store.AgentStore), pseudo/pseudo-labels.csv,
pseudo/filters.json, every student folder (a folder of the run holding report.json: `student/`, or the demo's
`student-labelled/` and `student-pseudo/`) with its student.json, oof.safetensors and ablation.json, the
submission CSV beside it, and the dataset's transcripts and media (for subtitles and key frames). What is missing
is recorded in `notes` and the page says "not in this run".
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clips.dataset import Corpus, load_corpus, read_label_csv
from clips.labels import LABELS
from clips.run import RunPaths
from teacher.store import AgentStore

STATUS_CSV = "status.csv"


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV with a header, as dicts."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None when the file is absent. NaN and Infinity are read as floats."""
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class AgentData:
    """One stored agent, rows aligned with the run's labelled clips and pool clips."""

    name: str
    # meta.json as stored (settings, labelled_scores)
    meta: dict
    # (labelled, 6) probabilities of the labelled clips (out of fold for feature agents); NaN rows: no evidence
    labelled: np.ndarray
    # (pool, 6) the stored pool probabilities (the fold models' mean for feature agents)
    pool: np.ndarray
    # (labelled + pool,) label mass of LLM agents; None when the agent stored none
    mass: np.ndarray | None = None


@dataclass
class StudentData:
    """One trained student folder of the run."""

    # folder name inside the run (student, student-pseudo, ...)
    name: str
    folder: Path
    # report.json as distill wrote it
    report: dict
    # student.json (config, fold metrics, out-of-fold scores); None when absent
    meta: dict | None = None
    # (labelled, 6) out-of-fold probabilities, rows in the run's labelled order; None when absent or misaligned
    oof: np.ndarray | None = None
    # ablation.json; None when distill ran without --report
    ablation: dict | None = None
    # the submission CSV written from this student (submission<suffix>.csv beside it); None when absent
    submission: Path | None = None

    @property
    def uses_pseudo(self) -> bool:
        return bool(self.report.get("kept_per_fold")) or bool((self.report.get("config") or {}).get("use_pseudo")
                                                               and self.report.get("filter_on_held_out"))


@dataclass
class RunData:
    """Everything the report shows, read from one run folder (and its dataset, when found)."""

    run: Path
    # the dataset folder (None when neither given nor recorded by a stage)
    data: Path | None
    corpus: Corpus | None
    # labelled clip names (the run's fold order: folds.csv, else the corpus), their labels and folds
    labelled: list[str]
    labels: np.ndarray
    fold_of: np.ndarray
    # pool clip names (the corpus's unlabelled clips, else the stored agents' other clips)
    pool: list[str]
    # name -> status text ("ok", "no_audio;no_face", ...) from features/status.csv
    statuses: dict[str, str]
    agents: list[AgentData]
    # pseudo/pseudo-labels.csv rows (None: no pseudo-label file in this run)
    pseudo_rows: list[dict[str, str]] | None
    filters: dict | None
    students: list[StudentData]
    # name -> transcript of every clip (empty without the dataset)
    transcripts: dict[str, str]
    # name -> the pool's hidden label (None without a hidden labels CSV)
    hidden: dict[str, str] | None
    # what the run lacks, by section: why a part of the page is empty
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def folds(self) -> int:
        return int(self.fold_of.max()) + 1 if len(self.fold_of) else 0

    def pseudo_student(self) -> StudentData | None:
        """The student whose distill wrote the run's pseudo-labels: the latest trained with pseudo-labels."""
        with_pseudo = [s for s in self.students if s.uses_pseudo]
        if not with_pseudo:
            return None
        return max(with_pseudo, key=lambda s: (s.folder / "report.json").stat().st_mtime)

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)


def _recorded_data(run: Path) -> Path | None:
    """The dataset folder a stage of the run recorded in its config (student report.json), or None."""
    for report in sorted(run.glob("*/report.json")):
        data = ((read_json(report) or {}).get("config") or {}).get("data")
        if data and Path(data).is_dir():
            return Path(data)
    return None


def _labelled_from_folds(run: Path) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    path = run / "folds.csv"
    if not path.is_file():
        return None
    rows = read_csv_rows(path)
    return ([r["name"] for r in rows], np.array([LABELS.index(r["discrete"]) for r in rows], dtype=np.int64),
            np.array([int(r["fold"]) for r in rows], dtype=np.int64))


def _students(run: Path, labelled: list[str], data: RunData) -> list[StudentData]:
    """Every folder of the run with a distill report.json, sorted by name."""
    students = []
    for report_path in sorted(run.glob("*/report.json")):
        folder = report_path.parent
        report = read_json(report_path) or {}
        if "waf" not in report:
            continue
        student = StudentData(name=folder.name, folder=folder, report=report,
                              meta=read_json(folder / "student.json"), ablation=read_json(folder / "ablation.json"))
        oof_path = folder / "oof.safetensors"
        if oof_path.is_file():
            from safetensors.numpy import load_file

            oof = load_file(str(oof_path))["oof_probs"]
            if len(oof) == len(labelled) and report.get("labelled") in (None, len(labelled)):
                student.oof = oof.astype(np.float32)
            else:
                data.note("student", f"{folder.name}: oof.safetensors has {len(oof)} rows, the run "
                                     f"{len(labelled)} labelled clips; its confusion matrix is left out")
        submission = run / ("submission" + folder.name[len("student"):] + ".csv")
        if folder.name.startswith("student") and submission.is_file():
            student.submission = submission
        students.append(student)
    return students


def read_run(run: Path, data: Path | None = None, hidden_labels: Path | None = None) -> RunData:
    """Read a run folder for the report. Raises ValueError when `run` is not a run folder (no stage wrote to it)."""
    run = Path(run)
    paths = RunPaths(run)
    if not run.is_dir() or not any((run / p).exists() for p in ("features", "agents", "folds.csv")):
        raise ValueError(f"{run}: not a run folder (no features/, agents/ or folds.csv); give the --run folder of "
                         "`features`, `teacher-label` and `distill`")
    data = Path(data) if data is not None else _recorded_data(run)
    out = RunData(run=run, data=data, corpus=None, labelled=[], labels=np.zeros(0, np.int64),
                  fold_of=np.zeros(0, np.int64), pool=[], statuses={}, agents=[], pseudo_rows=None, filters=None,
                  students=[], transcripts={}, hidden=None)
    if data is not None and data.is_dir():
        out.corpus = load_corpus(data)
        out.transcripts = {r.name: r.transcript or "" for r in out.corpus.all()}
    else:
        out.note("pseudo", "the dataset folder was not given (--data) nor recorded by distill: no subtitles or "
                           "key frames")

    folds = _labelled_from_folds(run)
    if folds is not None:
        out.labelled, out.labels, out.fold_of = folds
    elif out.corpus is not None:
        out.labelled = [r.name for r in out.corpus.labelled]
        out.labels = np.array([LABELS.index(r.label) for r in out.corpus.labelled], dtype=np.int64)
        out.fold_of = np.zeros(len(out.labelled), dtype=np.int64)
        out.note("student", "no folds.csv in this run: no stage fitted on labels yet")

    status_path = paths.features / STATUS_CSV
    if status_path.is_file():
        out.statuses = {r["name"]: r["status"] for r in read_csv_rows(status_path)}
    else:
        out.note("corpus", f"no {status_path.relative_to(run)}: the features stage has not run")

    store = AgentStore(paths.agents)
    names = store.agents()
    stored = {agent: store.read_with_mass(agent) for agent in names}      # each agent's shards read once
    labelled_set = set(out.labelled)
    if out.corpus is not None:
        out.pool = [r.name for r in out.corpus.unlabelled]
    else:
        seen: dict[str, None] = {}
        for agent_names, _, _ in stored.values():
            seen.update(dict.fromkeys(n for n in agent_names if n not in labelled_set))
        out.pool = sorted(seen) if seen else sorted(n for n in out.statuses if n not in labelled_set)
    everything = out.labelled + out.pool
    row = {name: i for i, name in enumerate(everything)}
    for agent, (agent_names, agent_probs, agent_mass) in stored.items():
        probs = np.full((len(everything), len(LABELS)), np.nan, dtype=np.float32)  # (labelled + pool, 6)
        mass = np.full(len(everything), np.nan, dtype=np.float32)
        mine = [(row[n], i) for i, n in enumerate(agent_names) if n in row]
        probs[[r for r, _ in mine]] = agent_probs[[i for _, i in mine]]
        mass[[r for r, _ in mine]] = agent_mass[[i for _, i in mine]]
        out.agents.append(AgentData(name=agent, meta=store.read_meta(agent) or {},
                                    labelled=probs[:len(out.labelled)], pool=probs[len(out.labelled):],
                                    mass=None if np.isnan(mass).all() else mass))
    if not names:
        out.note("agents", "no agents/ in this run: `teacher-label` has not run")

    pseudo_csv = paths.pseudo / "pseudo-labels.csv"
    out.pseudo_rows = read_csv_rows(pseudo_csv) if pseudo_csv.is_file() else None
    out.filters = read_json(paths.pseudo / "filters.json")
    out.students = _students(run, out.labelled, out)
    if not out.students:
        out.note("student", "no student in this run: `distill` has not run")

    hidden_labels = hidden_labels if hidden_labels is not None else _recorded_hidden(out.students)
    if hidden_labels is not None and Path(hidden_labels).is_file():
        out.hidden = read_label_csv(Path(hidden_labels))
    return out


def _recorded_hidden(students: list[StudentData]) -> Path | None:
    for student in students:
        path = (student.report.get("config") or {}).get("hidden_labels")
        if path:
            return Path(path)
    return None


def finite(value) -> bool:
    """True for a number that is neither None, NaN nor infinite."""
    return isinstance(value, (int, float)) and not (isinstance(value, float) and (math.isnan(value)
                                                                                  or math.isinf(value)))
