"""Embedded audio extractors: openSMILE functionals on the clip's 16 kHz audio (eGeMAPSv02 88-d by default).

Usage:
    extractor = OpenSmileExtractor()                            # registry "egemaps": eGeMAPSv02, (88,)
    extractor = OpenSmileExtractor(feature_set="ComParE_2016")  # registry "compare": (6373,)
    result = extractor.extract(clip, transcript=None)           # result.vector: (dim,) float32, or None
One Smile object per extractor (so per worker process) serves every clip; openSMILE itself still builds its
processing graph for each signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from clips.media import SAMPLE_RATE, DecodedClip
from features.base import FeatureResult, finite_vector, missing

# functionals per feature set (openSMILE 2.6)
FEATURE_SETS: dict[str, int] = {"eGeMAPSv02": 88, "ComParE_2016": 6373, "emobase": 988}
# registry name of each feature set
REGISTRY_NAMES: dict[str, str] = {"eGeMAPSv02": "egemaps", "ComParE_2016": "compare", "emobase": "emobase"}


@dataclass
class OpenSmileExtractor:
    """openSMILE functionals; audio missing or shorter than `min_seconds` gives a missing result."""

    # "eGeMAPSv02" (88, the default), "ComParE_2016" (6373) or "emobase" (988)
    feature_set: Literal["eGeMAPSv02", "ComParE_2016", "emobase"] = "eGeMAPSv02"
    # clips with less audio than this have no usable prosody: missing, flagged "no_audio"
    min_seconds: float = 0.1
    name: str = field(default="egemaps", init=False)
    modality: str = field(default="audio", init=False)
    dim: int = field(default=88, init=False)
    _smile: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"openSMILE feature_set={self.feature_set!r} is unknown; use one of "
                             f"{', '.join(FEATURE_SETS)}")
        self.name = REGISTRY_NAMES[self.feature_set]
        self.dim = FEATURE_SETS[self.feature_set]

    def settings(self) -> dict:
        """The feature set, level and the minimum audio length."""
        return {"feature_set": self.feature_set, "level": "functionals", "min_seconds": self.min_seconds}

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(dim,) functionals of clip.audio with non-finite values set to 0; missing without enough audio."""
        if clip.audio is None or clip.audio.size < self.min_seconds * SAMPLE_RATE:
            return missing("audio")
        if self._smile is None:
            import opensmile  # imported here: building the registry must stay cheap

            self._smile = opensmile.Smile(
                feature_set=getattr(opensmile.FeatureSet, self.feature_set),
                feature_level=opensmile.FeatureLevel.Functionals,
            )
        audio = np.ascontiguousarray(clip.audio, dtype=np.float32)
        frame = self._smile.process_signal(audio, SAMPLE_RATE)
        return FeatureResult(finite_vector(frame.to_numpy(), self.dim))
