"""The llm_text extractor on a tiny random Qwen2 (the real vocabulary): pooled states equal the model's own hidden
states, batching and padding change nothing, and the features runner feeds it whole chunks and caches per clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clips.dataset import ClipRef
from features.base import cache_key
from features.cache import load_features
from features.llm_text import PROMPTS, LLMTextExtractor, layer_of
from features.registry import build_extractor
from features.runner import extract_features

LINES = ["太好了我们成功了，真开心！", "嗯。", "你到底有完没完，烦死了，我真的受够了你的谎话！", "明天早上八点开会"]


@pytest.fixture(scope="module")
def tiny_text(qwen2_tok, tmp_path_factory) -> Path:
    """A saved tiny random Qwen2ForCausalLM (2 layers, hidden 32) with the real Qwen2 tokenizer."""
    from llm.tiny import save_tiny

    return save_tiny("qwen2_5_text", tmp_path_factory.mktemp("llm-text") / "tiny", qwen2_tok)


def _reference(folder: Path, line: str, layer: int) -> tuple[np.ndarray, np.ndarray, torch.nn.Module]:
    """(mean over the line's tokens, last token) of hidden_states[layer] of the full causal LM, one unpadded row.

    transformers gives the last layer's states after the final norm; the extractor pools the residual stream
    before it at every layer, so for the last layer the reference's states are compared through the norm."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    before, after = PROMPTS["zh"]
    head, body, tail = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (before, line, after))
    with torch.no_grad():
        states = model(torch.tensor([head + body + tail]), output_hidden_states=True).hidden_states[layer][0]
    return states[len(head):len(head) + len(body)].mean(0).numpy(), states[-1].numpy(), model.model.norm


def test_layer_of_depth() -> None:
    assert [layer_of(d, 28) for d in (0.01, 0.5, 0.67, 1.0)] == [1, 14, 19, 28]
    assert layer_of(0.67, 2) == 1 and layer_of(1.0, 2) == 2


def test_pooled_states_equal_the_models_own_hidden_states(tiny_text: Path) -> None:
    for depth, layer in ((0.67, 1), (1.0, 2)):
        extractor = LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=depth, pool="both")
        assert extractor.layer == layer and extractor.dim == 64
        vectors = extractor.embed(LINES)
        assert vectors.shape == (4, 64) and vectors.dtype == np.float32
        # only the layers up to the pooled one are kept: the rest would be computed and thrown away
        assert len(extractor._net.layers) == layer
        for row, line in enumerate(LINES):
            mean, last, norm = _reference(tiny_text, line, layer)
            if layer == 1:
                np.testing.assert_allclose(vectors[row, :32], mean, atol=2e-5)
                np.testing.assert_allclose(vectors[row, 32:], last, atol=2e-5)
            else:
                with torch.no_grad():
                    normed = norm(torch.from_numpy(vectors[row, 32:])).numpy()
                np.testing.assert_allclose(normed, last, atol=2e-5)


def test_padding_and_batch_company_do_not_change_a_line(tiny_text: Path) -> None:
    batched = LLMTextExtractor(model=str(tiny_text), dtype="float32", batch_size=4).embed(LINES)
    single = LLMTextExtractor(model=str(tiny_text), dtype="float32", batch_size=1).embed(LINES)
    np.testing.assert_allclose(batched, single, atol=2e-5)
    # the same line padded beside the longest one, in another order
    shuffled = LLMTextExtractor(model=str(tiny_text), dtype="float32", batch_size=4).embed(LINES[::-1])
    np.testing.assert_allclose(shuffled[::-1], batched, atol=2e-5)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)


