"""One request builder shared by the transformers and vLLM backends: a clip's media -> chat prompt + media payload.

Usage:
    media = clip_media(decode_clip(ref.path, num_frames=8), view="face", transcript=ref.transcript)  # llm.views
    request = build_request(family, processor, media, RequestSettings(view="face", language="en"))
    request.prompt       # chat template applied, ends with "<|im_start|>assistant\n"; one placeholder per medium
    request.audio        # (samples,) float32 16 kHz or None;  request.video: (T, H, W, 3) uint8 or None
    request.fps          # T / clip duration: 8 frames of a 5 s clip stand for 1.6 fps, not a fixed 2.0

build_request returns None when the view needs a medium the clip lacks: the agent then gives the clip a NaN row.
The prompt text is the same for both backends: the HF processor expands its placeholders into feature tokens,
vLLM does the same inside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm.families import VIEW_MEDIA, Family
from llm.prompts import build_prompt


@dataclass
class ClipMedia:
    """The media of one clip after the view is chosen (face crops already cut for the "face" view)."""

    name: str
    # (samples,) float32 mono at 16 kHz, or None
    audio: np.ndarray | None
    # (T, H, W, 3) uint8 RGB frames or face crops, or None
    frames: np.ndarray | None
    # cleaned transcript, or None
    transcript: str | None = None
    # seconds the frames span (the decoded clip's duration), or None when unknown
    duration: float | None = None


@dataclass(frozen=True)
class RequestSettings:
    """What shapes a prompt: the view, the language, and whether the transcript is shown."""

    view: str
    language: str = "en"
    # show the transcript above the question (always for the "text" view)
    transcript: bool = False


@dataclass
class Request:
    """One model call's inputs for one clip."""

    name: str
    # chat text up to and including the assistant turn's opening
    prompt: str
    audio: np.ndarray | None
    # (T, H, W, 3) uint8, T even (Qwen video patches span 2 frames)
    video: np.ndarray | None
    # frames per second the sampled frames stand for: their count over the clip's duration (None: the family's)
    fps: float | None = None


def build_request(family: Family, processor, media: ClipMedia, settings: RequestSettings,
                  question: str | None = None, preamble: str = "") -> Request | None:
    """The Request of `media` for `family`, or None when the view's media (or the transcript for "text") is missing.

    `question` replaces the classification prompt (free-text use: `ask`); `preamble` goes above it (in-context
    examples, llm.incontext). `processor` is the family's HF processor or, for text models, the tokenizer: only its
    chat template is used.
    """
    wants_audio, wants_video = VIEW_MEDIA[settings.view]
    if (wants_audio and media.audio is None) or (wants_video and media.frames is None):
        return None
    if settings.view == "text" and not media.transcript:
        return None
    show_transcript = settings.transcript or settings.view == "text"
    transcript = media.transcript if show_transcript else None
    if question is None:
        text = build_prompt(settings.language, settings.view, transcript)
    else:
        text = f"{transcript}\n{question}" if transcript else question
    conversation = family.conversation(preamble + text, audio=wants_audio, video=wants_video)
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return Request(name=media.name, prompt=prompt, audio=media.audio if wants_audio else None,
                   video=even_frames(media.frames) if wants_video else None,
                   fps=frame_rate(media) if wants_video else None)


def frame_rate(media: ClipMedia) -> float | None:
    """Sampled frames per second of clip time: T frames spread uniformly over the duration; None when unknown."""
    if media.frames is None or not media.duration or media.duration <= 0:
        return None
    return len(media.frames) / media.duration


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Frames with the last one repeated when T is odd: a Qwen video patch spans 2 frames."""
    if len(frames) % 2:
        frames = np.concatenate([frames, frames[-1:]])
    return frames
