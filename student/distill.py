"""`distill`: train the fusion student on the labelled clips plus the kept pseudo-labelled clips.

Usage:
    report = distill(DistillConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))
    report.scores.waf          # 5-fold out-of-fold WAF on the labelled clips
    report.kept                # pseudo-labels kept per class
    distill(DistillConfig(..., report=True, hidden_labels=Path("hidden-labels.csv")))   # + ablation.md/json

Pseudo-labels come only from the unlabelled pool, and the 5-fold score is measured on labelled clips alone,
so nothing leaks into the reported WAF. The filter is measured first on the labelled clips held out as if
unlabelled (pseudo.measure): run/pseudo/filters.json and precision-coverage.png.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from clips.config import to_dict
from clips.dataset import load_corpus, read_label_csv
from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS, label_index
from clips.run import RunPaths
from clips.scoring import Scores, score
from features.stage import RunConfig, load_run_features, run_features
from pseudo.measure import (
    FilterPoint,
    HeldOut,
    cross_fit_target_point,
    hold_out_agents,
    measure,
    plot_precision_coverage,
    precision_at_coverage,
    sweep_families,
    target_thresholds,
)
from pseudo.select import FilterConfig, PseudoLabels, select_pseudo_labels, write_pseudo_labels
from student.train import StudentConfig, StudentResult, predict_student, save_student, train_student
from teacher.store import AgentStore

log = logging.getLogger(__name__)
# the FixMatch-style baseline the ablation compares the chosen filter with
BASELINE_THRESHOLD = 0.95


@dataclass
class DistillConfig(RunConfig):
    """Settings of `distill`."""

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
    # also train the ablation students and write out/ablation.md and out/ablation.json
    report: bool = False
    # name,discrete CSV of the pool's hidden labels: every student is also scored on them (None: not scored)
    hidden_labels: Path | None = None

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = RunPaths(self.run).student
        if self.report and not self.use_pseudo:
            raise ValueError("report=True compares pseudo-label filters; drop use_pseudo=False (--no-pseudo)")


@dataclass
class AblationRow:
    """One student of the ablation."""

    variant: str
    # pseudo-labels trained on
    kept: int
    # precision and coverage of the filter on the held-out labelled clips (nan without pseudo-labels)
    precision: float
    coverage: float
    # 5-fold out-of-fold WAF on the labelled clips
    waf: float
    # WAF on the pool's hidden labels (None without a hidden labels CSV)
    hidden_waf: float | None


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
    # the filter on the held-out labelled clips (None without pseudo-labels)
    filter_point: FilterPoint | None = None
    # per-class thresholds chosen for filter.target_precision (None when not asked for)
    thresholds: dict[str, float] | None = None
    # scores on the pool's hidden labels (None without hidden_labels)
    hidden: Scores | None = None
    # the ablation rows (empty unless report=True)
    ablation: list[AblationRow] = field(default_factory=list)


@dataclass
class _Data:
    """Everything the students of one distill call share."""

    labelled: list[str]
    pool: list[str]
    # (labelled,) label indices and (6,) their counts
    y: np.ndarray
    counts: np.ndarray
    # features of labelled + pool, rows in that order
    blocks: list[np.ndarray]
    masks: np.ndarray
    # (pool,) hidden label indices, or None
    hidden: np.ndarray | None


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


def _train(data: _Data, pseudo: PseudoLabels | None, cfg: DistillConfig) -> tuple[StudentResult, Scores | None]:
    """Train one student on the labelled clips (+ `pseudo`); returns it and its hidden-label scores."""
    n = len(data.labelled)
    rows = np.arange(n) if pseudo is None else np.concatenate([np.arange(n), n + pseudo.index])
    targets = np.eye(NUM_LABELS, dtype=np.float32)[data.y]
    weights = np.ones(n, np.float32)
    if pseudo is not None:
        targets, weights = np.concatenate([targets, pseudo.targets]), np.concatenate([weights, pseudo.weights])
    result = train_student([b[rows] for b in data.blocks], data.masks[rows], targets, weights,
                           np.arange(len(rows)) < n, cfg.student, progress=cfg.progress)
    if data.hidden is None:
        return result, None
    return result, score(data.hidden, _pool_probs(result, data).argmax(axis=1))


def _pool_probs(result: StudentResult, data: _Data) -> np.ndarray:
    """(pool, 6) the student's probabilities of the pool; the labelled class prior where a clip has no modality."""
    pool = np.arange(len(data.labelled), len(data.labelled) + len(data.pool))
    probs = predict_student(result, [b[pool] for b in data.blocks], data.masks[pool])
    prior = np.eye(NUM_LABELS, dtype=np.float32)[data.counts.argmax()]
    return np.where(data.masks[pool].any(axis=1)[:, None], probs, prior)


