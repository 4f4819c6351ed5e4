"""`distill`: train the fusion student on the labelled clips plus the kept pseudo-labelled clips.

Usage:
    report = distill(DistillConfig(data=Path("mer2024-dataset"), run=Path("runs/a")))
    report.scores.waf          # 5-fold out-of-fold WAF on the labelled clips: an estimate, nothing chose on it
    report.kept                # pseudo-labels kept per class (mean over the student's folds)
    distill(DistillConfig(..., report=True, seeds=5, hidden_labels=Path("hidden-labels.csv")))  # + ablation.md/json

Honest by construction (cross-fitting end to end): every stage reads the run's one fold assignment
(run/folds.csv). Student fold k trains on the labelled clips of the other folds and on pool pseudo-labels made by
the agents' fold-k models, with temperatures, agent weights and thresholds fitted on the other folds' labelled
clips (pseudo.measure.cross_fit); its epoch is chosen on an inner split of its training clips (student.train); it
is scored on fold k. The same filter, cross-fitted, is measured on the labelled clips held out as if unlabelled
(run/pseudo/filters.json, precision-coverage.png). The submission is the mean of the fold models. Agents whose
labelled-clip scores are in-sample are refused, naming the agent and the fix.
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
from clips.folds import run_folds
from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS, label_index
from clips.run import RunPaths
from clips.scoring import Scores, score
from features.stage import RunConfig, load_run_features, run_features
from pseudo.measure import (
    Calibration,
    CrossFit,
    FilterPoint,
    calibration_summary,
    cross_fit,
    fold_calibrations,
    plot_precision_coverage,
    precision_at_coverage,
    sweep_families,
)
from pseudo.select import (
    FilterConfig,
    PseudoLabels,
    combine_agents,
    min_agents,
    why_none_kept,
    write_pseudo_labels,
)
from student.train import (
    StudentConfig,
    StudentResult,
    predict_folds,
    predict_student,
    save_student,
    train_student,
)
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
    # students per ablation row (seeds student.seed, student.seed + 1, ...): each row is reported as mean +- sd
    seeds: int = 1
    # name,discrete CSV of the pool's hidden labels: every student is also scored on them (None: not scored)
    hidden_labels: Path | None = None

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = RunPaths(self.run).student
        problems = []
        if self.report and not self.use_pseudo:
            problems.append("report=True compares pseudo-label filters; drop use_pseudo=False (--no-pseudo)")
        if self.seeds < 1:
            problems.append(f"seeds={self.seeds}: use 1 or more students per ablation row")
        if self.student.folds != self.folds:
            problems.append(f"student.folds={self.student.folds} but the run's fold assignment has folds={self.folds}; "
                            "set the run's `folds` (a new run) and leave student.folds equal to it")
        if problems:
            raise ValueError("DistillConfig: " + "; ".join(problems))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass
class AblationRow:
    """One student variant of the ablation, trained with several seeds."""

    variant: str
    # pseudo-labels trained on (mean over the folds)
    kept: int
    # precision (with its 95% Wilson interval) and coverage of the filter on the held-out labelled clips
    # (nan without pseudo-labels)
    precision: float
    coverage: float
    # 5-fold out-of-fold WAF on the labelled clips, one per seed
    wafs: list[float]
    # WAF on the pool's hidden labels, one per seed (empty without a hidden labels CSV)
    hidden_wafs: list[float] = field(default_factory=list)
    precision_low: float = float("nan")
    precision_high: float = float("nan")

    @property
    def waf(self) -> float:
        return _mean_sd(self.wafs)[0]

    @property
    def hidden_waf(self) -> float | None:
        return _mean_sd(self.hidden_wafs)[0] if self.hidden_wafs else None


@dataclass
class DistillReport:
    """What `distill` trained and how well."""

    # out-of-fold scores on the labelled clips
    scores: Scores
    # pseudo-labels kept per class, mean over the student's folds (all zero without pseudo-labels)
    kept: dict[str, int]
    # the folder holding the saved student
    student_dir: Path
    # labelled clips trained on
    labelled: int
    # the filter on the held-out labelled clips, cross-fitted (None without pseudo-labels)
    filter_point: FilterPoint | None = None
    # per-class confidence thresholds the filter applied on the pool, median over folds (None without
    # pseudo-labels; inf: the class kept nothing)
    thresholds: dict[str, float] | None = None
    # scores on the pool's hidden labels (None without hidden_labels)
    hidden: Scores | None = None
    # why the filter kept no pseudo-label, step by step (None when it kept some, or without pseudo-labels)
    why_none: str | None = None
    # the ablation rows (empty unless report=True)
    ablation: list[AblationRow] = field(default_factory=list)


@dataclass
class _Data:
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
class _Agents:
    """The agents' probabilities as the cross-fitted filter reads them."""

    names: list[str]
    # (agents, labelled, 6) out-of-fold probabilities of the labelled clips
    labelled: np.ndarray
    # (agents, pool, K, 6) each agent's fold-model probabilities of the pool
    pool: np.ndarray
    # per fold, fitted on the other folds' labelled clips
    calibrations: list[Calibration]
    # cross-fits already computed on these agents, by the filter's repr: distill, the filter report and the
    # ablation ask for the chosen filter and the fixed baseline more than once
    fits: dict[str, CrossFit] = field(default_factory=dict)


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


