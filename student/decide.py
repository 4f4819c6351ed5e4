"""Do no harm, cross-fitted: per student fold, which classes of its pseudo-labels stay and with what loss weight,
decided from that fold's training clips alone.

Usage:
    decision = decide(inputs, evidence, cfg.filter, fit)
    decision.pseudo[k]        # what student fold k trains on (kept classes, weights = measured precision)
    decision.verdicts[k]      # per class: held-out kept, pseudo-labels right, student right, the verdict

For student fold k, every clip of the other folds is held out in turn as if unlabelled, with those folds as the
folds (the run's assignment less fold k): the filter is cross-fitted on them (calibration and thresholds on the
others, the pool scored by the agents' fold models of the others), and the student's own prediction of each comes
from a logistic regression of the student's inputs fitted on the labelled clips of neither fold k nor the clip's
own fold. pseudo.harm decides each class from those clips: a class whose pseudo-labels are right less often than
the student's own predictions gets none, the rest are weighted by their measured precision. Given the agents' stored
out-of-fold scores, fold k's labels play no part in fold k's decision, so its reported score is still an estimate
(the agents' fold models of the other folds did train on fold k's clips, as for every calibration of the filter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pseudo.harm import ClassVerdict, apply_verdict, class_verdict
from pseudo.measure import CrossFit, FilterPoint, cross_fit, fold_calibrations, precision_coverage
from pseudo.select import FilterConfig, PseudoLabels
from student.inputs import AgentEvidence, RunInputs
from student.linear import linear_design, predict_labels

log = logging.getLogger(__name__)

# inverse L2 strength of the logistic regression standing for the student's own predictions: a strong penalty,
# what the linear member falls back to on small folds (student.linear.FALLBACK_C)
STUDENT_C = 0.05


@dataclass
class Decision:
    """The do-no-harm decision of every student fold."""

    # pseudo[k]: the pseudo-labels student fold k trains on
    pseudo: list[PseudoLabels]
    # verdicts[k]: the per-class evidence on fold k's training clips and the verdict
    verdicts: list[ClassVerdict]
    # the guarded filter on the held-out labelled clips (fold k's clips under fold k's verdict)
    point: FilterPoint

    def kept_none(self) -> bool:
        return not any(len(p.index) for p in self.pseudo)

    def why_none(self) -> str:
        """Why no pseudo-label stayed, with the numbers of each fold (pseudo right / student right / kept)."""
        return "do no harm kept no class: " + " | ".join(f"fold {k}: {v.line()}" for k, v in enumerate(self.verdicts))


def student_labels(inputs: RunInputs, c: float = STUDENT_C) -> np.ndarray:
    """(K, labelled) per outer fold k, each other fold's clips labelled by a logistic regression of the student's
    inputs fitted on the labelled clips of neither fold; -1 on fold k's own clips. One fit per pair of folds."""
    n, fold_of = len(inputs.labelled), inputs.fold_of
    x = linear_design([b[:n] for b in inputs.blocks], inputs.masks[:n])      # (labelled, sum D_m + M)
    folds = int(fold_of.max()) + 1
    out = np.full((folds, n), -1, dtype=np.int64)
    for j in range(folds):
        for k in range(j + 1, folds):
            train = (fold_of != j) & (fold_of != k)
            pair = (fold_of == j) | (fold_of == k)
            labels = predict_labels(x[train], inputs.y[train], x[pair], c)
            which = np.flatnonzero(pair)
            on_j = fold_of[which] == j
            out[k, which[on_j]] = labels[on_j]
            out[j, which[~on_j]] = labels[~on_j]
    return out


def fold_evidence(evidence: AgentEvidence, cfg: FilterConfig, k: int) -> CrossFit:
    """The filter cross-fitted on the labelled clips outside fold k alone, with their folds as the folds."""
    train = evidence.fold_of != k
    others = [j for j in range(evidence.pool.shape[2]) if j != k]
    inner = np.searchsorted(others, evidence.fold_of[train])               # folds renumbered 0 .. K-2
    labelled, y = evidence.labelled[:, train], evidence.y[train]
    return cross_fit(labelled, y, inner, evidence.pool[:, :, others], evidence.pool_names, cfg,
                     fold_calibrations(labelled, y, inner, prior=cfg.prior))


def decide(inputs: RunInputs, evidence: AgentEvidence, cfg: FilterConfig, fit: CrossFit,
           students: np.ndarray | None = None) -> Decision:
    """The do-no-harm decision for each student fold of `fit` (the filter `cfg` cross-fitted on `evidence`);
    `students` from student_labels (computed when None)."""
    students = student_labels(inputs) if students is None else students
    pseudo, verdicts = [], []
    kept = np.zeros(len(inputs.y), dtype=bool)
    for k, chosen in enumerate(fit.pseudo):
        train = inputs.fold_of != k
        nested = fold_evidence(evidence, cfg, k)
        verdict = class_verdict(nested.held_kept, nested.held_label, inputs.y[train], students[k, train])
        pseudo.append(apply_verdict(chosen, verdict, cfg.weight))
        verdicts.append(verdict)
        held = ~train
        kept[held] = fit.held_kept[held] & verdict.keep[fit.held_label[held]]
        log.info("do no harm, fold %d (pseudo right / student right / kept held-out): %s", k, verdict.line())
    point = precision_coverage(kept, fit.held_label, inputs.y)
    log.info("do no harm: kept %s pseudo-labels of %s", [len(p.index) for p in pseudo],
             [len(p.index) for p in fit.pseudo])
    return Decision(pseudo=pseudo, verdicts=verdicts, point=point)

