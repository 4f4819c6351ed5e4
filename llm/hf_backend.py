"""transformers backend: load a Qwen teacher (optionally with a LoRA adapter or 4/8-bit weights) and score clips.

Usage:
    model, processor = load_model("Qwen/Qwen2-Audio-7B-Instruct", get_family("qwen2_audio"), adapter="runs/a/lora")
    plan = plan_scoring(label_words("en"), tokenizer_of(processor))
    scorer = HFScorer(model, processor, get_family("qwen2_audio"), plan)
    probs = scorer.score(requests)           # (n, 6), requests from llm.requests.build_request
    probs, mass = scorer.scores(requests)    # and (n,) label mass: the probability on the label tokens
    text = scorer.generate(requests[0], max_new_tokens=32)
    scorer.close()                           # drops the model (and CUDA cache) before the next agent loads

    model, processor = load_model(base, family, adapters=["t/fold_0/adapter", "t/fold_1/adapter"])  # one base, K
    probs, mass = HFScorer(model, processor, family, plan).scores(requests, adapter_ids=[0, 1, None, 1])

One forward pass per batch. The vocabulary projection is applied only to the last few positions (the answer),
because full logits are (batch, length, 151k) floats: gigabytes for a batch of 30 s Qwen2-Audio clips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from llm.families import Family
from llm.requests import Request
from llm.scoring import END_TOKEN, LabelScoring, label_token_scores, sequence_scores

log = logging.getLogger(__name__)

Quantization = Literal["none", "4bit", "8bit"]


def pick_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise torch.device(device).

    Raises ValueError when a CUDA device is asked for and none is visible.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is visible; use device 'cpu' or 'auto'")
    return chosen


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the Qwen checkpoints' dtype), float32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def quantization_config(quantization: Quantization, device: torch.device, force: bool = False,
                        keep: tuple[str, ...] = ("lm_head",)):
    """BitsAndBytesConfig for "4bit" (nf4, double quant) or "8bit"; None for "none".

    `keep` names the modules left unquantised (bitsandbytes' llm_int8_skip_modules, matched against module names):
    the output layer and, for multimodal families, the audio/vision towers and projectors, which are small and
    lose the most from 4-bit weights (QLoRA trains the language model only). Raises ValueError on CPU unless
    `force`: bitsandbytes runs there but slowly and only for smoke tests.
    """
    if quantization == "none":
        return None
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization {quantization!r}: use 'none', '4bit' or '8bit'")
    if device.type != "cuda" and not force:
        raise ValueError(f"quantization {quantization!r} needs a CUDA GPU (device is {device}); use quantization "
                         "'none' on CPU, or force_quantization=True for a slow smoke test")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(keep))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=model_dtype(device), llm_int8_skip_modules=list(keep))


def checkpoint_dtype(model: str | Path) -> torch.dtype:
    """The dtype a checkpoint was saved in (its config's `dtype`; bf16 for the Qwen releases), float32 if unstated."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint(model))
    stated = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if stated is None and hasattr(config, "get_text_config"):
        text = config.get_text_config()
        stated = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None)
    if isinstance(stated, str):
        stated = getattr(torch, stated, None)
    return stated if isinstance(stated, torch.dtype) else torch.float32


def checkpoint(model: str | Path) -> str:
    """A checkpoint folder or hub id as from_pretrained takes it, with a leading ~ expanded (config files)."""
    return str(Path(model).expanduser()) if str(model).startswith("~") else str(model)


def tokenizer_of(processor):
    """The tokenizer inside a processor (a text checkpoint's processor is its tokenizer)."""
    return getattr(processor, "tokenizer", processor)


def load_processor(model: str | Path):
    """AutoProcessor of a checkpoint folder or hub id, with left padding (answers then end every row)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint(model))
    tokenizer_of(processor).padding_side = "left"
    return processor


def load_model(model: str | Path, family: Family, adapter: str | Path | None = None, device: str = "auto",
               quantization: Quantization = "none", force_quantization: bool = False,
               adapters: Sequence[str | Path] = (), dtype: torch.dtype | None = None):
    """(model in eval mode, processor) of `model` loaded as `family.model_class`, with `adapter` applied if given,
    in `dtype` (None: model_dtype of the device).

    `adapters` loads several LoRA adapters on the one base model, named `adapter-0`, `adapter-1`, ... in order
    (HFScorer switches between them per request): K fold adapters cost one model's memory and one load.
    Raises ValueError for a bad device or quantization request, or for both `adapter` and `adapters`.
    """
    net = load_weights(model, family, adapter, device, quantization, force_quantization, adapters, dtype)
    return net, load_processor(model)


def adapter_name(index: int) -> str:
    """The peft name of the index-th adapter that load_weights(adapters=...) loads."""
    return f"adapter-{index}"


def load_weights(model: str | Path, family: Family, adapter: str | Path | None = None, device: str = "auto",
                 quantization: Quantization = "none", force_quantization: bool = False,
                 adapters: Sequence[str | Path] = (), dtype: torch.dtype | None = None):
    """The model alone (eval mode) of load_model: for reloads that reuse a processor."""
    if adapter is not None and adapters:
        raise ValueError(f"give one adapter ({adapter}) or a list of adapters ({list(adapters)}), not both")
    import transformers

    target = pick_device(device)
    # transformers matches skip patterns from the start of the module name: ".*tower" reaches model.tower.*
    keep = ("lm_head", *(f".*{tower}" for tower in family.towers))
    quant = quantization_config(quantization, target, force_quantization, keep=keep)
    model_class = getattr(transformers, family.model_class)
    # loading a bf16 checkpoint as float32 holds both copies at the peak (the 1.5B: 9.2 GB resident, 2.8 in bf16)
    kwargs = {"dtype": dtype or model_dtype(target)}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": target.index or 0} if target.type == "cuda"
                      else "cpu")
    net = model_class.from_pretrained(checkpoint(model), **kwargs)
    if quant is None:
        net = net.to(target)
    adapters = [adapter] if adapter is not None else list(adapters)
    if adapters:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, str(adapters[0]), adapter_name=adapter_name(0))
        for i, path in enumerate(adapters[1:], start=1):
            net.load_adapter(str(path), adapter_name=adapter_name(i))
    return net.eval()


def encode(processor, family: Family, texts: Sequence[str], audios: Sequence[np.ndarray] | None = None,
           videos: Sequence[np.ndarray] | None = None, video_kwargs: dict | None = None,
           fps: Sequence[float | None] | None = None):
    """Processor call for a batch: tokens (left padded) plus audio features and video patches as given.

    `fps` (one per video, None for the family's default) sets the temporal position scale: Qwen2.5-VL reads it
    from per-video metadata (a bare `fps` argument is ignored there and 24 fps assumed); the Omni processor takes
    one `fps` per call, so a batch gets its mean.
    """
    kwargs = {"text": list(texts), "return_tensors": "pt", "padding": True}
    if audios:
        kwargs.update(audio=list(audios), **family.processor_kwargs)
    if videos:
        limits = family.video
        rates = [rate or limits.fps for rate in (fps or [None] * len(videos))]
        kwargs.update(videos=list(videos), fps=float(np.mean(rates)), min_pixels=limits.min_pixels,
                      max_pixels=limits.max_pixels,
                      video_metadata=[{"fps": rate, "total_num_frames": len(video)}
                                      for rate, video in zip(rates, videos, strict=True)])
        kwargs.update(video_kwargs or {})
    return processor(**kwargs)


def encode_requests(processor, family: Family, requests: Sequence[Request], suffixes: Sequence[str] | None = None,
                    video_kwargs: dict | None = None):
    """Processor inputs of `requests`, each prompt followed by its suffix (an answer, when training or scoring
    sequences). Raises ValueError when the batch mixes clips with and without a medium."""
    texts = [r.prompt + (suffixes[i] if suffixes else "") for i, r in enumerate(requests)]
    audios = [r.audio for r in requests if r.audio is not None]
    videos = [r.video for r in requests if r.video is not None]
    if (audios and len(audios) != len(requests)) or (videos and len(videos) != len(requests)):
        raise ValueError("a batch mixes clips with and without a medium; build the requests of one view per batch")
    return encode(processor, family, texts, audios, videos, video_kwargs,
                  [r.fps for r in requests] if videos else None)


@contextmanager
def last_positions_only(model, keep: int) -> Iterator[None]:
    """Apply the output projection (lm_head) to the last `keep` positions only while inside the block."""
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][:, -keep:], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def answer_logprobs(model, inputs, answers: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each row's answer tokens, which end the (left-padded) row.

    Returns (logprobs, mask), both (rows, K) with K the longest answer; mask is 1 on a row's answer tokens.
    Raises ValueError when a row does not end with its answer ids (a BPE merge across the prompt/answer boundary).
    """
    width = max(len(a) for a in answers)
    ids = inputs["input_ids"]
    mask = torch.zeros(len(answers), width, device=ids.device)
    for row, answer in enumerate(answers):
        if ids[row, -len(answer):].tolist() != list(answer):
            raise ValueError(f"row {row} does not end with its answer ids {list(answer)} (got "
                             f"{ids[row, -len(answer):].tolist()}): the prompt and answer merged into other tokens")
        mask[row, width - len(answer):] = 1
    with last_positions_only(model, width + 1):
        logits = model(**inputs).logits  # (rows, width + 1, V)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)           # position t predicts token t + 1
    picked = logp.gather(-1, ids[:, -width:, None]).squeeze(-1)        # (rows, width)
    return picked * mask, mask


def release_memory() -> None:
    """Collect garbage and, where CUDA is in use, hand cached blocks back to the driver."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_adapter_ids(n: int, adapters: Sequence[str]) -> list[int | None]:
    """The adapter of each of n requests when none is named: the only adapter, or the base model without any.

    Raises ValueError for a scorer of several adapters: each request must then name its own.
    """
    if len(adapters) > 1:
        raise ValueError(f"this scorer serves {len(adapters)} adapters: give adapter_ids (an index into `adapters`, "
                         "or None for the base model, per request)")
    return [0 if adapters else None] * n


class HFScorer:
    """Scores Requests with a loaded transformers model: (n, 6) label probabilities per call.

    A peft model's adapters (one, or the K that load_model(adapters=...) loaded) are switched per request:
    `scores(requests, adapter_ids)`, adapter_ids[i] the index of request i's adapter, None for the base model.
    """

    def __init__(self, model, processor, family: Family, plan: LabelScoring, batch_size: int = 8,
                 video_kwargs: dict | None = None):
        self.model = model
        self.processor = processor
        self.family = family
        self.plan = plan
        self.batch_size = batch_size
        self.video_kwargs = video_kwargs or {}
        # peft adapter names in load order; empty for a plain model
        self.adapters: list[str] = list(getattr(model, "peft_config", {}) or {})
        tokenizer_of(processor).padding_side = "left"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, requests: Sequence[Request], suffixes: Sequence[str] | None = None):
        return encode_requests(self.processor, self.family, requests, suffixes, self.video_kwargs).to(self.device)

    def score(self, requests: Sequence[Request]) -> np.ndarray:
        """(len(requests), 6) probabilities over the labels, in batches of `batch_size` clips."""
        return self.scores(requests)[0]

    @torch.no_grad()
    def scores(self, requests: Sequence[Request], adapter_ids: Sequence[int | None] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """((n, 6) probabilities over the labels, (n,) label mass) of `requests`, in batches of `batch_size`.

        adapter_ids[i]: index into `adapters` of request i's adapter, None for the base model; by default the only
        adapter (or the base model). Requests of one adapter are batched together; the model switches adapter
        once per group, not per request.
        """
        ids = list(adapter_ids) if adapter_ids is not None else default_adapter_ids(len(requests), self.adapters)
        if len(ids) != len(requests):
            raise ValueError(f"{len(ids)} adapter ids for {len(requests)} requests; give one per request")
        probs = np.zeros((len(requests), len(self.plan.words)), dtype=np.float32)
        mass = np.zeros(len(requests), dtype=np.float32)
        score = self._first_token if self.plan.mode == "first_token" else self._sequence
        for adapter in dict.fromkeys(ids):  # each adapter once, in order of first use
            rows = [i for i, a in enumerate(ids) if a == adapter]
            with self._using(adapter):
                for begin in range(0, len(rows), self.batch_size):
                    part = rows[begin:begin + self.batch_size]
                    probs[part], mass[part] = score([requests[i] for i in part])
        return probs, mass

    def _using(self, adapter: int | None):
        """A context in which the model runs with adapter `adapter` (an index into `adapters`) or none."""
        if adapter is None:
            return self.model.disable_adapter() if self.adapters else nullcontext()
        if not 0 <= adapter < len(self.adapters):
            raise ValueError(f"adapter id {adapter}: the scorer serves {len(self.adapters)} adapter(s)")
        name = self.adapters[adapter]
        if self.model.active_adapter != name:  # set_adapter also changes which parameters train: only on a change
            self.model.set_adapter(name)
        return nullcontext()

    def _first_token(self, batch: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        inputs = self._encode(batch, [self.plan.prefix] * len(batch))
        with last_positions_only(self.model, 1):
            logits = self.model(**inputs).logits[:, -1]  # (B, V): left padding puts the answer slot last
        logp = torch.log_softmax(logits.float(), dim=-1)[:, list(self.plan.token_ids)]  # (B, label spellings)
        return label_token_scores(logp.cpu().numpy(), self.plan)

    def _sequence(self, batch: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        plan = self.plan
        rows = [r for r in batch for _ in plan.answers]                     # each clip once per label
        suffixes = [plan.prefix + a + END_TOKEN for _ in batch for a in plan.answers]
        answers = [a for _ in batch for a in plan.answer_ids]
        logp, _ = answer_logprobs(self.model, self._encode(rows, suffixes), answers)
        return sequence_scores(logp.sum(-1).view(len(batch), len(plan.answers)).cpu().numpy())

    def close(self) -> None:
        """Drop the model: with no other reference left its memory is freed (CUDA cache emptied too)."""
        self.model = None
        release_memory()

    @torch.no_grad()
    def generate(self, request: Request, max_new_tokens: int = 32, adapter: bool = True) -> str:
        """Greedy free text after `request.prompt` (special tokens dropped).

        `adapter=False` switches a LoRA adapter off for the call: a teacher tuned to answer one word would
        otherwise answer a free-text question with one word too.
        """
        inputs = self._encode([request])
        switch_off = not adapter and hasattr(self.model, "disable_adapter")
        with self.model.disable_adapter() if switch_off else nullcontext():
            tokens = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = tokens[0, inputs["input_ids"].shape[1]:]
        return tokenizer_of(self.processor).decode(new, skip_special_tokens=True).strip()
