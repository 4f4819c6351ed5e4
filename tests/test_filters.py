import numpy as np
import pytest

from pseudo.filters import (
    agreement_mask,
    cap_per_class,
    class_thresholds,
    combine_mean,
    combine_product,
    confidence_mask,
    evidence_mask,
)
from pseudo.select import FilterConfig, select_pseudo_labels

NAN = [np.nan] * 6


def test_combine_mean_and_product_skip_agents_without_evidence():
    probs = np.array([
        [[0.5, 0.0, 0.0, 0.5, 0.0, 0.0], NAN, NAN],
        [[0.5, 0.0, 0.0, 0.0, 0.5, 0.0], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5], NAN],
    ], dtype=np.float32)                                   # (agents=2, clips=3, 6)
    assert evidence_mask(probs).tolist() == [[True, False, False], [True, True, False]]
    mean = combine_mean(probs)
    np.testing.assert_allclose(mean[0], [0.5, 0, 0, 0.25, 0.25, 0])
    np.testing.assert_allclose(mean[1], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
    np.testing.assert_allclose(mean[2], np.full(6, 1 / 6))
    product = combine_product(probs)
    # neutral is the only label both agents support: 0.25 against 1e-6 * 0.5 for sad and worried
    assert product[0].argmax() == 0 and product[0, 0] > 0.9999
    np.testing.assert_allclose(product[1], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5], rtol=1e-5)
    np.testing.assert_allclose(product[2], np.full(6, 1 / 6), rtol=1e-5)


def test_agreement_top_k_and_rules():
    probs = np.array([
        [[0.6, 0.3, 0.1, 0, 0, 0], [0.1, 0.6, 0.3, 0, 0, 0]],
        [[0.3, 0.6, 0.1, 0, 0, 0], [0.1, 0.3, 0.6, 0, 0, 0]],
        [[0.1, 0.2, 0.7, 0, 0, 0], NAN],
    ], dtype=np.float32)                                   # (agents=3, clips=2, 6)
    label = np.array([0, 1])
    assert agreement_mask(probs, label, top_k=1, rule="all").tolist() == [False, False]
    assert agreement_mask(probs, label, top_k=2, rule="all").tolist() == [False, True]
    # clip 0: label 0 is in the top-2 of agents 0 and 1 (2 of 3) -> majority
    assert agreement_mask(probs, label, top_k=2, rule="majority").tolist() == [True, True]
    assert agreement_mask(probs, label, top_k=1, rule="majority").tolist() == [False, False]
    empty = np.full((2, 1, 6), np.nan, dtype=np.float32)
    assert agreement_mask(empty, np.array([0]), 6, "all").tolist() == [False]


def test_thresholds_confidence_and_cap():
    thresholds = class_thresholds(0.9, {"surprise": 0.6})
    np.testing.assert_allclose(thresholds, [0.9, 0.9, 0.9, 0.9, 0.9, 0.6])
    combined = np.array([[0.95, 0.05, 0, 0, 0, 0], [0.85, 0.15, 0, 0, 0, 0], [0.3, 0, 0, 0, 0, 0.7],
                         [0.92, 0.08, 0, 0, 0, 0]], dtype=np.float32)
    kept = confidence_mask(combined, thresholds)
    assert kept.tolist() == [True, False, True, True]
    capped = cap_per_class(combined, kept, np.array([1, 0, 0, 0, 0, 5]))
    assert capped.tolist() == [True, False, True, False]


def test_select_pseudo_labels_end_to_end():
    probs = np.array([
        [[0.5, 0, 0, 0.5, 0, 0], [0, 0.5, 0.5, 0, 0, 0], [0.5, 0, 0, 0.5, 0, 0], NAN],
        [[0.5, 0, 0, 0, 0.5, 0], [0, 0, 0.5, 0, 0, 0.5], [0.9, 0.1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
    ], dtype=np.float32)
    names = ["a", "b", "c", "d"]
    cfg = FilterConfig(threshold=0.9, soft=False, weight=0.5)
    pseudo = select_pseudo_labels(probs, names, cfg, labelled_counts=np.array([10, 10, 10, 10, 10, 1]))
    # d has one agent only (min_agents=2); a, b, c pass agreement (top-2) and confidence
    assert pseudo.names == ["a", "b", "c"]
    assert pseudo.labels.tolist() == [0, 2, 0]
    assert pseudo.counts() == {"neutral": 2, "angry": 0, "happy": 1, "sad": 0, "worried": 0, "surprise": 0}
    np.testing.assert_allclose(pseudo.targets, np.eye(6)[[0, 2, 0]])
    np.testing.assert_allclose(pseudo.weights, 0.5 * pseudo.confidence)
    capped = select_pseudo_labels(probs, names, FilterConfig(threshold=0.9, max_ratio=0.1),
                                  labelled_counts=np.array([10, 10, 10, 10, 10, 1]))
    # ceil(0.1 * 10) = 1 neutral is kept: c, whose product is surer (0.45 against 0.25 for a)
    assert capped.names == ["b", "c"]


def test_filter_config_checks():
    with pytest.raises(ValueError, match="class_thresholds: unknown label"):
        FilterConfig(class_thresholds={"fear": 0.5})
    with pytest.raises(ValueError, match="threshold for threshold is 1.5"):
        FilterConfig(threshold=1.5)
    with pytest.raises(ValueError, match="agree_top_k=0"):
        FilterConfig(agree_top_k=0)
