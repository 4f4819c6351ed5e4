import re

import numpy as np
import pytest
import torch

from llm.hf_backend import HFScorer, answer_logprobs, encode_requests, load_weights, tokenizer_of
from llm.prompts import label_words
from llm.requests import RequestSettings, build_request
from llm.scoring import END_TOKEN, plan_scoring
from teacher.finetune import _answer_loss, export_merged

VIEWS = {"qwen2_audio": "audio", "qwen2_5_vl": "frames", "qwen2_5_omni": "audio+video", "qwen2_5_text": "text"}


def _requests(family, processor, media, view, language="en"):
    return [build_request(family, processor, m, RequestSettings(view=view, language=language)) for m in media]


@pytest.mark.parametrize("name", list(VIEWS))
def test_probabilities_sum_to_one_and_batching_changes_nothing(name, tiny_loaded, tiny_family, clip_media_set):
    model, processor = tiny_loaded(name)
    family = tiny_family(name)
    requests = _requests(family, processor, clip_media_set, VIEWS[name])
    # sequence scoring is family-agnostic code: two families cover it (Omni on CPU is the slowest)
    for mode in ("first_token", "sequence") if name in ("qwen2_audio", "qwen2_5_vl") else ("first_token",):
        plan = plan_scoring(label_words("en"), tokenizer_of(processor), mode)
        batched = HFScorer(model, processor, family, plan, batch_size=3).score(requests)
        single = np.concatenate([HFScorer(model, processor, family, plan, batch_size=1).score([r]) for r in requests])
        assert batched.shape == (3, 6)
        np.testing.assert_allclose(batched.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(batched, single, atol=1e-4)
        assert batched.std(axis=1).min() > 1e-3, "tiny model too close to uniform for the comparison to mean much"


@pytest.mark.parametrize("name", ["qwen2_audio", "qwen2_5_text"])
def test_scores_match_a_manual_full_logits_computation(name, tiny_loaded, tiny_family, clip_media_set):
    model, processor = tiny_loaded(name)
    family = tiny_family(name)
    request = _requests(family, processor, clip_media_set[:1], VIEWS[name], language="zh")[0]
    tokenizer = tokenizer_of(processor)
    first = plan_scoring(label_words("zh"), tokenizer, "first_token")
    sequence = plan_scoring(label_words("zh"), tokenizer, "sequence")
    with torch.no_grad():
        inputs = encode_requests(processor, family, [request])
        logits = model(**inputs).logits[0, -1]                      # full (V,) logits, no projection trimming
        expected_first = torch.softmax(logits[list(first.first_ids)], -1).numpy()
        expected_seq = []
        for word, answer in zip(sequence.words, sequence.answer_ids, strict=True):
            full = model(**encode_requests(processor, family, [request], [word + END_TOKEN]))
            logp = torch.log_softmax(full.logits[0], -1)
            n = len(answer)
            expected_seq.append(sum(logp[-n - 1 + k, tok].item() for k, tok in enumerate(answer)))
    expected_seq = np.exp(expected_seq) / np.exp(expected_seq).sum()
    np.testing.assert_allclose(HFScorer(model, processor, family, first).score([request])[0], expected_first,
                               atol=1e-5)
    np.testing.assert_allclose(HFScorer(model, processor, family, sequence).score([request])[0], expected_seq,
                               atol=1e-5)


@pytest.mark.parametrize("name", list(VIEWS))
def test_lora_targets_hit_the_language_model_only(name, tiny_loaded, tiny_family):
    model, _ = tiny_loaded(name)
    pattern = tiny_family(name).lora_targets
    hits = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    assert len(hits) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    assert not [n for n in hits if "audio_tower" in n or "visual" in n]


def test_lora_step_lowers_loss_and_adapter_roundtrips_and_merge_matches(tiny_dirs, tiny_family, tiny_loaded,
                                                                         clip_media_set, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    family = tiny_family("qwen2_audio")
    processor = tiny_loaded("qwen2_audio")[1]
    base = load_weights(tiny_dirs["qwen2_audio"], family, device="cpu")
    plan = plan_scoring(label_words("en"), tokenizer_of(processor))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=family.lora_targets,
                                            task_type="CAUSAL_LM"))
    assert all("language_model" in n for n, p in model.named_parameters() if p.requires_grad)
    requests = _requests(family, processor, clip_media_set, "audio")
    batch = list(zip(requests, [2, 3, 4], strict=True))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(3):
        loss = _answer_loss(model, processor, family, plan, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0]

    trained = HFScorer(model, processor, family, plan).score(requests)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(load_weights(tiny_dirs["qwen2_audio"], family, device="cpu"), adapter)
    np.testing.assert_array_equal(HFScorer(reloaded.eval(), processor, family, plan).score(requests), trained)
    adapter_loaded = load_weights(tiny_dirs["qwen2_audio"], family, adapter=adapter, device="cpu")
    np.testing.assert_array_equal(HFScorer(adapter_loaded, processor, family, plan).score(requests), trained)

    merged_dir = export_merged(tiny_dirs["qwen2_audio"], adapter, tmp_path / "merged", family, processor)
    assert (merged_dir / "processor_config.json").is_file() and (merged_dir / "tokenizer.json").is_file()
    merged = load_weights(merged_dir, family, device="cpu")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    np.testing.assert_allclose(HFScorer(merged, processor, family, plan).score(requests), trained, atol=1e-5)
    with torch.no_grad():
        inputs = encode_requests(processor, family, requests[:1], ["happy" + END_TOKEN])
        answer = [plan.answer_ids[2]]
        merged_logp, adapter_logp = (answer_logprobs(m, inputs, answer)[0] for m in (merged, model))
        np.testing.assert_allclose(merged_logp, adapter_logp, atol=1e-4)


def test_quantization_on_cpu_is_refused_unless_forced():
    from llm.hf_backend import pick_device, quantization_config

    with pytest.raises(ValueError, match=r"quantization '4bit' needs a CUDA GPU"):
        quantization_config("4bit", pick_device("cpu"))
    assert quantization_config("none", pick_device("cpu")) is None
    assert quantization_config("4bit", pick_device("cpu"), force=True).load_in_4bit
