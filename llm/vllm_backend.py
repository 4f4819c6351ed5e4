"""vLLM offline backend: the same requests and label scoring as the transformers backend, batched by the engine.

Usage (GPU machine with `pip install .[vllm]`):
    scorer = VLLMScorer("runs/a/teacher/merged", get_family("qwen2_audio"), plan)                 # merged export
    scorer = VLLMScorer("Qwen/Qwen2.5-VL-7B-Instruct", get_family("qwen2_5_vl"), plan, adapter="runs/b/adapter")
    probs = scorer.score(requests)          # (n, 6)

vllm is imported only inside VLLMScorer; the request builders and output parsers here are pure functions on plain
data, tested without vllm. First-token scoring asks for one generated token with its top-`k` logprobs
(`SamplingParams(max_tokens=1, logprobs=k, temperature=0)`); a label whose first token is outside the top k gets
the smallest returned logprob (an upper bound), and the count is logged. Sequence scoring sends prompt + answer
for each label and reads `prompt_logprobs` of the answer tokens. Qwen2-Audio has no LoRA in vLLM: serve the merged
export that teacher-train writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llm.families import Family
from llm.requests import Request
from llm.scoring import END_TOKEN, LabelScoring, sequence_probs, softmax

log = logging.getLogger(__name__)

# top logprobs returned per position (vLLM's default max_logprobs is 20)
TOP_LOGPROBS = 20
# LoRA id of the single adapter an engine serves
_LORA_ID = 1


def vllm_request(request: Request, family: Family, suffix: str = "") -> dict[str, Any]:
    """The vLLM prompt dict of one request: {"prompt", "multi_modal_data", "mm_processor_kwargs"}."""
    data: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if request.audio is not None:
        data["audio"] = (request.audio, family.sample_rate)
    if request.video is not None:
        data["video"] = request.video  # (T, H, W, 3) uint8
        limits = family.video
        kwargs.update(fps=limits.fps, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)
    if family.name == "qwen2_5_omni" and request.audio is not None and request.video is not None:
        # separate <|AUDIO|> and <|VIDEO|> segments, not the audio track interleaved into the video
        kwargs["use_audio_in_video"] = False
    out: dict[str, Any] = {"prompt": request.prompt + suffix}
    if data:
        out["multi_modal_data"] = data
    if kwargs:
        out["mm_processor_kwargs"] = kwargs
    return out


def scoring_requests(requests: Sequence[Request], family: Family, plan: LabelScoring) -> list[dict[str, Any]]:
    """vLLM prompt dicts for `plan`: one per clip (first token) or one per clip and label (sequence, clip-major)."""
    if plan.mode == "first_token":
        return [vllm_request(r, family) for r in requests]
    return [vllm_request(r, family, word + END_TOKEN) for r in requests for word in plan.words]


def _logprob(value: Any) -> float:
    """A vLLM Logprob object (.logprob) or a bare float."""
    return float(getattr(value, "logprob", value))


def parse_first_token(outputs: Sequence[Any], plan: LabelScoring) -> tuple[np.ndarray, int]:
    """(n, 6) probabilities from RequestOutputs of first-token requests, and how many label tokens were not in
    the top-k (given the smallest returned logprob). Reads outputs[i].outputs[0].logprobs[0]: token id -> Logprob.
    """
    logits = np.zeros((len(outputs), len(plan.first_ids)), dtype=np.float64)
    absent = 0
    for i, output in enumerate(outputs):
        top: Mapping[int, Any] = output.outputs[0].logprobs[0]
        floor = min(_logprob(v) for v in top.values())
        for j, token in enumerate(plan.first_ids):
            if token in top:
                logits[i, j] = _logprob(top[token])
            else:
                logits[i, j] = floor
                absent += 1
    # logprobs differ from logits by one constant per row: the softmax over the labels is the same
    return softmax(logits).astype(np.float32), absent


def parse_sequence(outputs: Sequence[Any], plan: LabelScoring) -> np.ndarray:
    """(n, 6) probabilities from RequestOutputs of sequence requests (6 per clip, clip-major).

    Sums prompt_logprobs over each answer's tokens (the prompt's last len(answer) tokens). Raises ValueError when
    a prompt does not end with its answer ids.
    """
    words = len(plan.words)
    if len(outputs) % words:
        raise ValueError(f"{len(outputs)} outputs is not a multiple of the {words} labels")
    scores = np.zeros((len(outputs) // words, words), dtype=np.float64)
    for k, output in enumerate(outputs):
        answer = plan.answer_ids[k % words]
        ids = list(output.prompt_token_ids)
        if ids[-len(answer):] != list(answer):
            raise ValueError(f"prompt {k} does not end with the answer ids {list(answer)}: got {ids[-len(answer):]}")
        per_token = output.prompt_logprobs[-len(answer):]
        scores[k // words, k % words] = sum(_logprob(pos[tok]) for pos, tok in zip(per_token, answer, strict=True))
    return sequence_probs(scores)


def engine_kwargs(model: str, family: Family, adapter: str | None = None, lora_rank: int = 16,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of vllm.LLM for `family`: one item per modality per prompt, LoRA when an adapter is given.

    Raises ValueError for an adapter on a family vLLM serves without LoRA (Qwen2-Audio: use the merged export).
    """
    if adapter is not None and not family.vllm_lora:
        raise ValueError(f"family {family.name!r} has no LoRA support in vLLM; serve teacher-train's merged export "
                         f"(out/merged) as `model` and drop `adapter` ({adapter})")
    limits = {"audio": 1} if family.media == "audio" else {"video": 1} if family.media == "video" else \
        {"audio": 1, "video": 1} if family.media == "audio+video" else {}
    kwargs: dict[str, Any] = {"model": str(model), "max_model_len": 8192, "max_logprobs": TOP_LOGPROBS}
    if limits:
        kwargs["limit_mm_per_prompt"] = limits
    if adapter is not None:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    kwargs.update(extra or {})
    return kwargs


