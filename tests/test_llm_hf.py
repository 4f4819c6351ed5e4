import json
import re

import numpy as np
import pytest
import torch

from llm.hf_backend import HFScorer, answer_logprobs, encode_requests, load_weights, tokenizer_of
from llm.prompts import scoring_plan
from llm.requests import RequestSettings, build_request
from llm.scoring import END_TOKEN
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
        plan = scoring_plan("en", tokenizer_of(processor), mode)
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
    first = scoring_plan("zh", tokenizer, "first_token")
    sequence = scoring_plan("zh", tokenizer, "sequence")
    bare = scoring_plan("zh", tokenizer, "first_token", prefill=False)
    with torch.no_grad():
        # full (V,) logits after the prefilled "情绪：", no projection trimming
        logp = torch.log_softmax(model(**encode_requests(processor, family, [request], [first.prefix])).logits[0, -1],
                                 -1)
        per_label = torch.stack([torch.logsumexp(logp[list(ids)], 0) for ids in first.variant_ids])
        expected_first, expected_mass = torch.softmax(per_label, 0).numpy(), per_label.exp().sum().item()
        bare_logits = model(**encode_requests(processor, family, [request])).logits[0, -1]
        expected_bare = torch.softmax(bare_logits[list(bare.first_ids)], -1).numpy()
        expected_seq = []
        for answer, ids in zip(sequence.answers, sequence.answer_ids, strict=True):
            full = model(**encode_requests(processor, family, [request], [sequence.prefix + answer + END_TOKEN]))
            logp_seq = torch.log_softmax(full.logits[0], -1)
            n = len(ids)
            expected_seq.append(sum(logp_seq[-n - 1 + k, tok].item() for k, tok in enumerate(ids)))
    seq_mass = np.exp(expected_seq).sum()
    expected_seq = np.exp(expected_seq) / seq_mass
    probs, mass = HFScorer(model, processor, family, first).scores([request])
    np.testing.assert_allclose(probs[0], expected_first, atol=1e-5)
    np.testing.assert_allclose(mass[0], expected_mass, rtol=1e-4)
    assert 0.0 < mass[0] < 1.0
    np.testing.assert_allclose(HFScorer(model, processor, family, bare).score([request])[0], expected_bare, atol=1e-5)
    probs, mass = HFScorer(model, processor, family, sequence).scores([request])
    np.testing.assert_allclose(probs[0], expected_seq, atol=1e-5)
    np.testing.assert_allclose(mass[0], seq_mass, rtol=1e-4)


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
    plan = scoring_plan("en", tokenizer_of(processor))
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
        inputs = encode_requests(processor, family, requests[:1], [plan.prefix + plan.answers[2] + END_TOKEN])
        answer = [plan.answer_ids[2]]
        merged_logp, adapter_logp = (answer_logprobs(m, inputs, answer)[0] for m in (merged, model))
        np.testing.assert_allclose(merged_logp, adapter_logp, atol=1e-4)


def test_quantization_on_cpu_is_refused_unless_forced():
    from llm.hf_backend import pick_device, quantization_config

    with pytest.raises(ValueError, match=r"quantization '4bit' needs a CUDA GPU"):
        quantization_config("4bit", pick_device("cpu"))
    assert quantization_config("none", pick_device("cpu")) is None
    config = quantization_config("4bit", pick_device("cpu"), force=True, keep=("lm_head", "audio_tower"))
    assert config.load_in_4bit and config.llm_int8_skip_modules == ["lm_head", "audio_tower"]


def test_merged_export_is_saved_in_the_base_dtype(qwen2_tok, tiny_family, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    from llm.tiny import build_tiny

    model, tokenizer = build_tiny("qwen2_5_text", qwen2_tok)
    base = tmp_path / "base"
    model.to(torch.bfloat16).save_pretrained(base)  # the Qwen releases' dtype
    tokenizer.save_pretrained(base)
    family = tiny_family("qwen2_5_text")
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=family.lora_targets, init_lora_weights=False)
    tuned = get_peft_model(load_weights(base, family, device="cpu"), lora)
    tuned.save_pretrained(tmp_path / "adapter")
    out = export_merged(base, tmp_path / "adapter", tmp_path / "merged", family)
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    merged = load_weights(out, family, device="cpu")
    inputs = tokenizer(["<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    with torch.no_grad():
        tuned_logits, merged_logits = tuned.eval()(**inputs).logits, merged(**inputs).logits
        base_logits = load_weights(base, family, device="cpu")(**inputs).logits
    # the merge holds the adapter up to bf16 rounding of the weights
    bf16_error = (merged_logits - tuned_logits).abs().max()
    assert bf16_error < 0.05 * tuned_logits.abs().max() < (base_logits - tuned_logits).abs().max()


def test_qlora_keeps_the_towers_and_the_output_layer_unquantised(tiny_dirs, tiny_family):
    import bitsandbytes as bnb

    family = tiny_family("qwen2_audio")
    model = load_weights(tiny_dirs["qwen2_audio"], family, device="cpu", quantization="4bit", force_quantization=True)
    kinds = {name: type(module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    four_bit = sorted(n for n, k in kinds.items() if issubclass(k, bnb.nn.Linear4bit))
    assert four_bit and all(".language_model." in n for n in four_bit)
    assert len(four_bit) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    assert not any(issubclass(kinds[n], bnb.nn.Linear4bit) for n in kinds if "audio_tower" in n
                   or "multi_modal_projector" in n or n.endswith("lm_head"))


def test_omni_adapter_is_renamed_for_vllm_and_a_bare_one_refused(tiny_dirs, tiny_family, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from llm.adapters import adapter_keys, check_vllm_adapter, vllm_adapter

    family = tiny_family("qwen2_5_omni")
    base = load_weights(tiny_dirs["qwen2_5_omni"], family, device="cpu")
    tuned = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=family.lora_targets,
                                            init_lora_weights=False))
    tuned.save_pretrained(tmp_path / "adapter")
    keys = adapter_keys(tmp_path / "adapter")
    assert len(keys) == 2 * 7 * 2 and all(k.startswith("base_model.model.model.layers.") for k in keys)
    with pytest.raises(ValueError, match=r"lack the 'thinker.' prefix that vLLM's "
                                         r"Qwen2_5OmniThinkerForConditionalGeneration maps"):
        check_vllm_adapter(tmp_path / "adapter", family)
    out = vllm_adapter(tmp_path / "adapter", tmp_path / "adapter-vllm", family)
    check_vllm_adapter(out, family)
    renamed = load_file(out / "adapter_model.safetensors")
    original = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    assert torch.equal(renamed["base_model.model.thinker.model.layers.1.mlp.down_proj.lora_B.weight"], original[key])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    check_vllm_adapter(tmp_path / "adapter", tiny_family("qwen2_5_vl"))  # no prefix needed there
