"""Synthetic speech of the demo clips: a voiced source with formants, whose prosody carries the audio group.

Usage:
    from demo.audio import audio_cues, synth_speech
    wave = synth_speech(audio_cues("angry", 0.9, rng), seconds=2.0, rng=rng)   # (samples,) float32 at 16 kHz
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clips.media import SAMPLE_RATE

# Audio cue group of each class: {neutral, sad} low and slow, {angry, happy} loud and fast, {worried, surprise}
# rising pitch. The visual groups (demo.faces) cross these, so only both modalities together pin down a class.
AUDIO_GROUP: dict[str, int] = {"neutral": 0, "sad": 0, "angry": 1, "happy": 1, "worried": 2, "surprise": 2}

@dataclass(frozen=True)
class AudioCues:
    """Prosody of one synthetic utterance; the group cues plus the speaker."""

    # speaker's resting pitch in Hz
    f0_hz: float
    # pitch level relative to the speaker, semitones
    pitch_offset: float
    # spread of syllable pitch accents, semitones
    pitch_range: float
    # pitch change from start to end of the utterance, semitones (positive = rising, weighted to the end)
    contour: float
    # linear level before the recording gain
    loudness: float
    # syllables per second
    syllable_rate: float
    # harmonic roll-off exponent (lower = pressed, brighter voice)
    tilt: float
    # aspiration noise relative to the voice
    breath: float


# Cue values at full expression, per audio group, and the unmarked voice that weak expressions fall back to.
_AUDIO_REST = AudioCues(0.0, 0.0, 3.0, -1.0, 0.5, 4.0, 1.1, 0.06)
_AUDIO_PEAKS: tuple[AudioCues, ...] = (
    AudioCues(0.0, -3.0, 1.5, -4.0, 0.22, 2.8, 1.6, 0.04),  # low, flat, quiet, slow: neutral/sad
    AudioCues(0.0, 5.0, 8.0, -1.0, 1.0, 6.0, 0.6, 0.04),  # high, wide, loud, fast, bright: angry/happy
    AudioCues(0.0, 3.0, 4.0, 9.0, 0.5, 4.2, 1.1, 0.2),  # rising, breathy: worried/surprise
)
# per-clip spread around the expressed cues, in each field's unit
_AUDIO_JITTER = AudioCues(0.0, 1.2, 1.0, 1.5, 0.08, 0.5, 0.15, 0.03)
# vowel formants (F1, F2, F3) in Hz: a, i, u, e, o
_VOWELS = np.array(
    [[800, 1200, 2500], [300, 2300, 3000], [350, 800, 2300], [500, 1800, 2500], [500, 900, 2400]]
)
_FORMANT_BANDWIDTH = np.array([90.0, 110.0, 160.0])
_FORMANT_GAIN = np.array([1.0, 0.6, 0.3])
_TRACK_RATE = 200  # Hz of the pitch, level and formant tracks before interpolation to samples
_MAX_HARMONIC_HZ = 4000.0
_MAX_HARMONICS = 40


def audio_cues(label: str, strength: float, rng: np.random.Generator) -> AudioCues:
    """Cues of `label`'s audio group at `strength` (0 = unmarked, 1 = full), plus speaker and clip noise."""
    peak = _AUDIO_PEAKS[AUDIO_GROUP[label]]
    values = {}
    for name in AudioCues.__dataclass_fields__:
        rest, full, spread = getattr(_AUDIO_REST, name), getattr(peak, name), getattr(_AUDIO_JITTER, name)
        values[name] = rest + strength * (full - rest) + spread * rng.normal()
    values["f0_hz"] = float(np.exp(rng.uniform(np.log(95.0), np.log(240.0))))
    values["loudness"] = max(values["loudness"], 0.08)
    values["syllable_rate"] = max(values["syllable_rate"], 1.5)
    values["tilt"] = max(values["tilt"], 0.3)
    values["breath"] = max(values["breath"], 0.0)
    return AudioCues(**values)


