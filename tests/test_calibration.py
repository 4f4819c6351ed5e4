"""Label-prior correction, temperature scaling and ECE on hand-made arrays with known answers."""

import numpy as np
import pytest

from clips.folds import stratified_folds
from clips.scoring import score
from pseudo.calibration import (
    apply_prior,
    apply_priors,
    apply_temperature,
    apply_temperatures,
    expected_calibration_error,
    fit_prior,
    fit_priors,
    fit_temperature,
    fit_temperatures,
)
from pseudo.measure import calibrated_held_out, calibration_summary, fold_calibrations


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 6))
    labels = np.array([rng.choice(6, p=p) for p in _softmax(logits)])   # calibrated at T = 1
    overconfident = _softmax(logits * 2.5)                              # the agent reports logits x 2.5
    assert fit_temperature(overconfident, labels) == pytest.approx(2.5, rel=0.08)
    assert expected_calibration_error(apply_temperature(overconfident, 2.5), labels) < \
        expected_calibration_error(overconfident, labels)


def test_apply_temperature_keeps_nan_rows_and_argmax():
    probs = np.array([[0.7, 0.2, 0.1, 0, 0, 0], [np.nan] * 6])
    scaled = apply_temperature(probs, 2.0)
    assert np.isnan(scaled[1]).all() and scaled[0].argmax() == 0
    # T = 2 halves the log-probs: sqrt(0.7) / (sqrt(0.7) + sqrt(0.2) + sqrt(0.1) + 3 sqrt(1e-6))
    expected = np.sqrt(0.7) / (np.sqrt(0.7) + np.sqrt(0.2) + np.sqrt(0.1) + 3e-3)
    assert scaled[0, 0] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(probs, 0.0)


def test_ece_of_a_perfectly_calibrated_toy_is_zero_and_of_an_overconfident_one_is_the_gap():
    # 10 clips at confidence 0.8 of which 8 are right, 10 at 0.6 of which 6 are right
    probs = np.array([[0.8, 0.2, 0, 0, 0, 0]] * 10 + [[0.6, 0.4, 0, 0, 0, 0]] * 10)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)
    # all wrong at 0.8 and 0.6: gaps 0.8 and 0.6, half the clips each
    assert expected_calibration_error(probs, np.ones(20, dtype=int)) == pytest.approx(0.7)


def test_cross_fitted_calibration_uses_other_folds_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(500, 6))
    labels = np.array([rng.choice(6, p=p) for p in _softmax(logits)])
    probs = _softmax(logits * 3.0)[None]                                # (agents=1, clips, 6)
    fold_of = stratified_folds(labels, 5, seed=0)
    calibrations = fold_calibrations(probs, labels, fold_of)
    held = calibrated_held_out(probs, fold_of, calibrations)
    assert held.shape == probs.shape and not np.isnan(held).any()
    assert expected_calibration_error(held[0], labels) < expected_calibration_error(probs[0], labels) / 2
    # fold 0's clips are corrected by the prior and scaled by the temperature fitted without them
    weights = fit_priors(probs[:, fold_of != 0], labels[fold_of != 0])
    outside = fit_temperatures(apply_priors(probs[:, fold_of != 0], weights), labels[fold_of != 0])
    np.testing.assert_allclose(held[:, fold_of == 0],
                               apply_temperatures(apply_priors(probs[:, fold_of == 0], weights), outside), atol=1e-6)
    # without the prior step: the temperatures alone, fitted on the raw probabilities
    plain = fold_calibrations(probs, labels, fold_of, prior=False)
    assert plain[0].priors is None
    np.testing.assert_allclose(calibrated_held_out(probs, fold_of, plain)[:, fold_of == 0],
                               apply_temperatures(probs[:, fold_of == 0], fit_temperatures(
                                   probs[:, fold_of != 0], labels[fold_of != 0])), atol=1e-6)


def test_prior_weights_by_hand():
    # mean probabilities (0.5, 0.3, 0.2, 0, 0, 0) against frequencies (1/2, 1/2, 0, 0, 0, 0)
    probs = np.array([[0.6, 0.2, 0.2, 0, 0, 0], [0.4, 0.4, 0.2, 0, 0, 0], [np.nan] * 6])
    weights = fit_prior(probs, np.array([0, 1, 5]))
    np.testing.assert_allclose(weights, [1.0, 0.5 / 0.3, 0, 0, 0, 0], rtol=1e-6)
    corrected = apply_prior(probs, weights)
    row = np.array([0.6, 0.2 * 0.5 / 0.3, 0, 0, 0, 0])
    np.testing.assert_allclose(corrected[0], row / row.sum(), rtol=1e-6)
    assert np.isnan(corrected[2]).all()
    # a row the weights zero out entirely stays as it was; no evidence at all: weights of one
    np.testing.assert_allclose(apply_prior(np.array([[0, 0, 1.0, 0, 0, 0]]), weights), [[0, 0, 1.0, 0, 0, 0]])
    np.testing.assert_allclose(fit_prior(np.full((2, 6), np.nan), np.array([0, 1])), np.ones(6))


def test_a_biased_agent_is_corrected_on_held_out_folds_and_a_fair_one_is_left_alone():
    rng = np.random.default_rng(2)
    labels = rng.choice(6, size=900, p=[0.1, 0.3, 0.2, 0.2, 0.1, 0.1])
    logits = rng.normal(0, 1.0, size=(900, 6)) + 2.0 * np.eye(6)[labels]
    fair = _softmax(logits + np.log([0.1, 0.3, 0.2, 0.2, 0.1, 0.1]))
    biased = _softmax(logits + np.log([0.1, 0.3, 0.2, 0.2, 0.1, 0.1]) + 3.0 * np.eye(6)[5])  # says "worried" often
    probs = np.stack([fair, biased])
    fold_of = stratified_folds(labels, 5, seed=0)
    calibrations = fold_calibrations(probs, labels, fold_of)
    corrected = calibrated_held_out(probs, fold_of, calibrations, temperature=False)

    def waf(p):
        return score(labels, p.argmax(axis=1)).waf

    assert (biased.argmax(axis=1) == 5).mean() > 0.5                    # the bias wins most clips
    assert (corrected[1].argmax(axis=1) == 5).mean() < 0.2                # not after the correction
    assert waf(corrected[1]) > waf(biased) + 0.2
    # the fair agent's weights stay near one and its WAF where it was
    assert np.abs(np.stack([c.priors[0] for c in calibrations]) - 1).max() < 0.2
    assert abs(waf(corrected[0]) - waf(fair)) < 0.02
    summary = calibration_summary(probs, labels, fold_of, calibrations, ["fair", "biased"])
    assert summary["biased"]["oof_waf_prior"] == pytest.approx(waf(corrected[1]))
    assert summary["biased"]["oof_waf"] == pytest.approx(waf(biased))
    weights = summary["biased"]["prior_weights"]                        # worried divided down against the rest
    assert len(weights) == 6 and weights[5] < 0.25 * min(weights[:5])
    # out of fold: changing fold 0's labels leaves fold 0's corrected scores as they were
    changed = labels.copy()
    changed[fold_of == 0] = (changed[fold_of == 0] + 1) % 6
    again = calibrated_held_out(probs, fold_of, fold_calibrations(probs, changed, fold_of))
    before = calibrated_held_out(probs, fold_of, calibrations)
    np.testing.assert_allclose(again[:, fold_of == 0], before[:, fold_of == 0])
    assert not np.allclose(again[:, fold_of == 1], before[:, fold_of == 1])
