"""One student trained on a run's labelled clips plus each fold's pseudo-labels, and what it says of the pool.

Usage:
    result, hidden = train_round(inputs, fit.pseudo, cfg.student)   # hidden: scores on the pool's hidden labels
    probs = pool_probs(result, inputs)                              # (pool, 6)
    evidence2 = student_as_agent(result, inputs, evidence)          # the student as one more agent (round 2)

Student fold k trains on the labelled clips of the other folds and on pseudo[k], the pool clips the agents'
fold-k models chose (student.train chooses its epoch on an inner split of those labelled clips).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from clips.labels import NUM_LABELS
from clips.scoring import Scores, score
from pseudo.measure import fold_calibrations
from pseudo.select import PseudoLabels
from student.inputs import AgentEvidence, RunInputs
from student.train import StudentConfig, StudentResult, predict_folds, predict_student, train_student


def training_examples(inputs: RunInputs, pseudo: list[PseudoLabels] | None) -> dict[str, np.ndarray]:
    """train_student's example arrays: every labelled clip in its fold, then each fold's pseudo-labelled clips."""
    n = len(inputs.labelled)
    row_of, fold_of = [np.arange(n)], [inputs.fold_of]
    targets, weights = [np.eye(NUM_LABELS, dtype=np.float32)[inputs.y]], [np.ones(n, np.float32)]
    for k, chosen in enumerate(pseudo or []):
        row_of.append(n + chosen.index)
        fold_of.append(np.full(len(chosen.index), k))
        targets.append(chosen.targets)
        weights.append(chosen.weights)
    return {"row_of": np.concatenate(row_of), "fold_of": np.concatenate(fold_of),
            "targets": np.concatenate(targets), "weights": np.concatenate(weights),
            "is_labelled": np.arange(sum(len(r) for r in row_of)) < n}


def train_round(inputs: RunInputs, pseudo: list[PseudoLabels] | None, cfg: StudentConfig, seed: int | None = None,
                progress: bool = False) -> tuple[StudentResult, Scores | None]:
    """Train one student on the labelled clips (+ each fold's `pseudo`); returns it and its hidden-label scores."""
    ex = training_examples(inputs, pseudo)
    student = cfg if seed is None else replace(cfg, seed=seed)
    result = train_student(inputs.blocks, inputs.masks, ex["targets"], ex["weights"], ex["is_labelled"], student,
                           progress=progress, fold_of=ex["fold_of"], row_of=ex["row_of"])
    if inputs.hidden is None:
        return result, None
    return result, score(inputs.hidden, pool_probs(result, inputs).argmax(axis=1))


def pool_probs(result: StudentResult, inputs: RunInputs) -> np.ndarray:
    """(pool, 6) the student's probabilities of the pool; the labelled class prior where a clip has no modality."""
    pool = np.arange(len(inputs.labelled), len(inputs.labelled) + len(inputs.pool))
    probs = predict_student(result, [b[pool] for b in inputs.blocks], inputs.masks[pool])
    prior = np.eye(NUM_LABELS, dtype=np.float32)[inputs.counts.argmax()]
    return np.where(inputs.masks[pool].any(axis=1)[:, None], probs, prior)


def student_as_agent(result: StudentResult, inputs: RunInputs, evidence: AgentEvidence) -> AgentEvidence:
    """The agents plus the round-1 student: out of fold on the labelled clips, fold model k on the pool for fold k.

    A pool clip with no modality gets no evidence from the student (NaN), not the class prior.
    """
    pool = np.arange(len(inputs.labelled), len(inputs.labelled) + len(inputs.pool))
    fold_pool = predict_folds(result, [b[pool] for b in inputs.blocks], inputs.masks[pool])     # (pool, K, 6)
    fold_pool = np.where(inputs.masks[pool].any(axis=1)[:, None, None], fold_pool, np.nan).astype(np.float32)
    labelled = np.concatenate([evidence.labelled, result.oof_probs[None]])
    return AgentEvidence(names=[*evidence.names, "student"], labelled=labelled,
                         pool=np.concatenate([evidence.pool, fold_pool[None]]),
                         calibrations=fold_calibrations(labelled, inputs.y, inputs.fold_of,
                                                        prior=evidence.calibrations[0].priors is not None),
                         y=inputs.y, fold_of=inputs.fold_of, pool_names=inputs.pool)
