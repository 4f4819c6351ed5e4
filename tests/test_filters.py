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
    cfg = FilterConfig(mask="fixed", threshold=0.9, soft=False, weight=0.5)
    pseudo = select_pseudo_labels(probs, names, cfg, labelled_counts=np.array([10, 10, 10, 10, 10, 1]))
    # d has one agent only (min_agents=2); a, b, c pass agreement (top-2) and confidence
    assert pseudo.names == ["a", "b", "c"]
    assert pseudo.labels.tolist() == [0, 2, 0]
    assert pseudo.counts() == {"neutral": 2, "angry": 0, "happy": 1, "sad": 0, "worried": 0, "surprise": 0}
    np.testing.assert_allclose(pseudo.targets, np.eye(6)[[0, 2, 0]])
    np.testing.assert_allclose(pseudo.weights, 0.5 * pseudo.confidence)
    capped = select_pseudo_labels(probs, names, FilterConfig(mask="fixed", threshold=0.9, max_ratio=0.1),
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


def test_weighted_combination_and_agent_weights():
    from pseudo.filters import agent_weights, combine_weighted_mean, combine_weighted_product

    weights = agent_weights(np.array([0.2, 0.6]))
    np.testing.assert_allclose(weights, [0.5, 1.5])
    probs = np.array([[[0.8, 0.2, 0, 0, 0, 0], NAN], [[0.2, 0.8, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]],
                     dtype=np.float32)                     # (agents=2, clips=2, 6)
    mean = combine_weighted_mean(probs, weights)
    np.testing.assert_allclose(mean[0, :2], [0.25 * 0.8 + 0.75 * 0.2, 0.25 * 0.2 + 0.75 * 0.8], rtol=1e-6)
    np.testing.assert_allclose(mean[1], [0, 0, 1, 0, 0, 0], atol=1e-6)
    product = combine_weighted_product(probs, weights)
    # 0.8^0.5 * 0.2^1.5 against 0.2^0.5 * 0.8^1.5: 0.0716 / (0.0716 + 0.3200)
    assert product[0, 0] == pytest.approx(0.8**0.5 * 0.2**1.5 / (0.8**0.5 * 0.2**1.5 + 0.2**0.5 * 0.8**1.5), rel=1e-4)
    np.testing.assert_allclose(combine_weighted_product(probs, np.ones(2)), combine_product(probs), rtol=1e-5)


def test_sharpen():
    from pseudo.filters import sharpen

    p = np.array([[0.6, 0.4, 0, 0, 0, 0]])
    sharp = sharpen(p, 0.5)
    assert sharp[0, 0] == pytest.approx(0.36 / (0.36 + 0.16 + 4e-12), rel=1e-6)
    np.testing.assert_allclose(sharpen(p, 1.0)[0, :2], [0.6, 0.4], rtol=1e-5)
    with pytest.raises(ValueError, match="sharpen"):
        sharpen(p, 0)


def test_freematch_thresholds_by_hand():
    from pseudo.filters import freematch_thresholds

    combined = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.7, 0.3, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0],
                         [0.4, 0, 0, 0, 0, 0.6]])
    # tau = mean top prob = (0.9 + 0.7 + 0.8 + 0.6) / 4 = 0.75; class means 0.55, 0.3, 0, 0, 0, 0.15
    expected = np.array([0.55, 0.3, 0, 0, 0, 0.15]) / 0.55 * 0.75
    np.testing.assert_allclose(freematch_thresholds(combined), expected, rtol=1e-5)
    np.testing.assert_allclose(freematch_thresholds(combined, scale=1.2), expected * 1.2, rtol=1e-5)


def test_flexmatch_thresholds_by_hand():
    from pseudo.filters import flexmatch_thresholds

    combined = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.95, 0.05, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0],
                         [0.4, 0.6, 0, 0, 0, 0]])
    # above tau = 0.8: two neutral, one angry -> beta = 1, 0.5, 0...; M(b) = b / (2 - b), never below tau / 2
    np.testing.assert_allclose(flexmatch_thresholds(combined, 0.8), [0.8, 0.4, 0.4, 0.4, 0.4, 0.4], rtol=1e-6)
    # five confident neutral, four confident angry: beta_angry = 0.8, M = 0.8 / 1.2, above the floor
    many = np.array([[0.9, 0.1, 0, 0, 0, 0]] * 5 + [[0.1, 0.9, 0, 0, 0, 0]] * 4)
    np.testing.assert_allclose(flexmatch_thresholds(many, 0.8), [0.8, 0.8 * 0.8 / 1.2, 0.4, 0.4, 0.4, 0.4], rtol=1e-6)
    assert (flexmatch_thresholds(np.full((5, 6), 1 / 6), 0.9) > 0).all()  # no clip confident: still no 0 bar


