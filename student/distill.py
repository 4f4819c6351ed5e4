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
(run/pseudo/filters.json, precision-coverage.png; student.filter_report). The submission is the mean of the fold
models. Agents whose labelled-clip scores are in-sample are refused, naming the agent and the fix
(student.inputs.check_out_of_fold). The ablation students of `report=True` are student.ablation's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clips.config import to_dict
from clips.io import atomic_write_text
from clips.labels import LABELS
from clips.run import RunPaths
from clips.scoring import Scores
from features.stage import RunConfig
from pseudo.calibration import apply_priors
from pseudo.measure import FilterPoint
from pseudo.select import FilterConfig, combine_agents, why_none_kept, write_pseudo_labels
from student.ablation import AblationRow, ablation_markdown, run_ablation
from student.decide import decide
from student.filter_report import measure_filters
from student.inputs import kept_counts, load_agent_evidence, load_inputs
from student.rounds import train_round
from student.train import StudentConfig, save_student

log = logging.getLogger(__name__)


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
    # why no pseudo-label was kept, step by step or with the do-no-harm numbers (None when some were kept, or
    # without pseudo-labels)
    why_none: str | None = None
    # the filter before the do-no-harm decision on the held-out labelled clips (None without the decision)
    unguarded_point: FilterPoint | None = None
    # per student fold, per class: the do-no-harm evidence and verdict (None without the decision)
    verdicts: list[dict[str, dict[str, float]]] | None = None
    # the ablation rows (empty unless report=True)
    ablation: list[AblationRow] = field(default_factory=list)


def distill(cfg: DistillConfig) -> DistillReport:
    """Train and save the student; returns its out-of-fold scores, the kept pseudo-label counts, and with
    cfg.report the ablation rows (also written to out/ablation.md and out/ablation.json).

    Raises ValueError for missing agents, agents with in-sample labelled scores, a fold assignment that does not
    fit the run (run/folds.csv) or a hidden labels CSV that does not cover the pool.
    """
    inputs = load_inputs(cfg, cfg.hidden_labels)
    kept, fit, point, thresholds, summary, evidence = {label: 0 for label in LABELS}, None, None, None, {}, None
    why_none, pseudo, decision = None, None, None
    if cfg.use_pseudo:
        evidence = load_agent_evidence(cfg, inputs, cfg.agents, cfg.filter)
        fit = evidence.fit(cfg.filter)
        point, pseudo, applied = fit.point, fit.pseudo, fit.thresholds
        summary = measure_filters(evidence, cfg.filter, point, RunPaths(cfg.run).pseudo)
        if cfg.filter.guarded():
            decision = decide(inputs, evidence, cfg.filter, fit)
            point, pseudo = decision.point, decision.pseudo
            applied = [np.where(v.keep, t, np.inf) for v, t in zip(decision.verdicts, fit.thresholds, strict=True)]
        write_pseudo_labels(pseudo, evidence.names, evidence.pool, RunPaths(cfg.run).pseudo / "pseudo-labels.csv")
        kept = kept_counts(pseudo)
        if not any(len(p.index) for p in fit.pseudo):
            cal = evidence.calibrations[0]
            first = apply_priors(evidence.pool[:, :, 0], cal.priors)
            why_none = why_none_kept(first, combine_agents(first, cfg.filter, cal.temperatures, cal.agent_scores),
                                     cfg.filter)
            log.warning("distill: the filter kept no pseudo-label (fold 0: %s)", why_none)
        elif decision is not None and decision.kept_none():
            why_none = decision.why_none()
            log.warning("distill: %s", why_none)
        thresholds = {label: float(np.median([t[c] for t in applied])) for c, label in enumerate(LABELS)}
    result, hidden = train_round(inputs, pseudo, cfg.student, progress=cfg.progress)
    save_student(result, cfg.out)

    report = DistillReport(scores=result.scores, kept=kept, student_dir=cfg.out, labelled=len(inputs.labelled),
                           filter_point=point, thresholds=thresholds, hidden=hidden, why_none=why_none,
                           unguarded_point=None if decision is None else fit.point,
                           verdicts=None if decision is None else [v.summary() for v in decision.verdicts])
    if cfg.report:
        seeds = [cfg.student.seed + s for s in range(cfg.seeds)]
        report.ablation = run_ablation(inputs, evidence, cfg.filter, cfg.student, seeds, (result, hidden),
                                       guarded=None if decision is None else decision,
                                       progress=cfg.progress)
        atomic_write_text(cfg.out / "ablation.md", ablation_markdown(report.ablation))
        atomic_write_text(cfg.out / "ablation.json", json.dumps({
            "rows": [{**asdict(r), "waf": r.waf, "hidden_waf": r.hidden_waf} for r in report.ablation],
            "filters": summary, "config": to_dict(cfg),
        }, indent=2, ensure_ascii=False, allow_nan=True))
    atomic_write_text(cfg.out / "report.json", json.dumps({
        "waf": report.scores.waf, "accuracy": report.scores.accuracy,
        "per_class_f1": report.scores.per_class_f1, "kept": kept, "labelled": len(inputs.labelled),
        "kept_per_fold": None if pseudo is None else [p.counts() for p in pseudo],
        "hidden_waf": None if hidden is None else hidden.waf,
        "applied_thresholds": None if fit is None else [[float(v) for v in t] for t in applied],
        "filter_on_held_out": None if point is None else asdict(point),
        "unguarded_filter_on_held_out": None if report.unguarded_point is None else asdict(report.unguarded_point),
        "do_no_harm": report.verdicts,
        "folds": [{"chosen_epoch": f.best_epoch, "val_waf": f.val_waf} for f in result.folds],
        "extractors": inputs.extractors, "config": to_dict(cfg),
    }, indent=2, ensure_ascii=False, allow_nan=True))
    return report