def _syllables(cues: AudioCues, seconds: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(start, duration) of each syllable, with a pause somewhere half of the time."""
    out: list[tuple[float, float]] = []
    t = rng.uniform(0.05, 0.2)
    pause_at = rng.uniform(0.3, 0.7) * seconds if rng.random() < 0.5 else np.inf
    while True:
        duration = rng.uniform(0.75, 1.25) / cues.syllable_rate
        if t + duration > seconds - 0.08:
            return out
        out.append((t, duration))
        t += duration
        if t > pause_at:
            t += rng.uniform(0.12, 0.3)
            pause_at = np.inf


def synth_speech(cues: AudioCues, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A speech-like utterance: harmonic voice with a pitch contour, syllables and formants, plus noise.

    Returns (samples,) float32 in [-1, 1] at SAMPLE_RATE.
    """
    n = int(round(seconds * SAMPLE_RATE))
    frames = int(np.ceil(seconds * _TRACK_RATE)) + 2
    frame_t = np.arange(frames) / _TRACK_RATE
    level = np.zeros(frames)
    semitones = np.zeros(frames)
    formants = np.tile(_VOWELS[0].astype(float), (frames, 1))
    burst = np.zeros(frames)
    for start, duration in _syllables(cues, seconds, rng):
        inside = (frame_t >= start) & (frame_t < start + duration)
        phase = (frame_t[inside] - start) / duration
        # voiced nucleus rises fast and decays: a skewed bump; a tone-like pitch slope within each syllable
        level[inside] = np.sin(np.pi * phase**0.7) ** 0.8
        accent = rng.uniform(-0.5, 0.5) * cues.pitch_range
        slope = rng.uniform(-0.5, 0.5) * cues.pitch_range
        semitones[inside] = accent + slope * (phase - 0.5)
        formants[inside] = _VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.92, 1.08)
        if rng.random() < 0.5:
            burst[inside & (frame_t < start + 0.035)] = 1.0
    # pitch trend over the utterance; rises are weighted to the end, like a question
    position = frame_t / seconds
    trend = cues.contour * (position**2 if cues.contour > 0 else position)
    semitones = _smooth(semitones, 5) + cues.pitch_offset + trend + np.cumsum(rng.normal(0, 0.05, frames))
    formants = np.stack([_smooth(formants[:, i], 7) for i in range(3)], axis=1)
    level = _smooth(level, 3)

    sample_t = np.arange(n) / SAMPLE_RATE
    f0 = cues.f0_hz * 2.0 ** (np.interp(sample_t, frame_t, semitones) / 12.0)  # (samples,)
    # wrapped before the float32 cast, so that k * phase keeps its precision in long clips (k is an integer)
    phase = np.mod(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE, 2 * np.pi)
    # the (harmonics, samples) synthesis dominates the cost: stop at 4 kHz or 40 harmonics (enough for F1-F3)
    harmonics = int(
        np.clip(_MAX_HARMONIC_HZ // (cues.f0_hz * 2 ** (semitones.min() / 12.0)), 1, _MAX_HARMONICS)
    )
    k = np.arange(1, harmonics + 1)[:, None]  # (K, 1)
    # harmonic amplitudes on the coarse track: spectral tilt times the formant envelope at k * f0
    track_f0 = cues.f0_hz * 2.0 ** (semitones / 12.0)
    freq = k * track_f0[None, :]  # (K, frames)
    resonance = sum(
        g / (1.0 + ((freq - formants[None, :, i]) / bw) ** 2)
        for i, (g, bw) in enumerate(zip(_FORMANT_GAIN, _FORMANT_BANDWIDTH, strict=True))
    )
    amplitude = k ** (-cues.tilt) * (resonance + 0.03) * (freq < _MAX_HARMONIC_HZ)  # (K, frames)
    # synthesise in blocks of one track step, so amplitudes interpolate by broadcasting rather than gathers
    hop = SAMPLE_RATE // _TRACK_RATE
    blocks = -(-n // hop)
    block_phase = np.pad(phase, (0, blocks * hop - n), mode="edge").reshape(blocks, hop).astype(np.float32)
    waves = np.sin(k.astype(np.float32)[:, :, None] * block_phase[None])  # (K, blocks, hop)
    amplitude = amplitude.astype(np.float32)
    start_amp, step_amp = amplitude[:, :blocks], np.diff(amplitude, axis=1)[:, :blocks]  # (K, blocks)
    ramp = np.arange(hop, dtype=np.float32) / hop
    voice = np.einsum("kb,kbj->bj", start_amp, waves) + np.einsum("kb,kbj->bj", step_amp, waves) * ramp
    voice = voice.reshape(-1)[:n]
    envelope = np.interp(sample_t, frame_t, level)
    voice = voice * envelope
    loud_part = envelope > 0.3
    if loud_part.any():
        voice /= np.sqrt(np.mean(voice[loud_part] ** 2)) + 1e-9

    # aspiration follows the voice, consonant bursts sit at some syllable onsets; both high-passed
    noise = np.diff(rng.normal(0, 1, n + 1)) * 0.5
    breath = cues.breath * envelope * noise
    bursts = 0.5 * np.interp(sample_t, frame_t, burst) * np.diff(rng.normal(0, 1, n + 1))
    gain = cues.loudness * 0.12 * 10 ** (rng.normal(0, 2.0) / 20)  # recording level varies by +-2 dB
    wave = gain * (voice + breath + bursts) + rng.normal(0, 0.002, n)
    return np.clip(wave, -0.99, 0.99).astype(np.float32)


def _smooth(track: np.ndarray, width: int) -> np.ndarray:
    """Moving average of odd `width` with edge padding, same length."""
    pad = width // 2
    padded = np.pad(track, pad, mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")