def test_pool_options_and_every_layer(tiny_text: Path) -> None:
    both = LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=1.0).embed(LINES[:2])
    mean = LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=1.0, pool="mean")
    last = LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=1.0, pool="last")
    assert mean.dim == last.dim == 32
    np.testing.assert_allclose(mean.embed(LINES[:2]), both[:, :32], atol=1e-6)
    np.testing.assert_allclose(last.embed(LINES[:2]), both[:, 32:], atol=1e-6)
    full = LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=1.0)
    layers = full.hidden_layers(LINES[:2])  # (2 lines, 2 layers, 64)
    assert layers.shape == (2, 2, 64)
    np.testing.assert_allclose(layers[:, 1], both, atol=1e-6)
    middle = LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=0.5)
    np.testing.assert_allclose(layers[:, 0], middle.embed(LINES[:2]), atol=1e-6)


def test_settings_key_and_bad_options(tiny_text: Path) -> None:
    a = build_extractor("llm_text", model=str(tiny_text))
    b = build_extractor("llm_text", model=str(tiny_text), batch_size=3, threads=1)
    assert cache_key(a) == cache_key(b)  # batching and threads do not change the vectors
    assert cache_key(a) != cache_key(build_extractor("llm_text", model=str(tiny_text), depth=1.0))
    assert a.settings()["layer"] == 1 and a.settings()["pool"] == "both"
    with pytest.raises(ValueError, match=r"depth=1.5: use a relative depth in \(0, 1\]"):
        LLMTextExtractor(model=str(tiny_text), dtype="float32", depth=1.5)
    with pytest.raises(ValueError, match="pool='max'.*language='fr'"):
        LLMTextExtractor(model=str(tiny_text), dtype="float32", pool="max", language="fr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad options.*llm_text"):
        build_extractor("llm_text", layers=4)


def test_missing_registry_model_names_the_fetch_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MER_SEMI_CACHE", str(tmp_path))
    extractor = LLMTextExtractor()
    assert extractor.model == str(tmp_path / "llm" / "qwen2.5-coder-1.5b-instruct")
    with pytest.raises(ValueError, match="fetch-llm --size 1.5b"):
        _ = extractor.dim


def test_runner_embeds_a_chunk_in_batches_and_caches_per_clip(tiny_text: Path, tmp_path: Path, monkeypatch) -> None:
    refs = [ClipRef(name=f"c{i}", path=None, label=None, transcript=line) for i, line in enumerate(LINES)]
    refs.append(ClipRef(name="blank", path=None, label=None, transcript="  "))
    calls: list[int] = []
    forward = LLMTextExtractor._forward

    def counted(self, lines, all_layers=False):
        calls.append(len(lines))
        return forward(self, lines, all_layers)

    monkeypatch.setattr(LLMTextExtractor, "_forward", counted)
    options = {"llm_text": {"model": str(tiny_text), "batch_size": 3, "dtype": "float32"}}
    report = extract_features(refs, ["llm_text"], tmp_path / "cache", workers=1, progress=False,
                              extractor_options=options)
    assert report.processed == 5 and not report.errors
    assert sorted(calls) == [1, 3]  # 4 lines in padded batches of 3, none run one by one
    assert report.status_counts == {"ok": 4, "empty_transcript": 1}
    features = load_features(tmp_path / "cache", report.cache_keys, [r.name for r in refs])
    expected = LLMTextExtractor(model=str(tiny_text), dtype="float32").embed(LINES)
    np.testing.assert_allclose(features.blocks[0][:4], expected, atol=2e-5)
    assert features.masks[:, 0].tolist() == [True] * 4 + [False]
    calls.clear()
    again = extract_features(refs, ["llm_text"], tmp_path / "cache", workers=1, progress=False,
                             extractor_options=options)
    assert again.skipped == 5 and calls == []


def test_bf16_weights_give_nearly_the_float32_vectors(tiny_text: Path) -> None:
    full = LLMTextExtractor(model=str(tiny_text), dtype="float32").embed(LINES)
    half = LLMTextExtractor(model=str(tiny_text), dtype="bfloat16")
    assert half.settings()["dtype"] == "bfloat16" and half.resolved_dtype() == "bfloat16"
    vectors = half.embed(LINES)
    assert next(half._net.parameters()).dtype == torch.bfloat16 and vectors.dtype == np.float32
    cosine = (vectors * full).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(full, axis=1)
    assert cosine.min() > 0.99
