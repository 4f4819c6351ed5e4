"""Tests for the fusion student: masking, modality dropout, the loss, CV folds, training, save/load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clips.labels import NUM_LABELS
from student.fusion import AttentionFusion, drop_modalities
from student.train import (
    StudentConfig,
    batch_rows,
    fold_rows,
    load_student,
    predict_student,
    save_student,
    soft_cross_entropy,
    steps_per_epoch,
    train_student,
)

DIMS = [5, 8, 3]
SMALL = StudentConfig(
    hidden=16, dropout=0.1, modality_dropout=0.2, lr=3e-3, epochs=15, batch_size=16, folds=3, device="cpu"
)


def _model(seed: int = 0, linear_path: bool = False) -> AttentionFusion:
    torch.manual_seed(seed)
    return AttentionFusion(DIMS, hidden=16, dropout=0.3, modality_dropout=0.5, linear_path=linear_path).eval()


def _inputs(rows: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(rows, d, generator=generator) for d in DIMS]
    masks = torch.rand(rows, len(DIMS), generator=generator) > 0.4
    return blocks, masks


@pytest.mark.parametrize("linear_path", [False, True])
def test_missing_modality_values_do_not_change_the_output(linear_path: bool) -> None:
    model = _model(linear_path=linear_path)
    blocks, masks = _inputs(64)
    masks[0] = torch.tensor([True, False, False])
    before = model(blocks, masks)
    perturbed = [torch.where(masks[:, m : m + 1], b, torch.randn_like(b) * 1e6) for m, b in enumerate(blocks)]
    perturbed[1][0] = float("nan")
    after = model(perturbed, masks)
    assert torch.equal(before, after)


@pytest.mark.parametrize("linear_path", [False, True])
def test_a_row_with_every_modality_missing_gets_the_bias(linear_path: bool) -> None:
    model = _model(linear_path=linear_path)
    blocks, masks = _inputs(4)
    masks[2] = False
    blocks[0][2] = float("nan")
    logits = model(blocks, masks)
    assert torch.isfinite(logits).all()
    bias = model.classifier.bias + (model.linear.bias if linear_path else 0.0)
    assert torch.equal(logits[2], bias.detach())
    model.train()
    assert torch.isfinite(model(blocks, masks)).all()


def test_the_linear_path_adds_a_linear_model_of_the_standardised_inputs() -> None:
    with_linear, without = _model(linear_path=True), _model(linear_path=False)
    blocks, masks = _inputs(6)
    with_linear.fit_normalisation(blocks, masks)
    without.load_state_dict({k: v for k, v in with_linear.state_dict().items() if not k.startswith("linear.")})
    inputs = torch.cat([torch.where(masks[:, m : m + 1], (b - n.mean) / n.std, 0.0)
                        for m, (b, n) in enumerate(zip(blocks, with_linear.norms, strict=True))], dim=1)
    expected = without(blocks, masks) + inputs @ with_linear.linear.weight.T + with_linear.linear.bias
    torch.testing.assert_close(with_linear(blocks, masks), expected)
    assert with_linear.linear.in_features == sum(DIMS) and without.linear is None


def test_modality_dropout_never_drops_every_modality_of_a_row() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(5000, 3, generator=generator) > 0.3
    masks[:10] = False
    kept = drop_modalities(masks, p=0.9, generator=generator)
    assert not (kept & ~masks).any()
    assert torch.equal(kept.any(dim=1), masks.any(dim=1))
    assert (kept.sum(dim=1) < masks.sum(dim=1)).any()
    assert torch.equal(drop_modalities(masks, p=0.0, generator=generator), masks)


def test_fit_normalisation_uses_present_training_rows_only() -> None:
    model = _model()
    blocks, masks = _inputs(100)
    blocks[0][~masks[:, 0]] = float("nan")
    rows = torch.arange(0, 100, 2)
    model.fit_normalisation(blocks, masks, rows=rows, chunk=7)
    for m, block in enumerate(blocks):
        present = block[rows][masks[rows, m]].double()
        assert torch.allclose(model.norms[m].mean.double(), present.mean(0), atol=1e-6)
        assert torch.allclose(model.norms[m].std.double(), present.std(0, unbiased=False), atol=1e-6)
    assert "norms.0.mean" in model.state_dict()


def test_soft_cross_entropy_ignores_zero_weight_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, NUM_LABELS, generator=generator, requires_grad=True)
    targets = torch.softmax(torch.randn(6, NUM_LABELS, generator=generator), dim=1)
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0, 0.0])
    loss = soft_cross_entropy(logits, targets, weights)
    loss.backward()
    assert logits.grad is not None
    grad_with, last_row_grad = logits.grad[:5].clone(), logits.grad[5].clone()
    logits.grad = None
    soft_cross_entropy(logits[:5], targets[:5], weights[:5]).backward()
    assert torch.equal(loss, soft_cross_entropy(logits[:5], targets[:5], weights[:5]))
    assert torch.allclose(grad_with, logits.grad[:5])
    assert torch.equal(last_row_grad, torch.zeros(NUM_LABELS))
    # weighted mean of -sum t log p, by hand
    by_hand = (weights * -(targets * torch.log_softmax(logits, 1)).sum(1)).sum() / weights.sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    hard = torch.tensor([0, 1, 2, 3, 4])
    assert soft_cross_entropy(logits[:5], F.one_hot(hard, NUM_LABELS).float(), torch.ones(5)).item() == (
        pytest.approx(F.cross_entropy(logits[:5], hard).item(), rel=1e-6)
    )


def _problem(labelled: int = 240, pseudo: int = 120, seed: int = 0):
    """Separable classes: each block is a class centre plus noise; pseudo rows get soft targets."""
    rng = np.random.default_rng(seed)
    rows = labelled + pseudo
    classes = np.arange(rows) % NUM_LABELS
    rng.shuffle(classes)
    blocks = []
    for dim in DIMS:
        centres = rng.normal(0, 2.0, size=(NUM_LABELS, dim)).astype(np.float32)
        blocks.append(centres[classes] + rng.standard_normal((rows, dim), dtype=np.float32))
    masks = rng.random((rows, len(DIMS))) > 0.1
    targets = np.eye(NUM_LABELS, dtype=np.float32)[classes]
    targets[labelled:] = 0.8 * targets[labelled:] + 0.2 / NUM_LABELS
    weights = np.ones(rows, dtype=np.float32)
    weights[labelled:] = 0.5
    is_labelled = np.arange(rows) < labelled
    return blocks, masks, targets, weights, is_labelled


def test_fold_rows_keep_pseudo_rows_out_of_validation() -> None:
    blocks, masks, targets, weights, is_labelled = _problem()
    weights[3] = 0.0  # a labelled row with weight 0 is validated on but never trained on
    weights[-1] = 0.0  # a pseudo row with weight 0 is never used
    fold_of = np.full(len(targets), -1)
    fold_of[is_labelled] = np.arange(is_labelled.sum()) % 3
    fold_of[-10:-1] = 1  # pseudo rows that only fold 1 trains on (made by teachers that never saw fold 1)
    splits = fold_rows(targets, weights, is_labelled, fold_of, inner_val=0.2, seed=0)
    labelled, pseudo = np.flatnonzero(is_labelled), np.flatnonzero(~is_labelled)
    all_val = np.concatenate([val for _, _, val in splits])
    assert sorted(all_val.tolist()) == labelled.tolist()
    for k, (train, inner, val) in enumerate(splits):
        assert is_labelled[val].all() and (fold_of[val] == k).all()
        assert is_labelled[inner].all() and not np.intersect1d(inner, val).size
        assert not np.intersect1d(train, val).size and not np.intersect1d(train, inner).size
        # about a fifth of the fold's labelled training rows choose the epoch
        assert abs(len(inner) - 0.2 * (len(labelled) - len(val) - (3 not in val))) <= 6
        fold_pseudo = set(pseudo[:-10].tolist()) | (set(pseudo[-10:-1].tolist()) if k == 1 else set())
        expected = (set(labelled.tolist()) - set(val.tolist()) - set(inner.tolist()) - {3}) | fold_pseudo
        assert set(train.tolist()) == expected and len(train) == len(expected)


def test_the_reported_fold_never_chooses_the_epoch() -> None:
    """Relabelling fold 0's validation rows changes nothing fold 0 trained or chose: only its reported score."""
    blocks, masks, targets, weights, is_labelled = _problem(labelled=120, pseudo=0)
    fold_of = np.arange(120) % 3
    cfg = dataclasses.replace(SMALL, epochs=6)
    result = train_student(blocks, masks, targets, weights, is_labelled, cfg, progress=False, fold_of=fold_of)
    flipped = targets.copy()
    flipped[fold_of == 0] = np.roll(flipped[fold_of == 0], 1, axis=1)
    again = train_student(blocks, masks, flipped, weights, is_labelled, cfg, progress=False, fold_of=fold_of)
    assert again.folds[0].best_epoch == result.folds[0].best_epoch
    assert again.folds[0].history == result.folds[0].history
    assert all(torch.equal(again.folds[0].state[k], result.folds[0].state[k]) for k in result.folds[0].state)
    assert again.folds[0].val_waf < result.folds[0].val_waf


