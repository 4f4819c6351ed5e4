import numpy as np
import pytest

from teacher.store import AgentStore


def test_store_appends_reads_and_dedups(tmp_path):
    store = AgentStore(tmp_path / "agents")
    assert store.agents() == [] and store.done("audio") == set()
    p1 = np.eye(6, dtype=np.float32)[[0, 1]]
    store.append("audio", ["a", "b"], p1)
    store.append("audio", ["c"], np.eye(6, dtype=np.float32)[[5]])
    store.append("audio", ["b"], np.eye(6, dtype=np.float32)[[3]])   # a duplicate never wins over the first
    names, probs = store.read("audio")
    assert names == ["a", "b", "c"]
    assert probs.argmax(1).tolist() == [0, 1, 5]
    assert sorted(p.name for p in (tmp_path / "agents" / "audio").iterdir()) == [
        "part-00000000.npz", "part-00000001.npz", "part-00000002.npz"]
    matrix = store.matrix(["audio", "video"], ["c", "x", "a"])
    assert matrix.shape == (2, 3, 6)
    assert matrix[0, 0].argmax() == 5 and np.isnan(matrix[0, 1]).all() and np.isnan(matrix[1]).all()


def test_store_meta_must_match_and_shapes_are_checked(tmp_path):
    store = AgentStore(tmp_path)
    store.write_meta("text", {"C": 0.5})
    store.write_meta("text", {"C": 0.5})
    with pytest.raises(ValueError, match="was stored with other settings"):
        store.write_meta("text", {"C": 1.0})
    with pytest.raises(ValueError, match=r"probs of shape \(2, 5\) for 2 names"):
        store.append("text", ["a", "b"], np.zeros((2, 5)))
    with pytest.raises(ValueError, match="not safe as a file name"):
        store.append("../x", ["a"], np.zeros((1, 6)))


def test_store_keeps_each_fold_models_probabilities(tmp_path):
    store = AgentStore(tmp_path)
    rng = np.random.default_rng(0)
    fold_probs = rng.dirichlet(np.ones(6), size=(4, 3)).astype(np.float32)             # (clips, folds, 6)
    store.append("audio", ["a", "b"], fold_probs[:2, 0], fold_probs[:2])
    store.append("audio", ["c", "d"], fold_probs[2:, 0], fold_probs[2:])
    names, read = store.read_folds("audio")
    assert names == ["a", "b", "c", "d"] and np.array_equal(read, fold_probs)
    matrix = store.matrix_folds(["audio"], ["d", "x", "a"], folds=3)                  # (agents, clips, folds, 6)
    assert np.array_equal(matrix[0, 0], fold_probs[3]) and np.isnan(matrix[0, 1]).all()
    # an agent that saw no label stores one probability per clip: every fold gets it
    store.append("zero", ["a"], fold_probs[:1, 0])
    assert store.read_folds("zero") is None
    assert np.array_equal(store.matrix_folds(["zero"], ["a"], folds=3)[0, 0], np.repeat(fold_probs[:1, 0], 3, axis=0))
    with pytest.raises(ValueError, match="3 fold models, the run has 5 folds"):
        store.matrix_folds(["audio"], ["a"], folds=5)
    with pytest.raises(ValueError, match=r"fold_probs of shape \(2, 6\) for 2 names"):
        store.append("audio", ["e", "f"], fold_probs[:2, 0], fold_probs[:2, 0])
    store.write_meta("audio", {"labelled_scores": "out_of_fold"})
    assert store.read_meta("audio") == {"labelled_scores": "out_of_fold"} and store.read_meta("none") is None