def test_class_topk_quota_with_cap():
    from pseudo.filters import class_topk_caps

    caps = class_topk_caps(np.array([60, 20, 10, 5, 4, 1]), clips=10, fraction=0.5)
    # ceil(0.5 * 10 * prior): 3, 1, 0.5 -> 1, 0.25 -> 1, 0.2 -> 1, 0.05 -> 1
    assert caps.tolist() == [3, 1, 1, 1, 1, 1]
    combined = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.8, 0.2, 0, 0, 0, 0], [0.7, 0.3, 0, 0, 0, 0],
                         [0.6, 0.4, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0.3, 0.7]])
    probs = combined[None].astype(np.float32)
    cfg = FilterConfig(mask="class_topk", topk_fraction=0.5, target_precision=None, min_agents=1, max_ratio=None)
    from pseudo.select import keep_mask

    kept = keep_mask(probs, combined, cfg, labelled_counts=np.array([60, 20, 10, 5, 4, 1]))
    # quotas for 7 clips: ceil(2.1) = 3 neutral, ceil(0.7) = 1 angry, ceil(0.035) = 1 surprise
    assert kept.tolist() == [True, True, True, False, True, False, True]
    with pytest.raises(ValueError, match="labelled_counts"):
        keep_mask(probs, combined, cfg)