def _choose_thresholds(held: HeldOut, cfg: FilterConfig) -> np.ndarray | None:
    """Per-class thresholds for cfg.target_precision (logged), or None."""
    if cfg.target_precision is None:
        return None
    thresholds = target_thresholds(held, cfg, cfg.target_precision)
    log.info("thresholds for precision %.2f: %s", cfg.target_precision,
             ", ".join(f"{label} {t:.3f}" for label, t in zip(LABELS, thresholds, strict=True)))
    return thresholds


def _held_point(held: HeldOut, cfg: FilterConfig, counts: np.ndarray) -> FilterPoint:
    """The filter on the held-out labelled clips; target thresholds are cross-fitted so the point is honest."""
    if cfg.target_precision is None:
        return measure(held, cfg, counts)
    return cross_fit_target_point(held, cfg, counts, cfg.target_precision)


def measure_filters(held: HeldOut, cfg: FilterConfig, counts: np.ndarray, agents: list[str], out: Path) -> dict:
    """Write out/filters.json (calibration, each family's curve, the chosen filter and the fixed baseline) and
    out/precision-coverage.png; returns the JSON as a dict."""
    curves = sweep_families(held, cfg, counts)
    chosen = _held_point(held, cfg, counts)
    baseline = measure(held, replace(cfg, mask="fixed", threshold=BASELINE_THRESHOLD, class_thresholds={},
                                     target_precision=None), counts)
    plot_precision_coverage(curves, out / "precision-coverage.png",
                            marks={"chosen filter": chosen, f"fixed {BASELINE_THRESHOLD}": baseline})
    summary = {
        "note": "labelled clips held out as unlabelled; calibration cross-fitted (5 folds); target-precision "
                "thresholds cross-fitted for the chosen point",
        "calibration": {a: {"temperature": float(t), "oof_waf": float(w), "ece_before": float(b),
                            "ece_after_cross_fitted": float(e)}
                        for a, t, w, b, e in zip(agents, held.temperatures, held.agent_scores, held.ece_before,
                                                 held.ece_after, strict=True)},
        "chosen": asdict(chosen), "fixed_baseline": asdict(baseline),
        "fixed_precision_at_chosen_coverage": precision_at_coverage(curves["fixed"], chosen.coverage),
        "curves": {family: [{"value": v, **asdict(p)} for v, p in curve] for family, curve in curves.items()},
    }
    atomic_write_text(out / "filters.json", json.dumps(summary, indent=2, allow_nan=True))
    return summary


def _ablation(data: _Data, cfg: DistillConfig, held: HeldOut, pool_probs: np.ndarray,
              main: tuple[PseudoLabels, StudentResult, Scores | None]) -> list[AblationRow]:
    """Labelled only; + fixed 0.95; + the chosen filter (hard); + soft targets; + a noisy-student second round."""
    def row(variant: str, fcfg: FilterConfig | None, h: HeldOut, pp: np.ndarray,
            reuse: tuple[PseudoLabels, StudentResult, Scores | None] | None = None):
        log.info("ablation: %s", variant)
        if fcfg is None:
            result, hidden = _train(data, None, cfg)
            return AblationRow(variant, 0, math.nan, 0.0, result.scores.waf, hidden and hidden.waf), result
        pseudo, result, hidden = reuse or (None, None, None)
        if pseudo is None:
            pseudo = select_pseudo_labels(pp, data.pool, fcfg, data.counts, h.temperatures, h.agent_scores,
                                          _choose_thresholds(h, fcfg))
            result, hidden = _train(data, pseudo, cfg)
        point = _held_point(h, fcfg, data.counts)
        return AblationRow(variant, len(pseudo.names), point.precision, point.coverage, result.scores.waf,
                           hidden and hidden.waf), result

    chosen = cfg.filter
    fixed = replace(chosen, mask="fixed", threshold=BASELINE_THRESHOLD, class_thresholds={}, target_precision=None,
                    soft=False)
    rows = [row("labelled only", None, held, pool_probs)[0],
            row(f"+ pseudo, fixed {BASELINE_THRESHOLD}", fixed, held, pool_probs)[0]]
    hard, soft = replace(chosen, soft=False), replace(chosen, soft=True)
    hard_row, hard_result = row("+ pseudo, chosen filter", hard, held, pool_probs,
                                None if chosen.soft else main)
    soft_row, soft_result = row("+ soft targets", soft, held, pool_probs,
                                main if chosen.soft else None)
    rows += [hard_row, soft_row]
    # noisy student: the round-1 student (the saved one) is one more agent: out-of-fold on the labelled clips
    round1 = soft_result if chosen.soft else hard_result
    held2 = hold_out_agents(np.concatenate([held.probs, round1.oof_probs[None]]), data.y)
    # a clip with no modality gets no evidence from the student (a NaN row), not the class prior
    pool_has = data.masks[len(data.labelled):].any(axis=1)[:, None]
    student_pool = np.where(pool_has, _pool_probs(round1, data), np.nan).astype(np.float32)
    pool2 = np.concatenate([pool_probs, student_pool[None]])
    rows.append(row("+ round 2 (student as agent)", chosen, held2, pool2)[0])
    return rows


