"""Temperature scaling and ECE on hand-made arrays with known answers."""

import numpy as np
import pytest

from clips.folds import stratified_folds
from pseudo.calibration import (
    apply_temperature,
    apply_temperatures,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
)
from pseudo.measure import calibrated_held_out, fold_calibrations


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
    # fold 0's clips are scaled by the temperature fitted without them
    outside = fit_temperatures(probs[:, fold_of != 0], labels[fold_of != 0])
    np.testing.assert_allclose(held[:, fold_of == 0], apply_temperatures(probs[:, fold_of == 0], outside), atol=1e-6)