def test_batch_grows_with_many_pseudo_labelled_rows() -> None:
    cfg = StudentConfig(batch_size=32)
    assert batch_rows(cfg, 561) == 32 and batch_rows(cfg, 20) == 20
    assert batch_rows(cfg, 119_000) == 117                  # ceil(119,000 / 1,024)
    assert steps_per_epoch(cfg, n_train=119_000, n_labelled_train=4024) == 35   # about 4,024 rows an epoch
    assert batch_rows(dataclasses.replace(cfg, batch_growth=None), 119_000) == 32


def test_steps_per_epoch_follows_the_labelled_rows_unless_capped() -> None:
    cfg = StudentConfig(batch_size=32, batch_growth=None)
    assert steps_per_epoch(cfg, n_train=119_000, n_labelled_train=4024) == 126
    assert steps_per_epoch(dataclasses.replace(cfg, max_steps_per_epoch=500), 119_000, 4024) == 500
    assert steps_per_epoch(dataclasses.replace(cfg, max_steps_per_epoch=10**6), 119_000, 4024) == 3719
    assert steps_per_epoch(cfg, n_train=10, n_labelled_train=10) == 1


def test_config_checks_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"dropout=1.0: must be in \[0, 1\)"):
        StudentConfig(dropout=1.0)
    with pytest.raises(ValueError, match="folds=1: cross-validation needs at least 2"):
        StudentConfig(folds=1)
    with pytest.raises(ValueError, match="device='tpu'"):
        StudentConfig(device="tpu")


