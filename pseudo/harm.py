"""Do no harm: which classes of one student fold's pseudo-labels to keep, and with what loss weight, from evidence
on that fold's training clips alone. Pure functions on label arrays.

Usage:
    verdict = class_verdict(kept, pseudo_label, truth, student_label)   # (clips,) arrays of the fold's training clips
    verdict.keep                  # (6,) bool: the class's pseudo-labels beat the student's own predictions
    guarded = apply_verdict(pseudo, verdict, weight=1.0)   # kept classes only, weight * measured precision

The evidence is each training clip held out as if unlabelled (pseudo.measure.cross_fit on the fold's training clips
with their own folds): `kept` and `pseudo_label` say what the filter did with it, `student_label` is the student's
own prediction of it from a model that never saw its label. A class whose pseudo-labels are right less often than
the student's own predictions on the very clips they would be added for teaches the student nothing it does not
know, only its errors: it gets none. Both rates are shrunk towards their rates over all classes, so a class judged
on a handful of held-out clips is not kept by luck. A class with no kept held-out clip has no evidence: it gets none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clips.labels import LABELS, NUM_LABELS
from pseudo.select import PseudoLabels

# clips' worth of the fold's overall rates that each class's precision and the student's accuracy are shrunk towards
PRIOR_CLIPS = 10.0


@dataclass
class ClassVerdict:
    """Per class, the held-out evidence and what it decided."""

    # (6,) held-out clips the filter kept with that pseudo-label
    kept: np.ndarray
    # (6,) of those, how many the pseudo-label got right, and how many the student's own prediction got right
    pseudo_right: np.ndarray
    student_right: np.ndarray
    # (6,) bool: the class's pseudo-labels stay
    keep: np.ndarray
    # (6,) the class's pseudo-label precision and the student's accuracy on the same clips, each shrunk towards
    # its rate over all classes (class_verdict)
    precision: np.ndarray
    student: np.ndarray

    def summary(self) -> dict[str, dict[str, float]]:
        """Per label: kept, pseudo_right, student_right, keep, precision (JSON-ready)."""
        return {label: {"held_out_kept": int(self.kept[c]), "pseudo_right": int(self.pseudo_right[c]),
                        "student_right": int(self.student_right[c]), "keep": bool(self.keep[c]),
                        "precision": float(self.precision[c]), "student": float(self.student[c])}
                for c, label in enumerate(LABELS)}

    def line(self) -> str:
        """One line: per class, pseudo-labels right / student right / kept, and the verdict."""
        return "; ".join(f"{label} {int(self.pseudo_right[c])}/{int(self.student_right[c])}/{int(self.kept[c])} "
                         f"{'kept' if self.keep[c] else 'none'}" for c, label in enumerate(LABELS))


def class_verdict(kept: np.ndarray, pseudo_label: np.ndarray, truth: np.ndarray, student_label: np.ndarray,
                  prior_clips: float = PRIOR_CLIPS) -> ClassVerdict:
    """The verdict of each class from held-out clips: `kept` (clips,) bool, `pseudo_label`, `truth` and
    `student_label` (clips,) label indices.

    Per class, the pseudo-labels' precision and the student's accuracy on the same clips, each shrunk towards its
    rate over every class's kept clips by `prior_clips` clips' worth (partial pooling: a class with a handful of
    held-out clips is judged mostly by the fold's overall rates, one with many by its own). A class stays when its
    shrunk pseudo-label precision is at least the student's.
    """
    counts, pseudo_right, student_right = (np.zeros(NUM_LABELS, np.int64) for _ in range(3))
    for c in range(NUM_LABELS):
        mine = kept & (pseudo_label == c)
        counts[c] = mine.sum()
        pseudo_right[c] = (truth[mine] == c).sum()
        student_right[c] = (student_label[mine] == truth[mine]).sum()
    total, weight = max(int(counts.sum()), 1), np.maximum(counts + prior_clips, 1e-12)
    precision = (pseudo_right + prior_clips * pseudo_right.sum() / total) / weight
    student = (student_right + prior_clips * student_right.sum() / total) / weight
    keep = (counts > 0) & (precision >= student)
    return ClassVerdict(kept=counts, pseudo_right=pseudo_right, student_right=student_right, keep=keep,
                        precision=precision, student=student)


def apply_verdict(pseudo: PseudoLabels, verdict: ClassVerdict, weight: float = 1.0) -> PseudoLabels:
    """`pseudo` with only the kept classes' clips, each weighted `weight` times its class's measured precision."""
    stay = verdict.keep[pseudo.labels]
    return PseudoLabels(names=[n for n, s in zip(pseudo.names, stay, strict=True) if s],
                        labels=pseudo.labels[stay], targets=pseudo.targets[stay],
                        weights=(weight * verdict.precision[pseudo.labels[stay]]).astype(np.float32),
                        confidence=pseudo.confidence[stay], index=pseudo.index[stay])
