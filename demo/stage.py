"""`demo`: the whole pipeline on a synthetic corpus, from raw clips to a scored submission, on CPU.

Usage:
    result = run_demo(DemoRunConfig(out=Path("demo-run")))
    print(result.table())

Steps: make-demo, features, teacher-label, distill twice (labelled only; labelled + pseudo-labels), submit
both, evaluate both against the pool's hidden labels, and the run report (out/run/report/index.html).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from clips.dataset import load_corpus
from clips.run import RunPaths
from clips.scoring import Scores, evaluate_csv
from demo.corpus import make_demo
from demo.plan import DemoConfig
from features.stage import FeatureSettings, run_features
from pseudo.select import FilterConfig
from report.build import ReportConfig, build_report
from student.distill import DistillConfig, DistillReport, distill
from student.submit import SubmitConfig, SubmitSummary, submit
from student.train import StudentConfig
from teacher.label import TeacherLabelConfig, teacher_label


@dataclass
class DemoRunConfig:
    """Settings of `demo`."""

    # folder for the synthetic corpus (out/data) and the run (out/run)
    out: Path = Path("demo-run")
    # the synthetic corpus
    corpus: DemoConfig = field(default_factory=DemoConfig)
    # extractors and their options
    features: FeatureSettings = field(default_factory=FeatureSettings)
    # the consistency filter
    filter: FilterConfig = field(default_factory=FilterConfig)
    # the student's training settings
    student: StudentConfig = field(default_factory=StudentConfig)
    # show progress bars
    progress: bool = True


@dataclass
class DemoRow:
    """One student variant's outcome."""

    variant: str
    distill: DistillReport
    submission: SubmitSummary
    # scores of the submission against the pool's hidden labels
    hidden: Scores


@dataclass
class DemoResult:
    rows: list[DemoRow]
    # seconds per step
    timings: dict[str, float]
    # the run report's page
    report: Path | None = None

    def table(self) -> str:
        """The comparison table printed at the end of the demo."""
        head = f"{'student':<28}{'pseudo-labels':>14}{'5-fold WAF':>12}{'hidden WAF':>12}{'hidden acc':>12}"
        lines = [head, "-" * len(head)]
        for row in self.rows:
            lines.append(f"{row.variant:<28}{sum(row.distill.kept.values()):>14d}{row.distill.scores.waf:>12.4f}"
                         f"{row.hidden.waf:>12.4f}{row.hidden.accuracy:>12.4f}")
        return "\n".join(lines)


def run_demo(cfg: DemoRunConfig, log=print) -> DemoResult:
    """Run every stage on a fresh synthetic corpus and write the run report; returns both students' scores."""
    data, run = cfg.out / "data", cfg.out / "run"
    timings: dict[str, float] = {}

    def step(name: str, fn):
        log(f"== {name}")
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    if not (data / "label-disdim.csv").exists():
        step("make-demo", lambda: make_demo(data, cfg.corpus, progress=cfg.progress))
    corpus = load_corpus(data)
    step("features", lambda: run_features(corpus, run, cfg.features, cfg.progress))
    step("teacher-label", lambda: teacher_label(TeacherLabelConfig(
        data=data, run=run, features=cfg.features, progress=cfg.progress)))
    rows = []
    for variant, use_pseudo in (("labelled only", False), ("labelled + pseudo-labels", True)):
        tag = "pseudo" if use_pseudo else "labelled"
        student_dir = RunPaths(run).root / f"student-{tag}"
        report = step(f"distill ({variant})", lambda use_pseudo=use_pseudo, student_dir=student_dir: distill(
            DistillConfig(data=data, run=run, features=cfg.features, use_pseudo=use_pseudo, filter=cfg.filter,
                          student=cfg.student, out=student_dir, progress=cfg.progress)))
        summary = step(f"submit ({variant})", lambda student_dir=student_dir, tag=tag: submit(SubmitConfig(
            data=data, run=run, student=student_dir, out=RunPaths(run).root / f"submission-{tag}.csv",
            features=cfg.features, progress=cfg.progress)))
        hidden = step(f"evaluate ({variant})", lambda summary=summary, tag=tag: evaluate_csv(
            summary.path, data / "hidden-labels.csv", RunPaths(run).root / f"confusion-{tag}.png"))
        rows.append(DemoRow(variant=variant, distill=report, submission=summary, hidden=hidden))
    page = step("report", lambda: build_report(ReportConfig(run=run, data=data,
                                                            hidden_labels=data / "hidden-labels.csv")))
    log(f"report: {page.index}")
    return DemoResult(rows=rows, timings=timings, report=page.index)