def _examples(data: _Data, pseudo: list[PseudoLabels] | None) -> dict[str, np.ndarray]:
    """train_student's example arrays: every labelled clip in its fold, then each fold's pseudo-labelled clips."""
    n = len(data.labelled)
    row_of, fold_of = [np.arange(n)], [data.fold_of]
    targets, weights = [np.eye(NUM_LABELS, dtype=np.float32)[data.y]], [np.ones(n, np.float32)]
    for k, chosen in enumerate(pseudo or []):
        row_of.append(n + chosen.index)
        fold_of.append(np.full(len(chosen.index), k))
        targets.append(chosen.targets)
        weights.append(chosen.weights)
    return {"row_of": np.concatenate(row_of), "fold_of": np.concatenate(fold_of),
            "targets": np.concatenate(targets), "weights": np.concatenate(weights),
            "is_labelled": np.arange(sum(len(r) for r in row_of)) < n}


def _train(data: _Data, pseudo: list[PseudoLabels] | None, cfg: DistillConfig,
           seed: int | None = None) -> tuple[StudentResult, Scores | None]:
    """Train one student on the labelled clips (+ each fold's `pseudo`); returns it and its hidden-label scores."""
    ex = _examples(data, pseudo)
    student = cfg.student if seed is None else replace(cfg.student, seed=seed)
    result = train_student(data.blocks, data.masks, ex["targets"], ex["weights"], ex["is_labelled"], student,
                           progress=cfg.progress, fold_of=ex["fold_of"], row_of=ex["row_of"])
    if data.hidden is None:
        return result, None
    return result, score(data.hidden, _pool_probs(result, data).argmax(axis=1))


def _pool_probs(result: StudentResult, data: _Data) -> np.ndarray:
    """(pool, 6) the student's probabilities of the pool; the labelled class prior where a clip has no modality."""
    pool = np.arange(len(data.labelled), len(data.labelled) + len(data.pool))
    probs = predict_student(result, [b[pool] for b in data.blocks], data.masks[pool])
    prior = np.eye(NUM_LABELS, dtype=np.float32)[data.counts.argmax()]
    return np.where(data.masks[pool].any(axis=1)[:, None], probs, prior)