def sampling_params_kwargs(plan: LabelScoring) -> dict[str, Any]:
    """SamplingParams arguments: one greedy token with its top logprobs, or prompt logprobs for sequences."""
    if plan.mode == "first_token":
        return {"max_tokens": 1, "logprobs": TOP_LOGPROBS, "temperature": 0.0}
    return {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0}


def _adapter_rank(adapter: str) -> int:
    import json
    from pathlib import Path

    return int(json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16))


class VLLMScorer:
    """Scores Requests with a vLLM engine; same interface as llm.hf_backend.HFScorer."""

    def __init__(self, model: str, family: Family, plan: LabelScoring, adapter: str | None = None,
                 engine: Mapping[str, Any] | None = None):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self.family = family
        self.plan = plan
        rank = _adapter_rank(adapter) if adapter is not None else 16
        self.llm = LLM(**engine_kwargs(model, family, adapter, rank, engine))
        self.params = SamplingParams(**sampling_params_kwargs(plan))
        self._sampling = SamplingParams
        self.lora = LoRARequest("teacher", _LORA_ID, str(adapter)) if adapter is not None else None

    def score(self, requests: Sequence[Request]) -> np.ndarray:
        """(len(requests), 6) probabilities; one engine call for the whole list (the engine batches)."""
        outputs = self.llm.generate(scoring_requests(requests, self.family, self.plan), self.params,
                                    lora_request=self.lora, use_tqdm=False)
        if self.plan.mode == "sequence":
            return parse_sequence(outputs, self.plan)
        probs, absent = parse_first_token(outputs, self.plan)
        if absent:
            log.warning("vLLM scoring: %d label tokens fell outside the top %d logprobs (given the smallest one)",
                        absent, TOP_LOGPROBS)
        return probs

    def generate(self, request: Request, max_new_tokens: int = 32) -> str:
        """Greedy free text after `request.prompt`."""
        params = self._sampling(max_tokens=max_new_tokens, temperature=0.0)
        output = self.llm.generate([vllm_request(request, self.family)], params, lora_request=self.lora,
                                   use_tqdm=False)
        return output[0].outputs[0].text.strip()
