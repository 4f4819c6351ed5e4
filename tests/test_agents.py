import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clips.labels import LABELS
from features import FeatureSet
from teacher.agents import build_agent
from teacher.spec import AgentContext, AgentSpec, default_agents


def _features(n_per_class: int = 20, seed: int = 0):
    """Audio separates classes {0,1,2} from {3,4,5} perfectly; text carries noise; some text is missing."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(6), n_per_class)
    audio = rng.normal(size=(len(y), 4)).astype(np.float32)
    audio[:, 0] += np.where(y < 3, -4.0, 4.0)
    audio[:, 1] += 6.0 * (y % 3)
    text = rng.normal(size=(len(y), 3)).astype(np.float32)
    masks = np.ones((len(y), 2), dtype=bool)
    masks[::7, 1] = False
    text[~masks[:, 1]] = 0.0
    names = [f"c{i:03d}" for i in range(len(y))]
    return FeatureSet(names=names, blocks=[audio, text], masks=masks, extractors=["egemaps-x", "e5-y"],
                      modalities=["audio", "text"]), y


def test_feature_agent_out_of_fold_and_missing_rows():
    features, y = _features()
    labelled = {n: LABELS[c] for n, c in zip(features.names[:90], y[:90], strict=True)}
    labelled.update({n: LABELS[c] for n, c in zip(features.names[100:], y[100:], strict=True)})
    context = AgentContext(features=features, labels=labelled)
    audio = build_agent(AgentSpec(name="audio", modality="audio"), context)
    probs = audio.score(features.names + ["unknown"])
    assert probs.shape == (121, 6)
    np.testing.assert_allclose(probs[:120].sum(1), 1.0, rtol=1e-5)
    assert np.isnan(probs[120]).all()
    accuracy = (probs[:120].argmax(1) == y).mean()
    assert accuracy > 0.9
    # one model per fold of the assignment: fold k's model is fitted on the labelled clips outside fold k
    rows = np.r_[0:90, 100:120]
    fold_of = audio.folds.of(features.names)
    fold_probs = audio.score_folds(features.names)                                   # (120, 5, 6)
    for k in range(5):
        train = rows[fold_of[rows] != k]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
        model.fit(features.blocks[0][train], y[train])
        np.testing.assert_allclose(fold_probs[:, k], model.predict_proba(features.blocks[0]), rtol=1e-4, atol=1e-6)
    # a labelled clip gets its own fold's model (out of fold); an unlabelled clip (90..99) the mean of the folds
    np.testing.assert_allclose(probs[rows], fold_probs[rows, fold_of[rows]], rtol=1e-6)
    np.testing.assert_allclose(probs[90:100], fold_probs[90:100].mean(axis=1), rtol=1e-5)
    text = build_agent(AgentSpec(name="text", modality="text"), context)
    text_probs = text.score(features.names)
    assert np.isnan(text_probs[::7]).all() and not np.isnan(text_probs[1]).any()
    assert audio.settings() == {"kind": "features", "modality": "audio", "C": 0.5, "folds": 5, "fold_seed": 0,
                                "extractors": ["egemaps-x"]}


def test_fold_k_models_never_see_fold_k_labels():
    """Relabelling fold k's clips leaves every prediction of the fold-k model unchanged, and changes the others."""
    from clips.folds import assign_folds

    features, y = _features()
    labels = {n: LABELS[c] for n, c in zip(features.names, y, strict=True)}
    folds = assign_folds(labels, 4, 0)
    base = build_agent(AgentSpec(name="audio", modality="audio"), AgentContext(features, labels, folds=folds))
    for k in range(4):
        relabelled = {n: LABELS[(LABELS.index(lb) + 1) % 6] if folds.of([n])[0] == k else lb
                      for n, lb in labels.items()}
        agent = build_agent(AgentSpec(name="audio", modality="audio"), AgentContext(features, relabelled, folds=folds))
        mine, theirs = agent.score_folds(features.names), base.score_folds(features.names)
        np.testing.assert_array_equal(mine[:, k], theirs[:, k])
        others = [j for j in range(4) if j != k]
        assert not np.allclose(mine[:, others], theirs[:, others])


def test_an_agent_without_labelled_evidence_says_so():
    from teacher.spec import NoLabelledEvidence

    features, y = _features()
    features.masks[:, 1] = False                                                 # no clip has text
    context = AgentContext(features=features, labels={n: LABELS[c] for n, c in zip(features.names, y, strict=True)})
    with pytest.raises(NoLabelledEvidence, match="agent 'text': 0 labelled clip"):
        build_agent(AgentSpec(name="text", modality="text"), context)


def test_agent_spec_checks_and_defaults():
    assert [a.name for a in default_agents()] == ["audio", "visual", "text"]
    with pytest.raises(ValueError, match="needs `modality`"):
        AgentSpec(name="a")
    with pytest.raises(ValueError, match="kind 'gpt'"):
        AgentSpec(name="a", kind="gpt", modality="audio")
    features, y = _features()
    context = AgentContext(features=features, labels={n: LABELS[c] for n, c in zip(features.names, y, strict=True)})
    with pytest.raises(ValueError, match="no extractor of modality 'visual'"):
        build_agent(AgentSpec(name="v", modality="visual"), context)
