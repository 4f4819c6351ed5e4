"""The text teacher's label-prior calibration, cross-fitted in-context examples and bf16 weights on CPU, on a tiny
random Qwen2 with the real vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clips.dataset import ClipRef
from clips.folds import FoldAssignment, assign_folds
from clips.labels import LABELS
from features.cache import FeatureSet
from llm.calibration import CONTENT_FREE, prior_correct
from llm.incontext import examples_block
from teacher.agents import build_agent
from teacher.incontext import InContextLLMAgent, eligible_examples, nearest
from teacher.label import labelled_evidence
from teacher.llm_options import LLMAgentOptions
from teacher.spec import AgentContext, AgentSpec

LINES = ["太好了我们成功了，真开心！", "你到底有完没完，烦死了！", "他走了以后，我每天都很难过。",
         "这么晚了他还没回来，我有点担心。", "什么？你说他已经结婚了？", "周末记得去交水电费。",
         "谢谢你的礼物我好喜欢", "我受够了你的谎话，气死我了", "我心里好难受", "万一出了什么事可怎么办"]


@pytest.fixture(scope="module")
def tiny_text(qwen2_tok, tmp_path_factory) -> Path:
    from llm.tiny import save_tiny

    return save_tiny("qwen2_5_text", tmp_path_factory.mktemp("text-teacher") / "tiny", qwen2_tok)


def _spec(model: Path, **extra) -> AgentSpec:
    options = {"model": str(model), "family": "qwen2_5_text", "view": "text", "language": "zh", "device": "cpu",
               "batch_size": 4, **extra}
    return AgentSpec(name="text", kind="llm", options=options)


def _context(labels: dict[str, str], vectors: np.ndarray, names: list[str], fold_of: list[int]) -> AgentContext:
    """10 labelled clips l0..l9 in 2 folds and 2 pool clips p0, p1, with hand-made 'e5' vectors."""
    clips = {n: ClipRef(name=n, path=None, label=labels.get(n), transcript=line) for n, line in
             zip(names, LINES + ["我真是太开心了", "你凭什么这么对我"], strict=True)}
    features = FeatureSet(names=names, blocks=[vectors.astype(np.float32)], masks=np.ones((len(names), 1), bool),
                          extractors=["e5-0123abcd"], modalities=["text"])
    labelled = sorted(labels)
    folds = FoldAssignment(names=tuple(labelled), labels=tuple(labels[n] for n in labelled),
                           fold_of=np.array(fold_of), folds=2, seed=0)
    return AgentContext(features=features, labels=labels, clips=clips, folds=folds)


NAMES = [f"l{i}" for i in range(10)] + ["p0", "p1"]
FOLD_OF = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
VECTORS = np.random.default_rng(0).standard_normal((12, 8))


def test_prior_correct_by_hand() -> None:
    probs = np.array([[0.4, 0.2, 0.1, 0.1, 0.1, 0.1], [np.nan] * 6])
    prior = np.array([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    out = prior_correct(probs, prior)
    expected = np.array([0.8, 2, 1, 1, 1, 1]) / 6.8
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    assert np.isnan(out[1]).all()
    # a line scored exactly like the prior becomes uniform
    np.testing.assert_allclose(prior_correct(prior[None], prior)[0], np.full(6, 1 / 6), rtol=1e-6)
    # with a target prior: probs * target / prior
    target = np.array([0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(prior_correct(prior[None], prior, target)[0], target, rtol=1e-6)


def test_content_free_calibration_divides_by_the_content_free_mean(tiny_text: Path) -> None:
    refs = {f"c{i}": ClipRef(name=f"c{i}", path=None, label=None, transcript=line) for i, line in enumerate(LINES)}
    free = {f"f{i}": ClipRef(name=f"f{i}", path=None, label=None, transcript=line)
            for i, line in enumerate(CONTENT_FREE)}
    context = AgentContext(features=None, labels={}, clips={**refs, **free})
    raw = build_agent(_spec(tiny_text), context)
    probs, prior = raw.score(list(refs)), raw.score(list(free)).mean(0)
    raw.close()
    calibrated = build_agent(_spec(tiny_text, calibration="content_free"), context)
    np.testing.assert_allclose(calibrated.content_free_prior(), prior, atol=1e-6)
    np.testing.assert_allclose(calibrated.score(list(refs)), prior_correct(probs, prior), atol=1e-5)
    # the content-free lines themselves come out near uniform: their mean is exactly so
    np.testing.assert_allclose(calibrated.score(list(free)).mean(0), np.full(6, 1 / 6), atol=0.05)
    assert calibrated.settings()["calibration"] == "content_free"
    calibrated.close()


def test_eligible_and_nearest_by_hand() -> None:
    eligible = eligible_examples(np.array([0, 1, -1, -1]), np.array([0, 1, 2, 0]), exclude=None)
    assert eligible.tolist() == [[False, True, True, False], [True, False, True, True], [True] * 4, [True] * 4]
    assert eligible_examples(np.array([-1]), np.array([0, 1, 2, 0]), exclude=0).tolist() == [[False, True, True,
                                                                                              False]]
    examples = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    query = np.array([[1.0, 0.05], [0.0, 1.0]])
    allowed = np.array([[True, True, True, False], [False, False, True, False]])
    # nearest last; a row with fewer eligible lines is padded with -1 in front
    assert nearest(query, examples, allowed, 2).tolist() == [[1, 0], [-1, 2]]


def test_incontext_examples_are_cross_fitted(tiny_text: Path) -> None:
    labels = {f"l{i}": LABELS[i % 6] for i in range(10)}
    context = _context(labels, VECTORS, NAMES, FOLD_OF)
    agent = build_agent(_spec(tiny_text, incontext_k=3), context)
    assert isinstance(agent, InContextLLMAgent)
    shown = agent.examples(NAMES)
    line_fold = {LINES[i]: FOLD_OF[i] for i in range(10)}
    for i in range(10):  # a labelled clip sees 3 lines, every one of the other fold
        assert len(shown[i]) == 3 and {line_fold[line] for line, _ in shown[i]} == {1 - FOLD_OF[i]}
    # the nearest eligible line (by cosine) ends the list
    unit = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    other = [j for j in range(10) if FOLD_OF[j] != FOLD_OF[0]]
    assert shown[0][-1][0] == LINES[max(other, key=lambda j: unit[0] @ unit[j])]
    assert all(len(s) == 3 for s in shown[10:])  # pool clips: any labelled line
    assert [s for s in agent.examples(["p0"], exclude=0)[0] if line_fold[s[0]] == 0] == []
    agent.close()


def test_a_labelled_clips_score_never_depends_on_its_own_folds_labels(tiny_text: Path) -> None:
    labels = {f"l{i}": LABELS[i % 6] for i in range(10)}
    agent = build_agent(_spec(tiny_text, incontext_k=3), _context(labels, VECTORS, NAMES, FOLD_OF))
    probs = agent.score(NAMES)
    fold_probs = agent.score_folds(NAMES)
    assert probs.shape == (12, 6) and fold_probs.shape == (12, 2, 6)
    # labelled clips: only their own fold's column; pool clips: one scoring per fold, their mean as the score
    assert np.isnan(fold_probs[0, 1]).all() and np.isfinite(fold_probs[0, 0]).all()
    np.testing.assert_allclose(probs[10:], fold_probs[10:].mean(1), atol=1e-6)
    agent.close()

    relabel_fold0 = {n: ("surprise" if FOLD_OF[int(n[1:])] == 0 else label) for n, label in labels.items()}
    again = build_agent(_spec(tiny_text, incontext_k=3), _context(relabel_fold0, VECTORS, NAMES, FOLD_OF))
    changed = again.score(NAMES)
    fold0 = [i for i in range(10) if FOLD_OF[i] == 0]
    fold1 = [i for i in range(10) if FOLD_OF[i] == 1]
    np.testing.assert_allclose(changed[fold0], probs[fold0], atol=1e-6)   # fold 0 never saw fold 0's labels
    assert not np.allclose(changed[fold1], probs[fold1], atol=1e-4)      # fold 1 was shown them
    again.close()


def test_incontext_prompt_shows_the_lines_and_label_words(tiny_text: Path) -> None:
    block = examples_block("zh", [("你到底有完没完！", 1), ("太好了！", 2)])
    assert block == "以下是几句已标注情绪的台词：\n台词：你到底有完没完！\n情绪：生气\n台词：太好了！\n情绪：高兴\n\n"
    labels = {f"l{i}": LABELS[i % 6] for i in range(10)}
    agent = build_agent(_spec(tiny_text, incontext_k=2), _context(labels, VECTORS, NAMES, FOLD_OF))
    from llm.incontext import incontext_request

    shown = agent.examples(["l0"])[0]
    media = agent.requests.media(agent.clips["l0"])
    request = incontext_request(agent.requests.family, agent.requests.processor, media,
                                agent.options.request_settings(), shown)
    assert examples_block("zh", shown) in request.prompt and request.prompt.endswith("<|im_start|>assistant\n")
    assert request.prompt.index(shown[-1][0]) < request.prompt.index("台词：" + LINES[0])
    agent.close()


def test_options_and_provenance() -> None:
    with pytest.raises(ValueError, match="calibration=content_free needs view text"):
        LLMAgentOptions(model="m", family="qwen2_audio", calibration="content_free")
    with pytest.raises(ValueError, match="incontext_k=-1"):
        LLMAgentOptions(model="m", family="qwen2_5_text", incontext_k=-1)
    with pytest.raises(ValueError, match="incontext_k with calibration=content_free"):
        LLMAgentOptions(model="m", family="qwen2_5_text", incontext_k=4, calibration="content_free")
    with pytest.raises(ValueError, match="cpu_dtype='half'"):
        LLMAgentOptions(model="m", family="qwen2_5_text", cpu_dtype="half")  # type: ignore[arg-type]
    context = AgentContext(features=None, labels={}, folds=assign_folds({f"l{i}": LABELS[i % 6] for i in range(12)},
                                                                         2, 0))
    evidence = labelled_evidence(AgentSpec(name="a", kind="llm", options={"model": "m", "family": "qwen2_5_text",
                                                                         "incontext_k": 4}), context)
    assert (evidence["labelled_scores"], evidence["folds"], evidence["fold_seed"]) == ("out_of_fold", 2, 0)
    assert labelled_evidence(AgentSpec(name="a", kind="llm", options={"model": "m", "family": "qwen2_5_text"}),
                             context)["labelled_scores"] == "zero_shot"


def test_incontext_needs_the_named_features(tiny_text: Path) -> None:
    labels = {f"l{i}": LABELS[i % 6] for i in range(10)}
    with pytest.raises(ValueError, match="incontext_features='hf_text' matches 0 cached extractors"):
        build_agent(_spec(tiny_text, incontext_k=2, incontext_features="hf_text"),
                    _context(labels, VECTORS, NAMES, FOLD_OF))


def test_bf16_weights_on_cpu_score_like_float32(tiny_text: Path) -> None:
    refs = {f"c{i}": ClipRef(name=f"c{i}", path=None, label=None, transcript=line) for i, line in enumerate(LINES)}
    context = AgentContext(features=None, labels={}, clips=refs)
    full = build_agent(_spec(tiny_text), context)
    half = build_agent(_spec(tiny_text, cpu_dtype="bfloat16"), context)
    assert next(half.scorer.model.parameters()).dtype == torch.bfloat16
    assert next(full.scorer.model.parameters()).dtype == torch.float32
    np.testing.assert_allclose(half.score(list(refs)), full.score(list(refs)), atol=0.03)
    full.close()
    half.close()