def _toy_agents(n: int = 120, seed: int = 0):
    """Two agents' probabilities of n labelled clips (70% right, confident when right) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), n // 6)
    agents = []
    for _ in range(2):
        noisy = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 6, n))
        confidence = np.where(noisy == labels, rng.uniform(0.6, 1.0, n), rng.uniform(0.2, 0.7, n))
        probs = np.full((n, 6), 0.0)
        probs[np.arange(n), noisy] = confidence
        probs += (1 - probs.sum(axis=1, keepdims=True)) / 6
        agents.append(probs)
    return np.stack(agents).astype(np.float32), labels


def test_target_thresholds_reach_the_precision_on_the_clips_they_were_chosen_on():
    from pseudo.measure import Calibration, target_thresholds

    probs, labels = _toy_agents()
    cfg = FilterConfig(calibrate=False, target_precision=0.95, max_ratio=None)
    cal = Calibration(temperatures=np.ones(2, np.float32), agent_scores=np.ones(2, np.float32))
    thresholds = target_thresholds(probs, labels, cfg, cal, 0.95)
    from pseudo.select import combine_agents, gate_mask

    combined = combine_agents(probs, cfg)
    kept = gate_mask(probs, combined, cfg) & (combined.max(1) >= thresholds[combined.argmax(1)])
    assert kept.sum() > 0
    for c in range(6):
        mine = kept & (combined.argmax(1) == c)
        assert not mine.any() or (labels[mine] == c).mean() >= 0.95
    assert FilterConfig().mask == "class_topk" and FilterConfig().target_precision is None
    with pytest.raises(ValueError, match="mask='nope'.*topk_fraction=2"):
        FilterConfig(mask="nope", topk_fraction=2)


def test_the_measured_filter_is_the_applied_filter():
    """With the pool of fold k made of fold k's own labelled clips, the held-out clips kept are exactly the pool
    clips kept, for every mask: same calibration, same gate, same quota and cap rules."""
    from clips.folds import stratified_folds
    from pseudo.measure import cross_fit, fold_calibrations

    probs, labels = _toy_agents(n=150)
    fold_of = stratified_folds(labels, 5, 0)
    calibrations = fold_calibrations(probs, labels, fold_of)
    for cfg in (FilterConfig(), FilterConfig(mask="fixed", threshold=0.5), FilterConfig(mask="freematch"),
                FilterConfig(mask="flexmatch", threshold=0.6), FilterConfig(mask="class_topk", max_ratio=0.1),
                FilterConfig(target_precision=0.9)):
        for k in range(5):
            held = np.flatnonzero(fold_of == k)
            pool = np.full((2, len(held), 5, 6), np.nan, dtype=np.float32)
            pool[:, :, k] = probs[:, held]
            fit = cross_fit(probs, labels, fold_of, pool, [f"c{i}" for i in held], cfg, calibrations)
            from pseudo.calibration import apply_priors
            from pseudo.select import combine_agents, gate_mask

            cal = calibrations[k]
            corrected = apply_priors(probs[:, held], cal.priors)          # the filter sees prior-corrected scores
            combined = combine_agents(corrected, cfg, cal.temperatures, cal.agent_scores)
            applied = fit.thresholds[k][combined.argmax(1)]
            on_held = gate_mask(corrected, combined, cfg) & (combined.max(1) >= applied)
            assert np.flatnonzero(on_held).tolist() == fit.pseudo[k].index.tolist(), (cfg, k)
            assert on_held.tolist() == fit.held_kept[held].tolist(), (cfg, k)


def test_fold_k_pseudo_labels_read_only_the_fold_k_agent_models():
    from clips.folds import stratified_folds
    from pseudo.measure import cross_fit, fold_calibrations

    probs, labels = _toy_agents(n=120)
    fold_of = stratified_folds(labels, 4, 0)
    calibrations = fold_calibrations(probs, labels, fold_of)
    rng = np.random.default_rng(1)
    pool = rng.dirichlet(np.full(6, 0.3), size=(2, 200, 4)).astype(np.float32)       # (agents, pool, K, 6)
    names = [f"p{i}" for i in range(200)]
    fit = cross_fit(probs, labels, fold_of, pool, names, FilterConfig(), calibrations)
    for k in range(4):
        changed = pool.copy()
        changed[:, :, [j for j in range(4) if j != k]] = rng.dirichlet(np.full(6, 0.3), size=(2, 200, 3))
        again = cross_fit(probs, labels, fold_of, changed, names, FilterConfig(), calibrations)
        assert again.pseudo[k].names == fit.pseudo[k].names and len(fit.pseudo[k].names) > 0
        np.testing.assert_array_equal(again.pseudo[k].targets, fit.pseudo[k].targets)
    # a filter without the label prior refuses calibrations fitted with it, and the reverse
    with pytest.raises(ValueError, match=r"filter prior=False but the calibrations were fitted with the label prior"):
        cross_fit(probs, labels, fold_of, pool, names, FilterConfig(prior=False), calibrations)
    plain = fold_calibrations(probs, labels, fold_of, prior=False)
    with pytest.raises(ValueError, match=r"filter prior=True but the calibrations were fitted without"):
        cross_fit(probs, labels, fold_of, pool, names, FilterConfig(), plain)
    assert cross_fit(probs, labels, fold_of, pool, names, FilterConfig(prior=False), plain).point.kept > 0


def test_threshold_works_under_every_mask():
    from pseudo.select import keep_mask

    combined = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.55, 0.45, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0],
                         [0.3, 0.7, 0, 0, 0, 0]], dtype=np.float32)
    probs = combined[None]
    counts = np.array([10, 10, 1, 1, 1, 1])
    def kept(mask: str, threshold: float) -> list[bool]:
        cfg = FilterConfig(mask=mask, min_agents=1, threshold=threshold, max_ratio=None, topk_fraction=1.0)
        return keep_mask(probs, combined, cfg, counts).tolist()

    for mask in ("fixed", "flexmatch", "class_topk"):
        assert kept(mask, 0.5) == [True, True, True, True], mask
        assert kept(mask, 0.85) == [True, False, True, False], mask
    # FreeMatch's own bar here is the mean top probability, 0.7625: a floor below it changes nothing, above it bites
    assert kept("freematch", 0.5) == [True, False, True, False]
    assert kept("freematch", 0.95) == [False, False, False, False]
    # class_topk with a floor of 0.8: the quota would keep 2 per class, the floor leaves the two confident clips
    floor = keep_mask(probs, combined, FilterConfig(mask="class_topk", min_agents=1, threshold=0.8, max_ratio=None,
                                                    topk_fraction=1.0), counts)
    assert floor.tolist() == [True, False, True, False]


def test_one_agent_keeps_pseudo_labels_by_default_and_none_kept_is_explained():
    from pseudo.select import combine_agents, select_pseudo_labels, why_none_kept

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(6, 0.2), size=(1, 60)).astype(np.float32)           # one agent
    pseudo = select_pseudo_labels(probs, [f"c{i}" for i in range(60)], FilterConfig(),
                                  labelled_counts=np.full(6, 10))
    assert len(pseudo.names) > 0
    strict = FilterConfig(mask="fixed", threshold=1.0)
    assert len(select_pseudo_labels(probs, [f"c{i}" for i in range(60)], strict).names) == 0
    why = why_none_kept(probs, combine_agents(probs, strict), strict)
    assert why.startswith("1 agent(s); 60 of 60 clips have >= 1 agent(s) with evidence, 60 of those agree")
    assert "mask=fixed, threshold=1.0" in why


def test_wilson_interval_by_hand():
    from pseudo.filters import wilson_interval

    low, high = wilson_interval(8, 10)
    assert round(low, 4) == 0.4902 and round(high, 4) == 0.9433
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # nan
    assert wilson_interval(5, 5)[1] == 1.0