def ablation_markdown(rows: list[AblationRow]) -> str:
    """The ablation as a Markdown table."""
    lines = ["| student | pseudo-labels | held-out precision | held-out coverage | 5-fold WAF | hidden WAF |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        hidden = "" if r.hidden_waf is None else f"{r.hidden_waf:.4f}"
        precision = "" if math.isnan(r.precision) else f"{r.precision:.3f}"
        lines.append(f"| {r.variant} | {r.kept} | {precision} | {r.coverage:.3f} | {r.waf:.4f} | {hidden} |")
    return "\n".join(lines) + "\n"


def distill(cfg: DistillConfig) -> DistillReport:
    """Train and save the student; returns its out-of-fold scores, the kept pseudo-label counts, and with
    cfg.report the ablation rows (also written to out/ablation.md and out/ablation.json).

    Raises ValueError for missing agents or a hidden labels CSV that does not cover the pool.
    """
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    labelled = [r.name for r in corpus.labelled]
    pool = [r.name for r in corpus.unlabelled]
    y = np.array([label_index(r.label) for r in corpus.labelled], dtype=np.int64)
    counts = np.bincount(y, minlength=NUM_LABELS)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    features = load_run_features(cfg.run, cfg.features, labelled + pool)
    data = _Data(labelled=labelled, pool=pool, y=y, counts=counts, blocks=features.blocks, masks=features.masks,
                 hidden=read_hidden_labels(cfg.hidden_labels, pool) if cfg.hidden_labels else None)

    kept, pseudo, point, thresholds, summary = {label: 0 for label in LABELS}, None, None, None, {}
    if cfg.use_pseudo:
        store, agents = load_agents(cfg.run, cfg.agents)
        probs = store.matrix(agents, labelled + pool)                  # (agents, clips, 6); one read of the store
        labelled_probs, pool_probs = probs[:, : len(labelled)], probs[:, len(labelled):]  # out-of-fold, pool
        held = hold_out_agents(labelled_probs, y)
        summary = measure_filters(held, cfg.filter, counts, agents, RunPaths(cfg.run).pseudo)
        thresholds = _choose_thresholds(held, cfg.filter)
        pseudo = select_pseudo_labels(pool_probs, pool, cfg.filter, counts, temperatures=held.temperatures,
                                      agent_scores=held.agent_scores, thresholds=thresholds)
        write_pseudo_labels(pseudo, agents, pool_probs, RunPaths(cfg.run).pseudo / "pseudo-labels.csv")
        kept = pseudo.counts()
        point = _held_point(held, cfg.filter, counts)
    result, hidden = _train(data, pseudo, cfg)
    save_student(result, cfg.out)

    report = DistillReport(
        scores=result.scores, kept=kept, student_dir=cfg.out, labelled=len(labelled), filter_point=point,
        thresholds=None if thresholds is None else {lb: float(t) for lb, t in zip(LABELS, thresholds, strict=True)},
        hidden=hidden)
    if cfg.report:
        report.ablation = _ablation(data, cfg, held, pool_probs, (pseudo, result, hidden))
        atomic_write_text(cfg.out / "ablation.md", ablation_markdown(report.ablation))
        atomic_write_text(cfg.out / "ablation.json", json.dumps({
            "rows": [asdict(r) for r in report.ablation], "filters": summary, "config": to_dict(cfg),
        }, indent=2, ensure_ascii=False, allow_nan=True))
    atomic_write_text(cfg.out / "report.json", json.dumps({
        "waf": report.scores.waf, "accuracy": report.scores.accuracy,
        "per_class_f1": report.scores.per_class_f1, "kept": kept, "labelled": len(labelled),
        "hidden_waf": None if hidden is None else hidden.waf, "thresholds": report.thresholds,
        "filter_on_held_out": None if point is None else asdict(point),
        "extractors": features.extractors, "config": to_dict(cfg),
    }, indent=2, ensure_ascii=False, allow_nan=True))
    return report
