"""vLLM offline backend: the same requests and label scoring as the transformers backend, batched by the engine.

Usage (GPU machine with `pip install .[vllm]`):
    scorer = VLLMScorer("runs/a/teacher/merged", get_family("qwen2_audio"), plan)                 # merged export
    scorer = VLLMScorer("Qwen/Qwen2.5-VL-7B-Instruct", get_family("qwen2_5_vl"), plan, adapter="runs/b/adapter")
    probs, mass = scorer.scores(requests)          # (n, 6), (n,)
    scorer.close()                                 # engine shut down, GPU memory back before the next agent

vllm is imported only inside VLLMScorer; the request builders and output parsers here are pure functions on plain
data, tested without vllm. First-token scoring is exact, as in the transformers backend: one generated token with
`logprob_token_ids` set to the label spellings' ids, so the engine returns their log-probabilities under the full
distribution whatever their rank (the label mass comes out too). On a vLLM without that field the request instead
restricts the token to the labels (`allowed_token_ids`) and reads the logprobs after that restriction
(engine `logprobs_mode="processed_logprobs"`): the same probabilities over the labels, but no label mass (NaN).
Sequence scoring sends prompt + answer for each label and reads `prompt_logprobs` of the answer tokens.
Qwen2-Audio has no LoRA in vLLM: serve the merged export that teacher-train writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llm.families import Family
from llm.requests import Request
from llm.scoring import END_TOKEN, LabelScoring, label_token_scores, sequence_scores

log = logging.getLogger(__name__)

# vLLM's default max_logprobs; raised to the number of label spellings when that is larger
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
        kwargs.update(fps=request.fps or limits.fps, min_pixels=limits.min_pixels, max_pixels=limits.max_pixels)
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
    """vLLM prompt dicts for `plan`: one per clip (first token, the answer prefix appended) or one per clip and
    label (sequence, clip-major)."""
    if plan.mode == "first_token":
        return [vllm_request(r, family, plan.prefix) for r in requests]
    return [vllm_request(r, family, plan.prefix + answer + END_TOKEN) for r in requests for answer in plan.answers]


def _logprob(value: Any) -> float:
    """A vLLM Logprob object (.logprob) or a bare float."""
    return float(getattr(value, "logprob", value))


def parse_first_token(outputs: Sequence[Any], plan: LabelScoring, restricted: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """((n, 6) probabilities, (n,) label mass) from RequestOutputs of first-token requests.

    Reads outputs[i].outputs[0].logprobs[0] (token id -> Logprob), which must hold every id of `plan.token_ids`:
    raises ValueError naming the missing ids otherwise. `restricted`: the logprobs were taken after the token was
    restricted to the labels, so they are already renormalised over them and the mass is unknown (NaN).
    """
    token_ids = plan.token_ids
    logp = np.zeros((len(outputs), len(token_ids)), dtype=np.float64)
    for i, output in enumerate(outputs):
        returned: Mapping[int, Any] = output.outputs[0].logprobs[0]
        missing = [t for t in token_ids if t not in returned]
        if missing:
            raise ValueError(f"output {i}: vLLM returned no logprob for label token ids {missing}; request them "
                             "with logprob_token_ids (or allowed_token_ids and logprobs >= their number)")
        logp[i] = [_logprob(returned[t]) for t in token_ids]
    probs, mass = label_token_scores(logp, plan)
    if restricted:
        mass = np.full(len(outputs), np.nan, dtype=np.float32)
    return probs, mass


def parse_sequence(outputs: Sequence[Any], plan: LabelScoring) -> tuple[np.ndarray, np.ndarray]:
    """((n, 6) probabilities, (n,) label mass) from RequestOutputs of sequence requests (6 per clip, clip-major).

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
    return sequence_scores(scores)


def engine_kwargs(model: str, family: Family, adapter: str | None = None, lora_rank: int = 16,
                  extra: Mapping[str, Any] | None = None, plan: LabelScoring | None = None,
                  token_logprobs: bool = True) -> dict[str, Any]:
    """Keyword arguments of vllm.LLM for `family`: one item per modality per prompt, LoRA when an adapter is given.

    `plan` raises max_logprobs to its number of label spellings; without `token_logprobs` (a vLLM whose
    SamplingParams has no logprob_token_ids) the logprobs are read after the allowed-token restriction.
    Raises ValueError for an adapter on a family vLLM serves without LoRA (Qwen2-Audio: use the merged export).
    """
    if adapter is not None and not family.vllm_lora:
        raise ValueError(f"family {family.name!r} has no LoRA support in vLLM; serve teacher-train's merged export "
                         f"(out/merged) as `model` and drop `adapter` ({adapter})")
    limits = {"audio": 1} if family.media == "audio" else {"video": 1} if family.media == "video" else \
        {"audio": 1, "video": 1} if family.media == "audio+video" else {}
    spellings = len(plan.token_ids) if plan is not None else 0
    kwargs: dict[str, Any] = {"model": str(model), "max_model_len": 8192,
                              "max_logprobs": max(TOP_LOGPROBS, spellings)}
    if not token_logprobs:
        kwargs["logprobs_mode"] = "processed_logprobs"
    if limits:
        kwargs["limit_mm_per_prompt"] = limits
    if adapter is not None:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    kwargs.update(extra or {})
    return kwargs


