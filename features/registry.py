"""The extractor registry: names to small builder functions, chosen by dict lookup.

Usage:
    extractor = build_extractor("face", num_frames=8)
    extractor = build_extractor("hubert", model="/models/chinese-hubert-large")
    DEFAULT_EXTRACTORS          # the embedded CPU set: ("egemaps", "whisper", "face", "e5")
Builders import their extractor's module lazily, so listing or building never loads a model. Every builder
takes the runner's `num_frames`; only visual extractors use it (then part of their settings and cache
key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from features.base import Extractor


def _egemaps(num_frames: int = 8, **options: Any) -> Extractor:
    from features.audio import OpenSmileExtractor

    return OpenSmileExtractor(**options)


def _compare(num_frames: int = 8, **options: Any) -> Extractor:
    from features.audio import OpenSmileExtractor

    return OpenSmileExtractor(feature_set="ComParE_2016", **options)


def _emobase(num_frames: int = 8, **options: Any) -> Extractor:
    from features.audio import OpenSmileExtractor

    return OpenSmileExtractor(feature_set="emobase", **options)


def _face(num_frames: int = 8, **options: Any) -> Extractor:
    from features.face import FaceExtractor

    return FaceExtractor(num_frames=num_frames, **options)


def _e5(num_frames: int = 8, **options: Any) -> Extractor:
    from features.text import E5Extractor

    return E5Extractor(**options)


def _whisper(num_frames: int = 8, **options: Any) -> Extractor:
    from features.whisper import WhisperExtractor

    return WhisperExtractor(**options)


def _hubert(num_frames: int = 8, **options: Any) -> Extractor:
    from features.hf import HubertExtractor

    return HubertExtractor(**options)


def _clip(num_frames: int = 8, **options: Any) -> Extractor:
    from features.hf import ClipExtractor

    return ClipExtractor(num_frames=num_frames, **options)


def _hf_text(num_frames: int = 8, **options: Any) -> Extractor:
    from features.hf import HFTextExtractor

    return HFTextExtractor(**options)


def _llm_text(num_frames: int = 8, **options: Any) -> Extractor:
    from features.llm_text import LLMTextExtractor

    return LLMTextExtractor(**options)


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "egemaps": _egemaps,
    "compare": _compare,
    "emobase": _emobase,
    "face": _face,
    "e5": _e5,
    "whisper": _whisper,
    "hubert": _hubert,
    "clip": _clip,
    "hf_text": _hf_text,
    "llm_text": _llm_text,
}
DEFAULT_EXTRACTORS: tuple[str, ...] = ("egemaps", "whisper", "face", "e5")


def build_extractor(name: str, **options: Any) -> Extractor:
    """The extractor registered as `name`, built with `options` (e.g. model=..., num_frames=...).

    Raises:
        ValueError: for an unknown name (the message lists the registry) or an option the extractor lacks.
    """
    builder = EXTRACTORS.get(name)
    if builder is None:
        raise ValueError(f"unknown feature extractor {name!r}; registered: {', '.join(sorted(EXTRACTORS))}")
    try:
        return builder(**options)
    except TypeError as err:
        raise ValueError(f"bad options {sorted(options)} for feature extractor {name!r}: {err}") from err
