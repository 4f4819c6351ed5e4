"""`report`: one static HTML page per run, from what the run's stages stored.

Usage:
    summary = build_report(ReportConfig(run=Path("runs/a")))
    summary.index            # runs/a/report/index.html
    summary.bytes            # the report folder's size

The folder holds index.html (the sections, the style and the script inline), clips.js (the pool table's data:
one row per pool clip), frames/ (key frames, the face crop when there is one), img/ (figures) and csv/ (every
row behind a table). It opens from the file system: no server, no network. The table pages through the clips in
the browser, so 115,595 pool clips cost one clips.js of about 15 MB and a page of rows at a time.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clips.io import atomic_write_text
from clips.labels import LABELS
from report import sections
from report.frames import key_frames
from report.gather import RunData, read_run
from report.table import ClipTable, clip_table, write_table_csv

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


@dataclass
class ReportConfig:
    """Settings of `report`."""

    # the run folder to report on
    run: Path
    # dataset folder, for subtitles and key frames (None: the one distill recorded in the run)
    data: Path | None = None
    # where the report goes (None: run/report)
    out: Path | None = None
    # name,discrete CSV of the pool's hidden labels: a hidden-label column and hidden-pool WAF (None: the one
    # distill recorded, if any)
    hidden_labels: Path | None = None
    # key frames extracted at most (every pool clip when the pool is no larger; else the clips the page shows
    # first: the most disagreed, then the most confident kept and dropped clips of each label)
    frames: int = 1200
    # side in pixels of a key frame
    frame_side: int = 96
    # rows per page of the clip table
    page_rows: int = 50
    # rows of the "agents disagree most" view
    disagreement_rows: int = 50

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 0:
            problems.append(f"frames={self.frames}; use 0 (no key frames) or more")
        if self.frame_side < 16:
            problems.append(f"frame_side={self.frame_side}; use 16 pixels or more")
        if self.page_rows < 1:
            problems.append(f"page_rows={self.page_rows}; use 1 or more rows per page")
        if self.disagreement_rows < 0:
            problems.append(f"disagreement_rows={self.disagreement_rows}; use 0 or more")
        if problems:
            raise ValueError("ReportConfig: " + "; ".join(problems))
        if self.out is None:
            self.out = Path(self.run) / "report"


@dataclass
class ReportSummary:
    """What `report` wrote."""

    index: Path
    # bytes of the whole report folder (page, clips.js, frames, figures, CSVs)
    bytes: int
    # bytes of index.html and clips.js alone (what the browser parses on opening)
    page_bytes: int
    seconds: float
    # pool clips in the table and key frames written
    rows: int
    frames: int
    # seconds per step
    timings: dict[str, float] = field(default_factory=dict)


def _frame_order(table: ClipTable, disagree: list[int]) -> list[int]:
    """Pool rows in the order key frames are worth extracting: the disagreement view, then per label round-robin
    the most confident kept clips, then the most confident others."""
    order = list(disagree)
    conf = np.nan_to_num(table.conf, nan=-1.0)
    queues = []
    for c in range(len(LABELS)):
        kept = np.flatnonzero(table.kept_label == c)
        others = np.flatnonzero((table.label == c) & (table.kept_folds == 0))
        queues.append(list(kept[np.argsort(-conf[kept], kind="stable")])
                      + list(others[np.argsort(-conf[others], kind="stable")]))
    for row in zip(*[q + [None] * (max(map(len, queues)) - len(q)) for q in queues], strict=True):
        order.extend(int(i) for i in row if i is not None)
    seen: set[int] = set()
    return [i for i in order if not (i in seen or seen.add(i))]


def _frames(cfg: ReportConfig, run: RunData, table: ClipTable, disagree: list[int], out: Path) -> dict[str, int]:
    """name -> 1 (key frame) or 2 (face crop) for the pool clips that got a frame."""
    if run.corpus is None or cfg.frames == 0:
        return {}
    refs = {r.name: r.path for r in run.corpus.unlabelled if r.path is not None}
    rows = range(len(table.names)) if len(table.names) <= cfg.frames else _frame_order(table, disagree)
    chosen = [table.names[i] for i in rows if table.names[i] in refs][: cfg.frames]
    written = key_frames({n: refs[n] for n in chosen}, out / "frames", side=cfg.frame_side)
    return {name: 2 if face else 1 for name, (_, face) in written.items()}


def _strings(values: list[str]) -> tuple[list[str], list[int]]:
    """(distinct values in first-seen order, index of each value): 115,595 reasons share a few thousand texts."""
    index: dict[str, int] = {}
    codes = [index.setdefault(v, len(index)) for v in values]
    return list(index), codes


def _scaled(values: np.ndarray) -> list[int]:
    """Values in [0, 1] as integers in 1/10000 steps, -1 for NaN."""
    return np.where(np.isnan(values), -1, np.round(np.nan_to_num(values) * 10000)).astype(np.int64).tolist()


def clips_data(cfg: ReportConfig, run: RunData, table: ClipTable, disagree: list[int],
               frames: dict[str, int]) -> dict:
    """The object clips.js hands to report.js as window.REPORT."""
    status_text, status = _strings([run.statuses.get(n, "") for n in table.names])
    reason_text, reason = _strings(table.reasons)
    # each agent's probabilities as bytes 0..200 (0.5% steps), 255 where it has no evidence; rows major
    probs = np.transpose(table.probs, (1, 0, 2))                              # (pool, agents, 6)
    packed = np.where(np.isnan(probs), 255, np.round(np.nan_to_num(probs) * 200)).astype(np.uint8)
    labelled_sub = [run.transcripts.get(n, "") for n in run.labelled]
    students = {}
    for s, student in enumerate(run.students):
        if student.oof is not None:
            students[str(s)] = {"pred": student.oof.argmax(axis=1).tolist(),
                                "prob": np.round(student.oof.max(axis=1) * 1000).astype(int).tolist()}
    return {
        "labels": list(LABELS), "agents": [a.name for a in run.agents], "n": len(table.names),
        "folds": run.folds, "pageRows": cfg.page_rows,
        "name": table.names, "sub": [run.transcripts.get(n, "") for n in table.names],
        "statusText": status_text, "status": status,
        "probs": base64.b64encode(packed.tobytes()).decode("ascii"),
        "label": table.label.tolist(), "conf": _scaled(table.conf), "margin": _scaled(table.margin),
        "dis": _scaled(table.disagreement), "split": table.split.astype(int).tolist(),
        "keptFolds": table.kept_folds.tolist(), "keptLabel": table.kept_label.tolist(),
        "reasonText": reason_text, "reason": reason,
        "frames": [frames.get(n, 0) for n in table.names],
        "hidden": None if run.hidden is None else [LABELS.index(run.hidden[n]) if n in run.hidden else -1
                                                   for n in table.names],
        "disagree": disagree,
        "lab": {"name": run.labelled, "sub": labelled_sub, "label": run.labels.tolist(),
                "fold": run.fold_of.tolist()},
        "students": students,
    }


def page_html(run: RunData, parts: list[str]) -> str:
    """index.html: the sections with the style and the script inline; clips.js loads before the script."""
    css = (STATIC / "report.css").read_text(encoding="utf-8")
    script = (STATIC / "report.js").read_text(encoding="utf-8")
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in (
        ("corpus", "Corpus"), ("agents", "Agents"), ("filter", "Filter"), ("pseudo", "Pseudo-labels"),
        ("disagree", "Disagreement"), ("student", "Student"), ("run", "Run")))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Run report: {sections.esc(run.run.resolve().name)}</title><style>{css}</style></head><body>"
            + sections.header(run) + f"<nav>{nav}</nav><main>" + "".join(parts) + "</main>"
            + '<script src="clips.js"></script>'
            + f"<script>{script}</script></body></html>\n")


def build_report(cfg: ReportConfig) -> ReportSummary:
    """Write cfg.out/index.html and what it shows; returns the paths, sizes and timings.

    Raises ValueError when cfg.run is not a run folder.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, fn):
        begin = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - begin
        return value

    out = Path(cfg.out)
    run = step("read", lambda: read_run(cfg.run, cfg.data, cfg.hidden_labels))
    for stale in ("img", "frames", "csv"):   # a rebuilt report leaves no file of an earlier one behind
        shutil.rmtree(out / stale, ignore_errors=True)
    (out / "csv").mkdir(parents=True, exist_ok=True)
    table = step("table", lambda: clip_table(run))
    step("csv", lambda: write_table_csv(table, run, out / "csv" / "clips.csv"))
    dis = np.nan_to_num(table.disagreement, nan=-1.0)
    disagree = [int(i) for i in np.argsort(-dis, kind="stable")[: cfg.disagreement_rows] if dis[i] >= 0]
    frames = step("frames", lambda: _frames(cfg, run, table, disagree, out))
    parts = step("sections", lambda: [
        sections.corpus_section(run, out), sections.agents_section(run, out), sections.filter_section(run, out),
        sections.pseudo_section(run, table, len(disagree)), sections.student_section(run),
        sections.run_section(run, out)])
    data = clips_data(cfg, run, table, disagree, frames)
    # a JSON string parsed by JSON.parse: V8 reads a string literal far faster than the same object literal
    step("write", lambda: (
        atomic_write_text(out / "clips.js", "window.REPORT = JSON.parse("
                          + json.dumps(json.dumps(data, ensure_ascii=False, separators=(",", ":")),
                                       ensure_ascii=False) + ");\n"),
        atomic_write_text(out / "index.html", page_html(run, parts))))
    files = [p for p in out.rglob("*") if p.is_file()]
    summary = ReportSummary(index=out / "index.html", bytes=sum(p.stat().st_size for p in files),
                            page_bytes=(out / "index.html").stat().st_size + (out / "clips.js").stat().st_size,
                            seconds=time.perf_counter() - start, rows=len(table.names), frames=len(frames),
                            timings=timings)
    log.info("report: %s (%d pool clips, %d key frames, %.1f MB) in %.1f s", summary.index, summary.rows,
             summary.frames, summary.bytes / 1e6, summary.seconds)
    return summary
