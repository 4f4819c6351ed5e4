"""Embedded audio extractor: openSMILE eGeMAPSv02 functionals (88-d) on the clip's 16 kHz audio.

Usage:
    extractor = EgemapsExtractor()
    result = extractor.extract(clip, transcript=None)      # result.vector: (88,) float32, or None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clips.media import SAMPLE_RATE, DecodedClip
from features.base import FeatureResult, finite_vector, missing


@dataclass
class EgemapsExtractor:
    """eGeMAPSv02 functionals; audio missing or shorter than `min_seconds` gives a missing result."""

    # clips with less audio than this have no usable prosody: missing, flagged "no_audio"
    min_seconds: float = 0.1
    name: str = field(default="egemaps", init=False)
    modality: str = field(default="audio", init=False)
    dim: int = field(default=88, init=False)
    _smile: Any = field(default=None, init=False, repr=False)

    def settings(self) -> dict:
        """The feature set, level and the minimum audio length."""
        return {"feature_set": "eGeMAPSv02", "level": "functionals", "min_seconds": self.min_seconds}

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(88,) functionals of clip.audio with non-finite values set to 0; missing without enough audio."""
        if clip.audio is None or clip.audio.size < self.min_seconds * SAMPLE_RATE:
            return missing("audio")
        if self._smile is None:
            import opensmile  # imported here: building the registry must stay cheap

            self._smile = opensmile.Smile(
                feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
            )
        audio = np.ascontiguousarray(clip.audio, dtype=np.float32)
        frame = self._smile.process_signal(audio, SAMPLE_RATE)
        return FeatureResult(finite_vector(frame.to_numpy(), self.dim))
