"""Per-family quirks of the Qwen teachers, as a registry of small builder functions returning a typed record.

Usage:
    family = get_family("qwen2_audio")
    family.model_class                         # "Qwen2AudioForConditionalGeneration"
    family.conversation(prompt, audio=True, video=False)   # chat messages for processor.apply_chat_template
    family.lora_targets                        # regex over module names: the language model only

A family says what a model takes and how; it never names a checkpoint. A user points an agent at a local folder or a
hub id (documentation examples: Qwen/Qwen2-Audio-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen2.5-Omni-7B,
Qwen/Qwen2.5-7B-Instruct).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Media = Literal["audio", "video", "audio+video", "text"]
View = Literal["audio", "frames", "face", "audio+video", "text"]

# what each view feeds the model: (audio?, video?)
VIEW_MEDIA: dict[str, tuple[bool, bool]] = {
    "audio": (True, False),
    "frames": (False, True),
    "face": (False, True),
    "audio+video": (True, True),
    "text": (False, False),
}

# what a content part's media key holds: the media travel beside the prompt, never through the template
MEDIA_PLACEHOLDER = "clip"

_LM_PROJ = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class VideoLimits:
    """How frames are given to a vision family (Qwen2-VL style dynamic resolution)."""

    # frames per second the sampled frames stand for (sets the temporal position ids)
    fps: float = 2.0
    # smallest and largest pixel count of one frame after resizing (multiples of 28x28 for Qwen2.5-VL)
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 128 * 28 * 28


@dataclass(frozen=True)
class Family:
    """One model family: its class, the media it takes and how, its chat layout and LoRA targets."""

    # registry key
    name: str
    # transformers class that loads a checkpoint of this family
    model_class: str
    # the media the model can take
    media: Media
    # agent views this family can score
    views: tuple[str, ...]
    # video handling (None: the family takes no video)
    video: VideoLimits | None
    # audio sampling rate the processor expects (None: no audio)
    sample_rate: int | None
    # regex (peft `target_modules`, matched against the whole module name): language model projections only
    lora_targets: str
    # whether vLLM serves LoRA adapters for this architecture (else serve a merged export)
    vllm_lora: bool
    # vLLM prompt placeholders per modality, in the order they appear (the vLLM docs' examples)
    vllm_placeholders: dict[str, str] = field(default_factory=dict)
    # extra processor call arguments
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    # module names of the audio/vision encoders and projectors: kept unquantised by QLoRA, never LoRA targets
    towers: tuple[str, ...] = ()
    # prefix vLLM's loader puts before the trained model's module names (None: the names match as they are)
    vllm_adapter_prefix: str | None = None

    def conversation(self, prompt: str, audio: bool, video: bool) -> list[dict[str, Any]]:
        """Chat messages for one clip: media parts first, then the question text."""
        if self.media == "text":
            return [{"role": "user", "content": prompt}]
        content: list[dict[str, Any]] = []
        # Omni: separate <|VIDEO|> and <|AUDIO|> segments, video first as in the Qwen2.5-Omni examples. Each part
        # carries its key as well as its type: the official Qwen2-Audio template tests `'audio' in content`.
        if video:
            content.append({"type": "video", "video": MEDIA_PLACEHOLDER})
        if audio:
            content.append({"type": "audio", "audio": MEDIA_PLACEHOLDER})
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}]

    def check_view(self, view: str) -> None:
        """Raises ValueError naming the family and its views when it cannot score `view`."""
        if view not in self.views:
            raise ValueError(f"family {self.name!r} cannot score view {view!r}; its views: {', '.join(self.views)}")


def _qwen2_audio() -> Family:
    return Family(
        name="qwen2_audio", model_class="Qwen2AudioForConditionalGeneration", media="audio", views=("audio",),
        video=None, sample_rate=16_000,
        lora_targets=rf".*language_model.*\.{_LM_PROJ}",
        # vLLM's supported-models table has no LoRA for Qwen2-Audio: teacher-train writes a merged export
        vllm_lora=False,
        vllm_placeholders={"audio": "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"},
        processor_kwargs={"sampling_rate": 16_000},
        towers=("audio_tower", "multi_modal_projector"),
    )


def _qwen2_5_vl() -> Family:
    return Family(
        name="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration", media="video", views=("frames", "face"),
        video=VideoLimits(), sample_rate=None,
        lora_targets=rf".*language_model.*\.{_LM_PROJ}",
        vllm_lora=True,
        vllm_placeholders={"video": "<|vision_start|><|video_pad|><|vision_end|>"},
        towers=("visual",),
    )


def _qwen2_5_omni() -> Family:
    return Family(
        name="qwen2_5_omni", model_class="Qwen2_5OmniThinkerForConditionalGeneration", media="audio+video",
        views=("audio+video", "audio", "frames", "face"), video=VideoLimits(), sample_rate=16_000,
        # the thinker keeps its language model at `model.` (audio_tower.* and visual.* are the encoders)
        lora_targets=rf"model\.layers\.\d+\.(self_attn|mlp)\.{_LM_PROJ}",
        vllm_lora=True,
        vllm_placeholders={"video": "<|vision_bos|><|VIDEO|><|vision_eos|>",
                           "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>"},
        processor_kwargs={"sampling_rate": 16_000},
        towers=("audio_tower", "visual"),
        # vLLM serves the thinker out of a full Omni checkpoint: its modules sit under `thinker.`
        vllm_adapter_prefix="thinker.",
    )


def _qwen2_5_text() -> Family:
    return Family(
        name="qwen2_5_text", model_class="Qwen2ForCausalLM", media="text", views=("text",), video=None,
        sample_rate=None, lora_targets=rf"model\.layers\.\d+\.(self_attn|mlp)\.{_LM_PROJ}", vllm_lora=True,
    )


FAMILY_BUILDERS: dict[str, Callable[[], Family]] = {
    "qwen2_audio": _qwen2_audio,
    "qwen2_5_vl": _qwen2_5_vl,
    "qwen2_5_omni": _qwen2_5_omni,
    "qwen2_5_text": _qwen2_5_text,
}


def get_family(name: str) -> Family:
    """The Family registered as `name`; raises ValueError listing the known families."""
    if name not in FAMILY_BUILDERS:
        raise ValueError(f"unknown model family {name!r}; use one of {', '.join(FAMILY_BUILDERS)}")
    return FAMILY_BUILDERS[name]()