def _student_as_agent(result: StudentResult, data: _Data, agents: _Agents) -> _Agents:
    """The agents plus the round-1 student: out of fold on the labelled clips, fold model k on the pool for fold k.

    A pool clip with no modality gets no evidence from the student (NaN), not the class prior.
    """
    pool = np.arange(len(data.labelled), len(data.labelled) + len(data.pool))
    fold_pool = predict_folds(result, [b[pool] for b in data.blocks], data.masks[pool])     # (pool, K, 6)
    fold_pool = np.where(data.masks[pool].any(axis=1)[:, None, None], fold_pool, np.nan).astype(np.float32)
    labelled = np.concatenate([agents.labelled, result.oof_probs[None]])
    return _Agents(names=[*agents.names, "student"], labelled=labelled,
                   pool=np.concatenate([agents.pool, fold_pool[None]]),
                   calibrations=fold_calibrations(labelled, data.y, data.fold_of))


def _fit(data: _Data, agents: _Agents, cfg: FilterConfig) -> CrossFit:
    """The filter `cfg` cross-fitted on `agents` (computed once per filter and set of agents)."""
    key = repr(cfg)
    if key not in agents.fits:
        agents.fits[key] = cross_fit(agents.labelled, data.y, data.fold_of, agents.pool, data.pool, cfg,
                                     agents.calibrations)
    return agents.fits[key]


def _kept(fit: CrossFit) -> dict[str, int]:
    """Kept pseudo-labels per class, mean over the folds (rounded)."""
    per_fold = np.array([[p.counts()[label] for label in LABELS] for p in fit.pseudo])   # (K, 6)
    return {label: int(round(v)) for label, v in zip(LABELS, per_fold.mean(axis=0), strict=True)}


def baseline_filter(cfg: FilterConfig) -> FilterConfig:
    """The FixMatch-style fixed-threshold filter the ablation and the filter report compare with."""
    return replace(cfg, mask="fixed", threshold=BASELINE_THRESHOLD, class_thresholds={}, target_precision=None,
                   soft=False)


def measure_filters(data: _Data, agents: _Agents, cfg: FilterConfig, chosen: FilterPoint, out: Path) -> dict:
    """Write out/filters.json (calibration, each family's cross-fitted curve, the chosen filter and the fixed
    baseline, per class kept and precision with Wilson intervals) and out/precision-coverage.png; returns the JSON."""
    curves = sweep_families(agents.labelled, data.y, data.fold_of, agents.pool, data.pool, cfg, agents.calibrations)
    baseline = _fit(data, agents, baseline_filter(cfg)).point
    plot_precision_coverage(curves, out / "precision-coverage.png",
                            marks={"chosen filter": chosen, f"fixed {BASELINE_THRESHOLD}": baseline})
    summary = {
        "note": "labelled clips of fold k held out as unlabelled; calibration, agent weights and thresholds fitted on "
                "the other folds; the thresholds each fold's filter applied on the pool (scored by the agents' fold-k "
                "models) applied to fold k's clips: the measured filter is the applied filter",
        "calibration": calibration_summary(agents.labelled, data.y, data.fold_of, agents.calibrations, agents.names),
        "chosen": asdict(chosen), "fixed_baseline": asdict(baseline),
        "fixed_precision_at_chosen_coverage": precision_at_coverage(curves["fixed"], chosen.coverage),
        "curves": {family: [{"value": v, **asdict(p)} for v, p in curve] for family, curve in curves.items()},
    }
    atomic_write_text(out / "filters.json", json.dumps(summary, indent=2, allow_nan=True))
    return summary


