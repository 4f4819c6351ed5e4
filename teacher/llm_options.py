"""The options of an llm teacher agent (an AgentSpec's `options`, and the teacher block of teacher-train).

Usage:
    options = LLMAgentOptions.from_options({"model": "Qwen/Qwen2-Audio-7B-Instruct", "family": "qwen2_audio"})
    options.family_record(), options.request_settings()

Validating options needs no torch: a config is checked before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from clips.config import from_dict
from llm.families import FAMILY_BUILDERS, Family, get_family
from llm.prompts import PROMPT_SETS
from llm.requests import RequestSettings

BACKENDS = ("hf", "vllm")


@dataclass
class LLMAgentOptions:
    """The `options` of an llm agent spec (also the teacher block of teacher-train)."""

    # checkpoint folder or hub id (for Qwen2-Audio in vLLM: teacher-train's merged export)
    model: str
    # model family, a key of llm.families.FAMILY_BUILDERS
    family: str
    # what the model sees: audio, frames, face, audio+video or text; the family's first view when None
    view: str | None = None
    # peft LoRA adapter folder applied on top of `model`, or None
    adapter: str | None = None
    # prompt and label-word language: en or zh
    language: str = "en"
    # show the transcript above the question (the text view always does)
    transcript: bool = False
    # clips per forward pass (sequence scoring runs 6 rows per clip)
    batch_size: int = 8
    # "hf" (transformers) or "vllm"
    backend: str = "hf"
    # "auto" (first-token when label first tokens differ), "first_token" or "sequence"
    scoring: Literal["auto", "first_token", "sequence"] = "auto"
    # prefill the answer ("Emotion:" / "情绪：") and sum every case/space spelling of a label; False scores the
    # bare first tokens right after the assistant turn opens (the scheme before prefilling, kept to compare)
    prefill: bool = True
    # "auto", "cpu", "cuda" or "cuda:N" (hf backend)
    device: str = "auto"
    # hf backend weights: none, 4bit or 8bit (bitsandbytes, CUDA)
    quantization: Literal["none", "4bit", "8bit"] = "none"
    # frames sampled per clip for video views
    num_frames: int = 8
    # longest audio decoded, in seconds (Qwen2-Audio's window is 30 s)
    max_seconds: float = 30.0
    # longer side of decoded frames in pixels, before the face crop or the processor's own resizing
    frame_side: int = 448
    # worker processes decoding clips ahead of the model (0: decode in the scoring process)
    decode_workers: int = 2
    # folder of decoded media shared by a run's agents and teacher-train (llm.decoded); None keeps none on disk
    media_cache: str | None = None
    # video limits overriding the family's defaults (None keeps them)
    fps: float | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    # vLLM engine arguments added to the defaults (max_model_len, gpu_memory_utilization, ...)
    engine: dict[str, Any] = field(default_factory=dict)
    # hf backend weights on CPU: float32, or bfloat16 (half the memory; faster on CPUs with AVX512-BF16 or AMX)
    cpu_dtype: Literal["float32", "bfloat16"] = "float32"
    # label-prior correction: "none", or "content_free" (divide by the mean scores of content-free lines; text view)
    calibration: Literal["none", "content_free"] = "none"
    # in-context examples: the k most similar labelled lines with their labels above the question (0: none)
    incontext_k: int = 0
    # cached text extractor of the run whose vectors pick the in-context examples (cosine similarity)
    incontext_features: str = "e5"

    def __post_init__(self) -> None:
        problems = []
        if self.family not in FAMILY_BUILDERS:
            problems.append(f"family={self.family!r}: use one of {', '.join(FAMILY_BUILDERS)}")
        else:
            family = get_family(self.family)
            self.view = self.view or family.views[0]
            if self.view not in family.views:
                problems.append(f"view={self.view!r}: family {self.family} takes {', '.join(family.views)}")
        if self.language not in PROMPT_SETS:
            problems.append(f"language={self.language!r}: use one of {', '.join(PROMPT_SETS)}")
        if self.backend not in BACKENDS:
            problems.append(f"backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.scoring not in ("auto", "first_token", "sequence"):
            problems.append(f"scoring={self.scoring!r}: use auto, first_token or sequence")
        if self.quantization not in ("none", "4bit", "8bit"):
            problems.append(f"quantization={self.quantization!r}: use none, 4bit or 8bit")
        if self.decode_workers < 0:
            problems.append(f"decode_workers={self.decode_workers}: use 0 or more worker processes")
        for name in ("batch_size", "num_frames", "frame_side"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: use a positive number")
        if self.cpu_dtype not in ("float32", "bfloat16"):
            problems.append(f"cpu_dtype={self.cpu_dtype!r}: use float32 or bfloat16")
        if self.calibration not in ("none", "content_free"):
            problems.append(f"calibration={self.calibration!r}: use none or content_free")
        elif self.calibration == "content_free" and self.view != "text":
            problems.append(f"calibration=content_free needs view text (view={self.view!r}); use calibration: none")
        if self.incontext_k < 0:
            problems.append(f"incontext_k={self.incontext_k}: use 0 (no examples) or a positive number of lines")
        elif self.incontext_k and self.calibration != "none":
            problems.append("incontext_k with calibration=content_free: the content-free prior is the zero-shot "
                            "prompt's; use calibration: none with in-context examples")
        if self.max_seconds <= 0:
            problems.append(f"max_seconds={self.max_seconds}: use a positive number of seconds")
        if problems:
            raise ValueError("llm agent options: " + "; ".join(problems))

    @classmethod
    def from_options(cls, options: dict[str, Any], agent: str = "llm agent") -> LLMAgentOptions:
        """Options from an AgentSpec's `options` dict; raises ConfigError/ValueError naming the agent and keys."""
        return from_dict(cls, dict(options), where=f"agent {agent!r} options")

    def family_record(self) -> Family:
        """The family with this agent's video limits applied."""
        family = get_family(self.family)
        if family.video is None:
            return family
        overrides = {k: getattr(self, k) for k in ("fps", "min_pixels", "max_pixels") if getattr(self, k) is not None}
        return dataclasses.replace(family, video=dataclasses.replace(family.video, **overrides))

    def scoring_plan(self, tokenizer):
        """The LabelScoring of this agent's language, scoring mode and prefill choice on `tokenizer`."""
        from llm.prompts import scoring_plan

        return scoring_plan(self.language, tokenizer, self.scoring, self.prefill)

    def decode_settings(self):
        """What this agent decodes of a clip (llm.decoded.DecodeSettings): the cache key of its media."""
        from llm.decoded import DecodeSettings

        return DecodeSettings(num_frames=self.num_frames, max_seconds=self.max_seconds, frame_side=self.frame_side,
                              faces=self.view == "face")

    def torch_dtype(self):
        """The weights' torch dtype for the hf backend: bf16 on CUDA, `cpu_dtype` on CPU."""
        import torch

        from llm.hf_backend import model_dtype, pick_device

        device = pick_device(self.device)
        return model_dtype(device) if device.type == "cuda" else getattr(torch, self.cpu_dtype)

    def request_settings(self) -> RequestSettings:
        return RequestSettings(view=self.view, language=self.language, transcript=self.transcript)