@pytest.fixture(scope="module")
def trained():
    problem = _problem()
    return problem, train_student(*problem, cfg=SMALL, progress=False)


def test_training_learns_a_separable_problem(trained) -> None:
    (blocks, masks, targets, weights, is_labelled), result = trained
    assert result.scores.waf > 0.9
    assert result.oof_probs.shape == (is_labelled.sum(), NUM_LABELS)
    assert np.allclose(result.oof_probs.sum(1), 1, atol=1e-5)
    assert len(result.folds) == 3
    for fold in result.folds:
        assert is_labelled[fold.val_rows].all()
        assert fold.best_score == max(fold.history) and fold.history[fold.best_epoch] == fold.best_score


def test_training_is_deterministic_for_a_seed(trained) -> None:
    problem, result = trained
    again = train_student(*problem, cfg=SMALL, progress=False)
    assert np.array_equal(result.oof_probs, again.oof_probs)
    for a, b in zip(result.folds, again.folds, strict=True):
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    other = train_student(*problem, cfg=dataclasses.replace(SMALL, seed=1), progress=False)
    assert not np.array_equal(result.oof_probs, other.oof_probs)


def test_a_zero_weight_garbage_row_changes_nothing(trained) -> None:
    (blocks, masks, targets, weights, is_labelled), result = trained
    garbage = np.random.default_rng(1).dirichlet(np.ones(NUM_LABELS)).astype(np.float32)
    with_garbage = train_student(
        [np.vstack([b, np.full((1, b.shape[1]), 1e30, np.float32)]) for b in blocks],
        np.vstack([masks, np.ones((1, len(DIMS)), bool)]),
        np.vstack([targets, garbage]),
        np.append(weights, np.float32(0.0)),
        np.append(is_labelled, False),
        SMALL,
        progress=False,
    )
    assert np.array_equal(result.oof_probs, with_garbage.oof_probs)
    for a, b in zip(result.folds, with_garbage.folds, strict=True):
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path: Path) -> None:
    (blocks, masks, *_), result = trained
    save_student(result, tmp_path / "student")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == [
        "fold_0.safetensors", "fold_1.safetensors", "fold_2.safetensors", "oof.safetensors", "student.json",
    ]
    loaded = load_student(tmp_path / "student")
    assert loaded.config == result.config and loaded.dims == result.dims
    assert loaded.scores.waf == result.scores.waf
    assert np.array_equal(loaded.oof_probs, result.oof_probs)
    assert [f.val_rows.tolist() for f in loaded.folds] == [f.val_rows.tolist() for f in result.folds]
    probs = predict_student(result, blocks, masks, batch_size=50)
    assert probs.shape == (len(masks), NUM_LABELS)
    assert np.array_equal(probs, predict_student(loaded, blocks, masks, batch_size=50))