def _ablation(data: _Data, cfg: DistillConfig, agents: _Agents,
              main: tuple[StudentResult, Scores | None]) -> list[AblationRow]:
    """Labelled only; + fixed 0.95; + the chosen filter (hard); + soft targets; + a noisy-student second round.

    Every row trains cfg.seeds students (seeds student.seed, student.seed + 1, ...).
    """
    seeds = [cfg.student.seed + s for s in range(cfg.seeds)]

    def row(variant: str, fcfg: FilterConfig | None,
            reuse: tuple[StudentResult, Scores | None] | None = None) -> tuple[AblationRow, list]:
        log.info("ablation: %s", variant)
        fit = None if fcfg is None else _fit(data, agents, fcfg)
        results = []
        for s in seeds:
            if reuse is not None and s == cfg.student.seed:
                results.append(reuse)
            else:
                results.append(_train(data, None if fit is None else fit.pseudo, cfg, seed=s))
        hidden = [h.waf for _, h in results if h is not None]
        wafs = [r.scores.waf for r, _ in results]
        if fit is None:
            return AblationRow(variant, 0, math.nan, 0.0, wafs, hidden), results
        p = fit.point
        return AblationRow(variant, sum(_kept(fit).values()), p.precision, p.coverage, wafs, hidden,
                           p.precision_low, p.precision_high), results

    chosen = cfg.filter
    main_result, main_hidden = main
    rows = [row("labelled only", None)[0], row(f"+ pseudo, fixed {BASELINE_THRESHOLD}", baseline_filter(chosen))[0]]
    hard, soft = replace(chosen, soft=False), replace(chosen, soft=True)
    hard_row, hard_results = row("+ pseudo, chosen filter", hard,
                                 reuse=None if chosen.soft else (main_result, main_hidden))
    soft_row, soft_results = row("+ soft targets", soft, reuse=(main_result, main_hidden) if chosen.soft else None)
    rows += [hard_row, soft_row]
    # noisy student: each seed's round-1 student (hard or soft as chosen) becomes one more agent for its round 2
    round1 = soft_results if chosen.soft else hard_results
    wafs, hidden, kept, points = [], [], [], []
    log.info("ablation: + round 2 (student as agent)")
    for s, (result, _) in zip(seeds, round1, strict=True):
        fit = _fit(data, _student_as_agent(result, data, agents), chosen)
        student, scores = _train(data, fit.pseudo, cfg, seed=s)
        wafs.append(student.scores.waf)
        hidden += [] if scores is None else [scores.waf]
        kept.append(sum(_kept(fit).values()))
        points.append(fit.point)
    first = points[0]
    rows.append(AblationRow("+ round 2 (student as agent)", int(round(np.mean(kept))), first.precision,
                            first.coverage, wafs, hidden, first.precision_low, first.precision_high))
    return rows