def sampling_params_kwargs(plan: LabelScoring, token_logprobs: bool = True) -> dict[str, Any]:
    """SamplingParams arguments: one greedy token with the log-probabilities of exactly the label spellings
    (`logprob_token_ids`; or, without `token_logprobs`, the token restricted to them and that many logprobs),
    or prompt logprobs for sequences."""
    if plan.mode == "sequence":
        return {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0}
    ids = list(plan.token_ids)
    if token_logprobs:
        return {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": ids}
    return {"max_tokens": 1, "temperature": 0.0, "allowed_token_ids": ids, "logprobs": len(ids)}


def has_token_logprobs(sampling_params_class) -> bool:
    """Whether this vLLM's SamplingParams takes `logprob_token_ids` (exact logprobs of chosen tokens)."""
    fields = getattr(sampling_params_class, "__struct_fields__", None)
    if fields is None:
        import inspect

        fields = tuple(inspect.signature(sampling_params_class).parameters)
    return "logprob_token_ids" in fields


def _adapter_rank(adapter: str) -> int:
    import json
    from pathlib import Path

    return int(json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16))


def shutdown_engine(llm) -> None:
    """Shut a vllm.LLM's engine down (LLM.shutdown where it exists, else its engine core), then free memory."""
    shutdown = getattr(llm, "shutdown", None)
    if callable(shutdown):
        shutdown()
    else:
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and callable(getattr(core, "shutdown", None)):
            core.shutdown()
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except (ImportError, AssertionError, RuntimeError) as error:  # nothing to tear down, or already down
        log.debug("vLLM parallel state teardown skipped: %s", error)


class VLLMScorer:
    """Scores Requests with a vLLM engine; same interface as llm.hf_backend.HFScorer."""

    def __init__(self, model: str, family: Family, plan: LabelScoring, adapter: str | None = None,
                 engine: Mapping[str, Any] | None = None):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self.family = family
        self.plan = plan
        self.token_logprobs = has_token_logprobs(SamplingParams)
        if not self.token_logprobs:
            log.warning("this vLLM has no SamplingParams.logprob_token_ids: label scores are read after restricting "
                        "the token to the labels; they match the transformers backend, the label mass is NaN")
        if adapter is not None:
            from llm.adapters import check_vllm_adapter

            check_vllm_adapter(adapter, family)
        rank = _adapter_rank(adapter) if adapter is not None else 16
        self.llm = LLM(**engine_kwargs(model, family, adapter, rank, engine, plan, self.token_logprobs))
        self.params = SamplingParams(**sampling_params_kwargs(plan, self.token_logprobs))
        self._sampling = SamplingParams
        self.lora = LoRARequest("teacher", _LORA_ID, str(adapter)) if adapter is not None else None

    def score(self, requests: Sequence[Request]) -> np.ndarray:
        """(len(requests), 6) probabilities; one engine call for the whole list (the engine batches)."""
        return self.scores(requests)[0]

    def scores(self, requests: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        """((n, 6) probabilities, (n,) label mass); one engine call for the whole list."""
        outputs = self.llm.generate(scoring_requests(requests, self.family, self.plan), self.params,
                                    lora_request=self.lora, use_tqdm=False)
        if self.plan.mode == "sequence":
            return parse_sequence(outputs, self.plan)
        return parse_first_token(outputs, self.plan, restricted=not self.token_logprobs)

    def generate(self, request: Request, max_new_tokens: int = 32, adapter: bool = True) -> str:
        """Greedy free text after `request.prompt` (`adapter=False`: without the LoRA adapter)."""
        params = self._sampling(max_tokens=max_new_tokens, temperature=0.0)
        output = self.llm.generate([vllm_request(request, self.family)], params,
                                   lora_request=self.lora if adapter else None, use_tqdm=False)
        return output[0].outputs[0].text.strip()

    def close(self) -> None:
        """Shut the engine down and free its GPU memory, so that the next agent's engine fits."""
        engine, self.llm = self.llm, None
        if engine is not None:
            shutdown_engine(engine)
            del engine
        from llm.hf_backend import release_memory

        release_memory()
