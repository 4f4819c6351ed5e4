"""Where each stage reads and writes inside a run folder.

Usage:
    paths = RunPaths(Path("runs/demo"))
    paths.features, paths.agents, paths.pseudo, paths.student, paths.submission

Layout:
    run/features/<extractor-key>/<clip>.npz   feature cache, one file per clip (+ meta.json)
    run/features/status.csv                    per-clip status
    run/agents/<agent>/part-*.npz              teacher probabilities per clip
    run/pseudo/pseudo-labels.csv               kept pseudo-labels with their evidence
    run/student/                               fold models, report.json
    run/submission.csv                         name,discrete for every candidate
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Folders and files of one run."""

    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def agents(self) -> Path:
        return self.root / "agents"

    @property
    def pseudo(self) -> Path:
        return self.root / "pseudo"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def submission(self) -> Path:
        return self.root / "submission.csv"