def ablation_markdown(rows: list[AblationRow]) -> str:
    """The ablation as a Markdown table: mean +- sd over the seeds."""
    seeds = max(len(r.wafs) for r in rows)
    lines = [f"| student | pseudo-labels | held-out precision [95% CI] | held-out coverage | 5-fold WAF "
             f"({seeds} seed{'s' if seeds > 1 else ''}) | hidden WAF |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        waf = "{:.4f} +- {:.4f}".format(*_mean_sd(r.wafs))
        hidden = "" if not r.hidden_wafs else "{:.4f} +- {:.4f}".format(*_mean_sd(r.hidden_wafs))
        precision = "" if math.isnan(r.precision) else \
            f"{r.precision:.3f} [{r.precision_low:.3f}, {r.precision_high:.3f}]"
        lines.append(f"| {r.variant} | {r.kept} | {precision} | {r.coverage:.3f} | {waf} | {hidden} |")
    return "\n".join(lines) + "\n"


def _load_data(cfg: DistillConfig) -> _Data:
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    labelled = [r.name for r in corpus.labelled]
    pool = [r.name for r in corpus.unlabelled]
    y = np.array([label_index(r.label) for r in corpus.labelled], dtype=np.int64)
    folds = run_folds(cfg.run, {r.name: r.label for r in corpus.labelled}, cfg.folds, cfg.fold_seed)
    run_features(corpus, cfg.run, cfg.features, cfg.progress)
    features = load_run_features(cfg.run, cfg.features, labelled + pool)
    data = _Data(labelled=labelled, pool=pool, y=y, counts=np.bincount(y, minlength=NUM_LABELS),
                 fold_of=folds.of(labelled), blocks=features.blocks, masks=features.masks,
                 hidden=read_hidden_labels(cfg.hidden_labels, pool) if cfg.hidden_labels else None,
                 extractors=features.extractors)
    return data


def _load_agents(cfg: DistillConfig, data: _Data) -> _Agents:
    store, names = load_agents(cfg.run, cfg.agents)
    check_out_of_fold(store, names, cfg.folds, cfg.fold_seed)
    labelled = store.matrix(names, data.labelled)                    # (agents, labelled, 6) out of fold
    pool = store.matrix_folds(names, data.pool, cfg.folds)           # (agents, pool, K, 6)
    if min_agents(labelled, cfg.filter) < cfg.filter.min_agents:
        log.info("%d agent(s): min_agents lowered from %d to %d (the agreement of one agent is trivial)",
                 len(names), cfg.filter.min_agents, min_agents(labelled, cfg.filter))
    return _Agents(names=names, labelled=labelled, pool=pool,
                   calibrations=fold_calibrations(labelled, data.y, data.fold_of))


def distill(cfg: DistillConfig) -> DistillReport:
    """Train and save the student; returns its out-of-fold scores, the kept pseudo-label counts, and with
    cfg.report the ablation rows (also written to out/ablation.md and out/ablation.json).

    Raises ValueError for missing agents, agents with in-sample labelled scores, a fold assignment that does not
    fit the run (run/folds.csv) or a hidden labels CSV that does not cover the pool.
    """
    data = _load_data(cfg)
    kept, fit, point, thresholds, summary, agents = {label: 0 for label in LABELS}, None, None, None, {}, None
    why_none = None
    if cfg.use_pseudo:
        agents = _load_agents(cfg, data)
        fit = _fit(data, agents, cfg.filter)
        point = fit.point
        summary = measure_filters(data, agents, cfg.filter, point, RunPaths(cfg.run).pseudo)
        write_pseudo_labels(fit.pseudo, agents.names, agents.pool, RunPaths(cfg.run).pseudo / "pseudo-labels.csv")
        kept = _kept(fit)
        if not any(len(p.index) for p in fit.pseudo):
            first, cal = agents.pool[:, :, 0], agents.calibrations[0]
            why_none = why_none_kept(first, combine_agents(first, cfg.filter, cal.temperatures, cal.agent_scores),
                                     cfg.filter)
            log.warning("distill: the filter kept no pseudo-label (fold 0: %s)", why_none)
        thresholds = {label: float(np.median([t[c] for t in fit.thresholds])) for c, label in enumerate(LABELS)}
    result, hidden = _train(data, None if fit is None else fit.pseudo, cfg)
    save_student(result, cfg.out)

    report = DistillReport(scores=result.scores, kept=kept, student_dir=cfg.out, labelled=len(data.labelled),
                           filter_point=point, thresholds=thresholds, hidden=hidden, why_none=why_none)
    if cfg.report:
        report.ablation = _ablation(data, cfg, agents, (result, hidden))
        atomic_write_text(cfg.out / "ablation.md", ablation_markdown(report.ablation))
        atomic_write_text(cfg.out / "ablation.json", json.dumps({
            "rows": [{**asdict(r), "waf": r.waf, "hidden_waf": r.hidden_waf} for r in report.ablation],
            "filters": summary, "config": to_dict(cfg),
        }, indent=2, ensure_ascii=False, allow_nan=True))
    atomic_write_text(cfg.out / "report.json", json.dumps({
        "waf": report.scores.waf, "accuracy": report.scores.accuracy,
        "per_class_f1": report.scores.per_class_f1, "kept": kept, "labelled": len(data.labelled),
        "kept_per_fold": None if fit is None else [p.counts() for p in fit.pseudo],
        "hidden_waf": None if hidden is None else hidden.waf,
        "applied_thresholds": None if fit is None else [[float(v) for v in t] for t in fit.thresholds],
        "filter_on_held_out": None if point is None else asdict(point),
        "folds": [{"chosen_epoch": f.best_epoch, "val_waf": f.val_waf} for f in result.folds],
        "extractors": data.extractors, "config": to_dict(cfg),
    }, indent=2, ensure_ascii=False, allow_nan=True))
    return report