def test_predict_student_rejects_blocks_of_the_wrong_size(trained) -> None:
    (blocks, masks, *_), result = trained
    with pytest.raises(ValueError, match=r"blocks of sizes \[5, 8, 3\]"):
        predict_student(result, [blocks[0], blocks[0], blocks[2]], masks)


def test_load_student_names_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="student.json not found"):
        load_student(tmp_path)


def test_patience_stops_a_fold_after_epochs_without_improvement() -> None:
    cfg = dataclasses.replace(SMALL, epochs=40, patience=2)
    result = train_student(*_problem(labelled=120, pseudo=0), cfg=cfg, progress=False)
    for fold in result.folds:
        # it ran until two epochs in a row failed to beat the best, or to the last epoch
        assert len(fold.history) == 40 or len(fold.history) == fold.best_epoch + 3
        assert max(fold.history[fold.best_epoch + 1:], default=-np.inf) <= fold.best_score
    assert any(len(fold.history) < 40 for fold in result.folds)
    with pytest.raises(ValueError, match="patience=0: must be at least 1"):
        StudentConfig(patience=0)


def test_the_linear_member_gives_sklearns_probabilities_and_never_an_absent_class() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from student.fusion import LogisticMember
    from student.linear import MAX_ITER, TOL, fit_member, linear_design

    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(60, d)).astype(np.float32) for d in DIMS]
    masks = rng.random((60, len(DIMS))) > 0.3
    y = rng.integers(0, 4, 60)  # classes 4 and 5 never occur
    x = linear_design(blocks, masks)
    member = LogisticMember(x.shape[1])
    c = fit_member(member, x, y, np.ones(60, np.float32), np.ones(60, bool), seed=0)

    scaler = StandardScaler().fit(x)
    expected = LogisticRegression(C=c, max_iter=MAX_ITER, tol=TOL).fit(scaler.transform(x), y).predict_proba(
        scaler.transform(x))
    tensors = [torch.from_numpy(b) for b in blocks]
    probs = torch.softmax(member(tensors, torch.from_numpy(masks)), dim=1).numpy()
    np.testing.assert_allclose(probs[:, :4], expected, atol=1e-4)
    assert probs[:, 4:].max() < 1e-6 and float(member.fitted) == 1.0
    # the model averages the member's probabilities with the network's
    model = AttentionFusion(DIMS, hidden=16, linear_member=True).eval()
    network = torch.softmax(model(tensors, torch.from_numpy(masks)), dim=1)
    model.member.load_state_dict(member.state_dict())
    torch.testing.assert_close(model.probabilities(tensors, torch.from_numpy(masks)),
                               (network + torch.from_numpy(probs)) / 2, atol=1e-5, rtol=0)


