"""Do no harm: the per-class verdict by hand, the cross-fitted decision that never reads the fold it reports, and
students trained under it on a corpus with a good teacher (it keeps and gains) and a bad one (it keeps none)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clips.folds import stratified_folds
from clips.labels import NUM_LABELS
from pseudo.harm import apply_verdict, class_verdict
from pseudo.measure import fold_calibrations
from pseudo.select import FilterConfig, PseudoLabels
from student.decide import decide, student_labels
from student.inputs import AgentEvidence, RunInputs
from student.rounds import train_round
from student.train import StudentConfig

STUDENT = StudentConfig(hidden=32, epochs=20, patience=8, batch_size=16, device="cpu")


def test_class_verdict_by_hand():
    kept = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], bool)
    pseudo = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    truth = np.array([0, 0, 1, 1, 2, 2, 2, 2, 3, 0])
    student = np.array([0, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    verdict = class_verdict(kept, pseudo, truth, student, prior_clips=9.0)
    assert verdict.kept.tolist() == [3, 3, 1, 2, 0, 0]
    assert verdict.pseudo_right.tolist() == [2, 1, 1, 1, 0, 0]
    assert verdict.student_right.tolist() == [2, 3, 1, 1, 0, 0]   # the clip not kept does not count
    # over all classes: pseudo-labels right 5 of 9, the student 7 of 9; each class shrunk by 9 clips' worth of that
    np.testing.assert_allclose(verdict.precision, [7 / 12, 6 / 12, 6 / 10, 6 / 11, 5 / 9, 5 / 9])
    np.testing.assert_allclose(verdict.student, [9 / 12, 10 / 12, 8 / 10, 8 / 11, 7 / 9, 7 / 9])
    assert verdict.keep.tolist() == [False] * 6
    # with no pooling, each class on its own: class 0 ties the student (kept), class 3 ties (kept), 1 loses
    alone = class_verdict(kept, pseudo, truth, student, prior_clips=0.0)
    assert alone.keep.tolist() == [True, False, True, True, False, False]
    np.testing.assert_allclose(alone.precision[:4], [2 / 3, 1 / 3, 1, 1 / 2])
    assert alone.line().startswith("neutral 2/2/3 kept; angry 1/3/3 none")
    # a student that is wrong where the pseudo-labels are right: the class stays, shrunk towards the overall rate
    better = class_verdict(np.ones(4, bool), np.array([1, 1, 2, 2]), np.array([1, 1, 2, 0]), np.array([0, 1, 2, 2]))
    assert better.keep.tolist() == [False, True, True, False, False, False]

    pseudo_labels = PseudoLabels(names=["a", "b", "c", "d"], labels=np.array([0, 1, 3, 5]),
                                 targets=np.eye(NUM_LABELS, dtype=np.float32)[[0, 1, 3, 5]],
                                 weights=np.ones(4, np.float32), confidence=np.full(4, 0.9, np.float32),
                                 index=np.array([7, 8, 9, 10]))
    guarded = apply_verdict(pseudo_labels, alone, weight=0.5)
    assert guarded.names == ["a", "c"] and guarded.index.tolist() == [7, 9]
    np.testing.assert_allclose(guarded.weights, [0.5 * 2 / 3, 0.5 * 1 / 2])


def _corpus(teacher_right: float, seed: int = 0, labelled: int = 120, pool: int = 600,
            signal: float = 0.45) -> tuple[RunInputs, AgentEvidence]:
    """Features with a weak class signal and two agents that agree: on each clip both believe the truth with
    probability `teacher_right`, else the same wrong label (a shared confusion, as in teachers that misread alike)."""
    rng = np.random.default_rng(seed)
    n = labelled + pool
    truth = np.arange(n) % NUM_LABELS
    rng.shuffle(truth)
    blocks = []
    for dim in (8, 12):
        centres = rng.normal(0, signal, size=(NUM_LABELS, dim)).astype(np.float32)
        blocks.append(centres[truth] + rng.standard_normal((n, dim), dtype=np.float32))
    y = truth[:labelled]
    fold_of = stratified_folds(y, 5, seed)
    right = rng.random(n) < teacher_right
    believed = np.where(right, truth, (truth + 1 + rng.integers(0, NUM_LABELS - 1, n)) % NUM_LABELS)

    def probs(extra: tuple[int, ...]) -> np.ndarray:
        p = rng.dirichlet(np.ones(NUM_LABELS), size=(*extra, n)).astype(np.float32) * 0.3
        p[..., np.arange(n), believed] += rng.uniform(0.4, 0.7, size=(*extra, n)).astype(np.float32)
        return p / p.sum(axis=-1, keepdims=True)

    agents = probs((2,))                                                     # (agents, clips, 6)
    pool_probs = np.stack([probs((2,)) for _ in range(5)], axis=2)[:, labelled:]   # (agents, pool, K, 6)
    names = [f"p{i}" for i in range(pool)]
    inputs = RunInputs(labelled=[f"l{i}" for i in range(labelled)], pool=names, y=y,
                       counts=np.bincount(y, minlength=NUM_LABELS), fold_of=fold_of, blocks=blocks,
                       masks=np.ones((n, 2), bool), hidden=truth[labelled:])
    evidence = AgentEvidence(names=["a", "b"], labelled=agents[:, :labelled], pool=pool_probs,
                             calibrations=fold_calibrations(agents[:, :labelled], y, fold_of), y=y, fold_of=fold_of,
                             pool_names=names)
    return inputs, evidence


def _relabelled(inputs: RunInputs, evidence: AgentEvidence, fold: int) -> tuple[RunInputs, AgentEvidence]:
    """The same corpus with every labelled clip of `fold` given another label."""
    y = inputs.y.copy()
    y[inputs.fold_of == fold] = (y[inputs.fold_of == fold] + 1) % NUM_LABELS
    return (dataclasses.replace(inputs, y=y),
            dataclasses.replace(evidence, y=y, fits={},
                                calibrations=fold_calibrations(evidence.labelled, y, evidence.fold_of)))


@pytest.mark.parametrize("teacher_right", [0.3, 0.9])
def test_the_decision_for_a_fold_never_reads_that_folds_labels(teacher_right: float):
    inputs, evidence = _corpus(teacher_right)
    cfg = FilterConfig()
    before = decide(inputs, evidence, cfg, evidence.fit(cfg))
    changed = 0
    for fold in range(5):
        inputs2, evidence2 = _relabelled(inputs, evidence, fold)
        after = decide(inputs2, evidence2, cfg, evidence2.fit(cfg))
        assert after.verdicts[fold].summary() == before.verdicts[fold].summary()
        assert after.pseudo[fold].names == before.pseudo[fold].names
        np.testing.assert_array_equal(after.pseudo[fold].weights, before.pseudo[fold].weights)
        # the other folds' decisions read fold `fold`'s labels, so the check can fail
        changed += sum(after.verdicts[k].summary() != before.verdicts[k].summary() for k in range(5) if k != fold)
    assert changed > 0


def test_student_labels_come_from_models_that_saw_neither_fold():
    inputs, _ = _corpus(0.9)
    labels = student_labels(inputs)
    assert labels.shape == (5, len(inputs.y))
    for k in range(5):
        assert (labels[k, inputs.fold_of == k] == -1).all() and (labels[k, inputs.fold_of != k] >= 0).all()
    # relabelling fold 0 leaves outer fold 0's view of every other fold as it was
    inputs2, _ = _relabelled(inputs, _corpus(0.9)[1], 0)
    np.testing.assert_array_equal(student_labels(inputs2)[0], labels[0])


def test_a_bad_teacher_keeps_nothing_and_a_good_one_keeps_and_gains():
    scores = {}
    for name, right in (("bad", 0.3), ("good", 0.9)):
        inputs, evidence = _corpus(right, seed=1)
        cfg = FilterConfig()
        fit = evidence.fit(cfg)
        decision = decide(inputs, evidence, cfg, fit)
        labelled_only, hidden_only = train_round(inputs, None, STUDENT)
        unguarded, hidden_unguarded = train_round(inputs, fit.pseudo, STUDENT)
        guarded, hidden_guarded = train_round(inputs, decision.pseudo, STUDENT)
        scores[name] = {"kept": sum(len(p.index) for p in decision.pseudo),
                        "unguarded_kept": sum(len(p.index) for p in fit.pseudo),
                        "labelled": labelled_only.scores.waf, "unguarded": unguarded.scores.waf,
                        "guarded": guarded.scores.waf, "hidden_labelled": hidden_only.waf,
                        "hidden_unguarded": hidden_unguarded.waf, "hidden_guarded": hidden_guarded.waf}
    bad, good = scores["bad"], scores["good"]
    # the bad teacher's pseudo-labels hurt when used as they come; the decision keeps none of them
    assert bad["unguarded_kept"] > 0 and bad["hidden_unguarded"] < bad["hidden_labelled"] - 0.05, bad
    assert bad["kept"] == 0, bad
    assert bad["guarded"] == bad["labelled"] and bad["hidden_guarded"] == bad["hidden_labelled"], bad
    # the good teacher's are kept, and the student gains on the 600 hidden pool clips (its 5-fold WAF on 120
    # labelled clips moves by a few hundredths either way with a seed)
    assert good["kept"] > 0.5 * good["unguarded_kept"], good
    assert good["hidden_guarded"] > good["hidden_labelled"] + 0.05, good


def test_a_filter_chosen_by_hand_is_applied_as_it_is():
    assert FilterConfig().guarded() and FilterConfig(guard=True).guarded()
    assert not FilterConfig(threshold=0.9).guarded() and not FilterConfig(target_precision=0.8).guarded()
    assert not FilterConfig(topk_fraction=0.3).guarded() and not FilterConfig(guard=False).guarded()
    assert FilterConfig(threshold=0.9, guard=True).guarded()
