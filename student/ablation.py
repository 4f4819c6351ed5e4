"""The ablation harness of `distill --report`: the student with each pseudo-label variant, over several seeds.

Usage:
    rows = run_ablation(inputs, evidence, cfg.filter, cfg.student, seeds=[0, 1, 2], main=(result, hidden))
    print(ablation_markdown(rows))       # mean +- sd of the 5-fold and the hidden-pool WAF per variant

Rows: labelled only; + a fixed 0.95 threshold; + the chosen filter (hard targets); + the chosen filter under the
do-no-harm decision (student.decide); + soft targets; + a second round with each seed's round-1 student as one more
agent (noisy student).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from clips.scoring import Scores
from pseudo.measure import FilterPoint
from pseudo.select import FilterConfig, PseudoLabels
from student.decide import Decision, decide
from student.filter_report import BASELINE_THRESHOLD, baseline_filter
from student.inputs import AgentEvidence, RunInputs, kept_counts
from student.rounds import student_as_agent, train_round
from student.train import StudentConfig, StudentResult

log = logging.getLogger(__name__)


def mean_sd(values: list[float]) -> tuple[float, float]:
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
        return mean_sd(self.wafs)[0]

    @property
    def hidden_waf(self) -> float | None:
        return mean_sd(self.hidden_wafs)[0] if self.hidden_wafs else None


def run_ablation(inputs: RunInputs, evidence: AgentEvidence, chosen: FilterConfig, student: StudentConfig,
                 seeds: list[int], main: tuple[StudentResult, Scores | None], guarded: Decision | None = None,
                 progress: bool = False) -> list[AblationRow]:
    """The ablation rows, each trained once per seed of `seeds`; `main` is the saved student (chosen filter, seed
    seeds[0]), reused as that row's first seed: the do-no-harm row's when `guarded` (the decision it trained under)
    is given, else the chosen filter's. Without `guarded` the do-no-harm row is decided here."""

    def trained(variant: str, pseudo: list[PseudoLabels] | None, point: FilterPoint | None,
                reuse: tuple[StudentResult, Scores | None] | None = None) -> tuple[AblationRow, list]:
        """The row of students trained on `pseudo` (None: labelled only), measured at `point`."""
        log.info("ablation: %s", variant)
        results = [reuse if reuse is not None and s == seeds[0] else
                   train_round(inputs, pseudo, student, seed=s, progress=progress) for s in seeds]
        hidden = [h.waf for _, h in results if h is not None]
        wafs = [r.scores.waf for r, _ in results]
        if pseudo is None or point is None:
            return AblationRow(variant, 0, math.nan, 0.0, wafs, hidden), results
        return AblationRow(variant, sum(kept_counts(pseudo).values()), point.precision, point.coverage, wafs,
                           hidden, point.precision_low, point.precision_high), results

    def row(variant: str, fcfg: FilterConfig,
            reuse: tuple[StudentResult, Scores | None] | None = None) -> tuple[AblationRow, list]:
        fit = evidence.fit(fcfg)
        return trained(variant, fit.pseudo, fit.point, reuse)

    rows = [trained("labelled only", None, None)[0],
            row(f"+ pseudo, fixed {BASELINE_THRESHOLD}", baseline_filter(chosen))[0]]
    hard, soft = replace(chosen, soft=False), replace(chosen, soft=True)
    hard_row, hard_results = row("+ pseudo, chosen filter", hard,
                                 reuse=None if chosen.soft or guarded is not None else main)
    decision = guarded if guarded is not None else decide(inputs, evidence, chosen, evidence.fit(chosen))
    guarded_row = trained("+ do no harm", decision.pseudo, decision.point,
                          reuse=main if guarded is not None else None)[0]
    soft_row, soft_results = row("+ soft targets", soft,
                                 reuse=main if chosen.soft and guarded is None else None)
    rows += [hard_row, guarded_row, soft_row]
    if chosen.prior:
        # the chosen filter without its first step, each agent's label prior fitted on the training folds
        rows.append(row("+ pseudo, chosen filter without the label prior", replace(hard, prior=False))[0])
    # noisy student: each seed's round-1 student (hard or soft as chosen) becomes one more agent for its round 2
    round1 = soft_results if chosen.soft else hard_results
    wafs, hidden, kept, points = [], [], [], []
    log.info("ablation: + round 2 (student as agent)")
    for s, (result, _) in zip(seeds, round1, strict=True):
        fit = student_as_agent(result, inputs, evidence).fit(chosen)
        round2, scores = train_round(inputs, fit.pseudo, student, seed=s, progress=progress)
        wafs.append(round2.scores.waf)
        hidden += [] if scores is None else [scores.waf]
        kept.append(sum(kept_counts(fit.pseudo).values()))
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
        waf = "{:.4f} +- {:.4f}".format(*mean_sd(r.wafs))
        hidden = "" if not r.hidden_wafs else "{:.4f} +- {:.4f}".format(*mean_sd(r.hidden_wafs))
        precision = "" if math.isnan(r.precision) else \
            f"{r.precision:.3f} [{r.precision_low:.3f}, {r.precision_high:.3f}]"
        lines.append(f"| {r.variant} | {r.kept} | {precision} | {r.coverage:.3f} | {waf} | {hidden} |")
    return "\n".join(lines) + "\n"