def test_an_unfitted_member_leaves_the_networks_probabilities() -> None:
    model = AttentionFusion(DIMS, hidden=16, linear_member=True).eval()
    blocks, masks = _inputs(5)
    torch.testing.assert_close(model.probabilities(blocks, masks), torch.softmax(model(blocks, masks), dim=1))


def test_with_more_features_than_clips_the_member_is_fitted_exactly_in_the_row_space() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from student.fusion import LogisticMember
    from student.linear import fit_member, row_space

    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 200)).astype(np.float32)
    y = np.arange(30) % 3
    x[:, 0] += y  # some signal, so the weights are not all tiny
    z, basis = row_space(x)
    assert z.shape == (30, 30) and basis.shape == (30, 200)
    np.testing.assert_allclose(z @ basis, x, atol=1e-4)

    member = LogisticMember(200)
    c = fit_member(member, x, y, np.ones(30, np.float32), np.ones(30, bool))
    scaled = StandardScaler().fit_transform(x)
    full = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(scaled, y)
    np.testing.assert_allclose(member.coef[:3].numpy(), full.coef_, atol=2e-3)
    logits = (torch.from_numpy(x) - member.mean) / member.scale @ member.coef.T + member.intercept
    np.testing.assert_allclose(torch.softmax(logits, dim=1)[:, :3].numpy(), full.predict_proba(scaled), atol=2e-3)


def test_the_member_keeps_every_labelled_row_and_samples_the_pseudo_labelled_ones() -> None:
    from student.train import _member_rows

    train_rows, inner_rows = np.arange(100, 160), np.arange(10)
    labelled_train = np.arange(60) < 20                   # 20 labelled training rows, 40 pseudo-labelled
    cfg = dataclasses.replace(SMALL, member_rows=45)
    rows = _member_rows(train_rows, inner_rows, labelled_train, cfg)
    # positions 0-19 labelled, 20-59 pseudo-labelled, 60-69 the inner rows: all 30 labelled + 15 sampled
    assert len(rows) == 45 and set(range(20)) | set(range(60, 70)) <= set(rows.tolist())
    assert np.array_equal(rows, np.sort(rows)) and np.array_equal(rows, _member_rows(train_rows, inner_rows,
                                                                                    labelled_train, cfg))
    assert _member_rows(train_rows, inner_rows, labelled_train, SMALL).tolist() == list(range(70))


def test_the_member_chooses_c_on_the_inner_rows_and_refits_on_every_row() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from student.fusion import LogisticMember
    from student.linear import C_GRID, fit_member

    rng = np.random.default_rng(3)
    y = np.arange(120) % 3
    x = rng.normal(size=(120, 40)).astype(np.float32) + 0.6 * np.eye(40, dtype=np.float32)[y]
    inner = np.arange(120) >= 90
    member = LogisticMember(40)
    c = fit_member(member, x, y, np.ones(120, np.float32), np.ones(120, bool), inner=inner)
    # the C whose fit on the other rows scores best on the inner rows (the first of equals, strongest penalty first)
    scaler = StandardScaler().fit(x[~inner])
    scores = [f1_score(y[inner], LogisticRegression(C=grid_c, max_iter=5000, tol=1e-8)
                       .fit(scaler.transform(x[~inner]), y[~inner]).predict(scaler.transform(x[inner])),
                       average="weighted") for grid_c in sorted(C_GRID)]
    assert max(scores) - scores[sorted(C_GRID).index(c)] <= 0.02
    # and the inner rows decide it: without them the 3-fold CV fallback picks another C on these rows
    assert fit_member(LogisticMember(40), x, y, np.ones(120, np.float32), np.ones(120, bool)) != c
    # then one fit on all 120 rows at that C
    full = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(StandardScaler().fit_transform(x), y)
    np.testing.assert_allclose(member.coef[:3].numpy(), full.coef_, atol=0.02)
    assert float(member.mean.sub(torch.from_numpy(x.mean(0))).abs().max()) < 1e-5
