"""A deterministic synthetic corpus in the MER2024 raw layout, so the whole pipeline runs offline on CPU.

Usage:
    from clips.demo import DemoConfig, make_demo
    summary = make_demo(Path("demo-run/data"), DemoConfig(labelled=240, unlabelled=960, seed=0))
    summary.counts["labelled"]["surprise"], summary.broken_names("no_video")
With workers > 1 the clips render in spawned processes, so a script must call make_demo under
`if __name__ == "__main__":` (spawn re-imports the main module).

Every clip shows its emotion in all three modalities, each imperfectly. Each modality only separates groups of
classes, and the groups cross, so that audio and visual together pin down one class while either alone cannot:
    audio groups:  {neutral, sad} low and slow, {angry, happy} loud and fast, {worried, surprise} rising pitch
    visual groups: {neutral, worried} resting face, {angry, sad} frown and knitted brows,
                   {happy, surprise} open smile and raised brows
    text: a phrase of the clip's emotion for about 40% of clips, a misleading phrase of another emotion for
          about 10%, else an everyday neutral line.
Per-clip nuisance (speaker pitch, face identity, head motion, expression strength, a share of ambiguous clips)
keeps a fused classifier well below 100%. A few clips of each set are broken on purpose (see BROKEN_KINDS),
like the defects of the real release. The same config and seed write identical CSVs and media, whatever the
number of workers: each clip draws from its own numpy Generator seeded with (seed, set, index).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np
from tqdm import tqdm

from clips.config import ConfigError
from clips.io import atomic_write_text
from clips.labels import LABELS

SAMPLE_RATE = 16_000
LABELLED_DIR = "video-labeled"
UNLABELLED_DIR = "video-unlabeled-with-test2noise"
LABEL_CSV = "label-disdim.csv"
TRANSCRIPTION_CSV = "label-transcription.csv"
MERGE_CSV = "transcription-merge.csv"
HIDDEN_LABELS_CSV = "hidden-labels.csv"
MANIFEST = "demo-manifest.json"

Split = Literal["labelled", "unlabelled"]
BrokenKind = Literal["unreadable", "no_audio", "no_video", "no_face", "empty_transcript"]
BROKEN_KINDS: tuple[BrokenKind, ...] = ("unreadable", "no_audio", "no_video", "no_face", "empty_transcript")
# variants cycled within a kind, so broken_per_kind=2 gives both; "" where a kind has one form
_VARIANTS: dict[str, tuple[str, ...]] = {
    "unreadable": ("zero_bytes", "truncated"),
    "no_audio": ("",),
    "no_video": ("",),
    "no_face": ("",),
    "empty_transcript": ("empty", "garbage"),
}
_GARBAGE_TRANSCRIPT = "<|zh-CN|>"
# MER2024 train class counts (official order), the shape every demo set copies
_TRAIN_COUNTS: dict[str, int] = {
    "neutral": 1248,
    "angry": 1208,
    "happy": 1038,
    "sad": 730,
    "worried": 616,
    "surprise": 190,
}
_SPLIT_ID: dict[str, int] = {"labelled": 0, "unlabelled": 1}
_PREFIX: dict[str, str] = {"labelled": "sample_", "unlabelled": "samplenew3_"}
# a stream key no clip index reaches, for the per-set plan (labels and broken clips)
_PLAN_KEY = 2**32 - 1

# Cue group of each class, per modality. The groups cross: an audio and a visual group meet in one class.
AUDIO_GROUP: dict[str, int] = {"neutral": 0, "sad": 0, "angry": 1, "happy": 1, "worried": 2, "surprise": 2}
VISUAL_GROUP: dict[str, int] = {"neutral": 0, "worried": 0, "angry": 1, "sad": 1, "happy": 2, "surprise": 2}


@dataclass
class DemoConfig:
    """Size, media format and seed of a synthetic demo corpus."""

    # labelled clips (video-labeled/, with labels and checked transcripts)
    labelled: int = 120
    # unlabelled pool clips (true labels go to hidden-labels.csv)
    unlabelled: int = 1080
    # clip length in seconds
    seconds: float = 2.0
    # video frame rate
    fps: int = 10
    # frame side in pixels (square frames; even, for yuv420p)
    size: int = 160
    # broken clips of each kind, in each of the two sets
    broken_per_kind: int = 2
    # corpus seed: the same seed writes the same corpus
    seed: int = 0
    # worker processes; 1 renders in this process
    workers: int = 2

    def __post_init__(self) -> None:
        problems = []
        min_clips = len(BROKEN_KINDS) * self.broken_per_kind + len(LABELS)
        for name in ("labelled", "unlabelled"):
            value = getattr(self, name)
            if value < min_clips:
                problems.append(
                    f"{name}={value}: need at least {min_clips} clips ({len(BROKEN_KINDS)} broken kinds x "
                    f"broken_per_kind={self.broken_per_kind}, plus one normal clip per class); raise {name} "
                    "or lower broken_per_kind"
                )
        if not 0.5 <= self.seconds <= 30:
            problems.append(f"seconds={self.seconds}: use a clip length between 0.5 and 30")
        if not 1 <= self.fps <= 60:
            problems.append(f"fps={self.fps}: use a frame rate between 1 and 60")
        if self.size < 96 or self.size % 2:
            problems.append(
                f"size={self.size}: use an even frame side of at least 96 pixels (the face must pass the "
                "Haar detector's 40-pixel minimum with margin, and yuv420p needs even sides)"
            )
        if self.broken_per_kind < 0:
            problems.append(f"broken_per_kind={self.broken_per_kind}: use 0 or more")
        if self.seed < 0:
            problems.append(f"seed={self.seed}: use a non-negative integer")
        if self.workers < 1:
            problems.append(f"workers={self.workers}: use 1 or more worker processes")
        if problems:
            raise ConfigError("DemoConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class BrokenClip:
    """A clip broken on purpose, and how."""

    # clip name (file stem)
    name: str
    # the set it belongs to
    split: Split
    # what is broken; the matching flag of clips.status.STATUSES
    kind: BrokenKind
    # the form within the kind: zero_bytes/truncated (unreadable), empty/garbage (empty_transcript), else ""
    variant: str
    # its true label (it is still listed in the CSVs)
    label: str


@dataclass
class DemoSummary:
    """What make_demo wrote."""

    # corpus root (the folder given to make_demo)
    root: Path
    # labelled clips folder
    labelled_dir: Path
    # unlabelled pool folder
    unlabelled_dir: Path
    # name,discrete for the labelled clips
    label_csv: Path
    # name,chinese for the labelled clips
    transcription_csv: Path
    # name,chinese for every clip
    merge_csv: Path
    # name,discrete for the pool, for scoring only
    hidden_labels_csv: Path
    # config, seed and broken list as JSON
    manifest: Path
    # clips per set ("labelled", "unlabelled") and label, broken clips included
    counts: dict[str, dict[str, int]]
    # clips broken on purpose
    broken: list[BrokenClip]
    # wall time of make_demo
    seconds: float = 0.0
    # clips per text kind: "keyword" (own emotion), "misleading" (another emotion), "neutral" (everyday line)
    text_kinds: dict[str, int] = field(default_factory=dict)

    def broken_names(self, kind: BrokenKind | None = None, split: Split | None = None) -> list[str]:
        """Names of broken clips, optionally of one kind and/or one set."""
        return [
            clip.name
            for clip in self.broken
            if (kind is None or clip.kind == kind) and (split is None or clip.split == split)
        ]


@dataclass(frozen=True)
class _ClipPlan:
    """One clip to render: decided in the parent so that workers only draw media from the clip's own seed."""

    name: str
    split: Split
    index: int
    label: str
    broken: BrokenKind | None
    variant: str
    path: Path


# ---------------------------------------------------------------- text

# Lines of each emotion in TV-dialogue style, with explicit emotion words that sentence embeddings pick up.
_EMOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "angry": (
        "你给我滚出去，混蛋",
        "我受够了你的谎话，气死我了",
        "你凭什么这么对我，太过分了",
        "简直气死我了",
        "别再找借口了，我很生气",
        "你到底有完没完，烦死了",
        "这件事我绝对不会原谅你",
        "你再说一遍试试，我饶不了你",
        "少在这里跟我装蒜，混账东西",
        "我恨你，你把我当什么人了",
    ),
    "happy": (
        "太好了我们成功了，真开心",
        "我真是太开心了",
        "今天是我最幸福的一天",
        "哈哈哈你真逗，笑死我了",
        "恭喜你考上了大学，太棒了",
        "我终于等到这一天了，好高兴",
        "谢谢你的礼物我好喜欢",
        "我们一起去庆祝吧",
        "这真是个天大的好消息",
        "看到你我就高兴",
    ),
    "sad": (
        "他再也回不来了，我好伤心",
        "我心里好难受",
        "为什么偏偏是我，太痛苦了",
        "对不起，是我害了你",
        "我们还是分手吧，我好难过",
        "妈妈走了以后家里空荡荡的",
        "我真的好想哭",
        "一切都结束了，我好绝望",
        "没有人在乎我，好孤单",
        "我好想你，可你不在了",
    ),
    "worried": (
        "他怎么还不回来，我好担心",
        "万一出了什么事可怎么办",
        "我总觉得心里不踏实",
        "医生说结果还要再等等，我好紧张",
        "孩子发烧一直不退，急死我了",
        "这下可怎么办才好",
        "我担心他会出事",
        "明天的考试我一点把握都没有，好焦虑",
        "钱要是还不上就完了，我好害怕",
        "你千万要小心啊，我不放心",
    ),
    "surprise": (
        "什么？这怎么可能",
        "天哪，你怎么来了",
        "真的假的？太意外了",
        "我简直不敢相信自己的眼睛",
        "啊？原来是你",
        "居然是这样，太吃惊了",
        "咦？你们怎么都在这儿",
        "他竟然还活着？",
        "哇，这也太突然了吧",
        "没想到你会这么说，真让我吃惊",
    ),
}
# Everyday lines with no emotion: every clip may get one, and neutral clips' own phrase comes from here.
_NEUTRAL_PHRASES: tuple[str, ...] = (
    "我先去趟超市",
    "明天早上八点开会",
    "把那份文件递给我",
    "你吃饭了吗",
    "这件衣服多少钱",
    "我下班顺路去接孩子",
    "车停在楼下了",
    "周末记得去交水电费",
    "电话号码你记一下",
    "会议室在三楼",
    "我等会儿再给你回电话",
    "请坐，喝点水",
    "今天的报纸放在桌上了",
    "他说晚点到",
    "这个月的报表做完了吗",
    "先把门关上",
    "菜我已经买好了",
    "下午三点的火车",
    "你把钥匙放哪儿了",
    "这件事明天再说",
)
_OPENERS: tuple[str, ...] = (
    "",
    "",
    "",
    "哎，",
    "你听我说，",
    "说实话，",
    "妈，",
    "老王，",
    "小李，",
    "喂，",
    "我跟你讲，",
)
_CLOSERS: tuple[str, ...] = ("。", "。", "！", "啊。", "吧。", "呢。", "…", "，知道吗？")
# share of clips whose line carries their own emotion, and of clips with another emotion's line
_KEYWORD_SHARE = 0.4
_MISLEADING_SHARE = 0.1
# share of clips whose audio and face barely show their emotion
_AMBIGUOUS_SHARE = 0.12


def transcript_line(label: str, rng: np.random.Generator) -> tuple[str, str]:
    """A subtitle line for a clip of `label`; returns (line, text kind)."""
    draw = rng.random()
    if draw < _KEYWORD_SHARE:
        kind = "keyword"
        pool = _NEUTRAL_PHRASES if label == "neutral" else _EMOTION_PHRASES[label]
    elif draw < _KEYWORD_SHARE + _MISLEADING_SHARE:
        kind = "misleading"
        others = [other for other in _EMOTION_PHRASES if other != label]
        pool = _EMOTION_PHRASES[others[rng.integers(len(others))]]
    else:
        kind = "neutral"
        pool = _NEUTRAL_PHRASES
    phrase = pool[rng.integers(len(pool))]
    line = (
        _OPENERS[rng.integers(len(_OPENERS))]
        + phrase.rstrip("？！。")
        + _CLOSERS[rng.integers(len(_CLOSERS))]
    )
    return line, kind


# ---------------------------------------------------------------- audio


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


# ---------------------------------------------------------------- video


@dataclass(frozen=True)
class FaceCues:
    """Expression of a drawn face at full intensity; 0 everywhere is the resting face."""

    # mouth corners up (+) or down (-)
    smile: float
    # mouth opening, 0 closed to 1 wide
    mouth_open: float
    # inner brow ends pulled down and together (frown)
    brow_knit: float
    # both brows and upper lids raised
    brow_raise: float


_FACE_PEAKS: tuple[FaceCues, ...] = (
    FaceCues(0.0, 0.0, 0.0, 0.0),  # resting: neutral/worried
    FaceCues(-1.0, 0.15, 1.0, 0.0),  # frown, knitted brows: angry/sad
    FaceCues(1.0, 0.8, 0.0, 1.0),  # open smile, raised brows: happy/surprise
)
_FACE_JITTER = 0.18


@dataclass(frozen=True)
class _FaceLook:
    """Who is on screen and how the shot moves; nothing here depends on the emotion."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    background: tuple[float, float, float]
    scale: float
    center: tuple[float, float]
    sway: tuple[float, float, float, float]  # x amplitude, y amplitude, frequency Hz, phase
    eye_gap: float
    resting: FaceCues


def face_cues(label: str, strength: float, rng: np.random.Generator) -> FaceCues:
    """Peak expression of `label`'s visual group at `strength`, with clip noise."""
    peak = _FACE_PEAKS[VISUAL_GROUP[label]]
    return FaceCues(
        *(
            strength * getattr(peak, name) + _FACE_JITTER * rng.normal()
            for name in FaceCues.__dataclass_fields__
        )
    )


def _face_look(size: int, rng: np.random.Generator) -> _FaceLook:
    """A random person and shot for a frame side of `size`, independent of the emotion."""
    skin = np.array([150, 175, 215]) * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3)  # BGR
    return _FaceLook(
        skin=tuple(np.clip(skin, 60, 250)),
        hair=tuple(rng.uniform(15, 70, 3)),
        background=tuple(rng.uniform(60, 170, 3)),
        scale=rng.uniform(0.88, 1.08),
        center=(size / 2 + rng.uniform(-6, 6) * size / 160, size / 2 + rng.uniform(-5, 5) * size / 160),
        sway=(rng.uniform(0, 4), rng.uniform(0, 3), rng.uniform(0.2, 0.8), rng.uniform(0, 2 * np.pi)),
        eye_gap=rng.uniform(15, 19),
        resting=FaceCues(*rng.normal(0, 0.12, 4)),
    )


def _draw_face(
    look: _FaceLook, cues: FaceCues, size: int, dx: float, dy: float, noise: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """One BGR uint8 frame of a frontal face that Haar finds (dark eye band under brows, lighter bridge)."""
    img = _canvas(size, look.background)
    # plain floats: builtin round() on numpy scalars costs ten times more, and this runs ~30 times a frame
    s = float(size / 160 * look.scale)
    cx, cy = float(look.center[0] + dx), float(look.center[1] + dy)
    cues = FaceCues(*(float(v) for v in (cues.smile, cues.mouth_open, cues.brow_knit, cues.brow_raise)))

    def at(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * s)), int(round(cy + y * s))

    def px(v: float) -> int:
        return max(1, int(round(v * s)))

    skin = look.skin
    shade = tuple(c * 0.78 for c in skin)
    cv2.ellipse(img, at(0, -8), (px(50), px(62)), 0, 0, 360, look.hair, -1, cv2.LINE_AA)
    cv2.ellipse(img, at(0, 4), (px(42), px(54)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    lid = 5 + 1.5 * cues.brow_raise
    for side in (-1, 1):
        eye_x = side * look.eye_gap
        cv2.ellipse(img, at(eye_x, -8), (px(9), px(max(lid, 3))), 0, 0, 360, (60, 60, 70), -1, cv2.LINE_AA)
        cv2.circle(img, at(eye_x, -8), px(3), (20, 20, 20), -1, cv2.LINE_AA)
        # a knit pulls the inner end down (V-shaped brows); a raise lifts the whole brow
        inner = at(side * 8, -19 + 5 * cues.brow_knit - 5 * cues.brow_raise)
        outer = at(side * 27, -19 - 2 * cues.brow_knit - 4 * cues.brow_raise)
        cv2.line(img, inner, outer, (30, 30, 40), px(4), cv2.LINE_AA)
    cv2.line(img, at(0, -6), at(-3, 12), shade, px(2), cv2.LINE_AA)
    cv2.ellipse(img, at(0, 13), (px(6), px(3)), 0, 0, 360, tuple(c * 0.7 for c in skin), -1, cv2.LINE_AA)
    # mouth: a parabola bent by the smile, opened into a dark lens
    xs = np.linspace(-15 - 2 * max(cues.smile, 0), 15 + 2 * max(cues.smile, 0), 21)
    ys = 28 - 6 * cues.smile * (1 - (xs / xs[-1]) ** 2)
    opening = max(cues.mouth_open, 0.0)
    top = np.stack([cx + xs * s, cy + (ys - opening * 4) * s], axis=1)
    bottom = np.stack([cx + xs * s, cy + (ys + 1.5 + opening * 9) * s], axis=1)[::-1]
    cv2.fillPoly(img, [np.concatenate([top, bottom]).round().astype(np.int32)], (40, 30, 110), cv2.LINE_AA)
    cv2.polylines(img, [top.round().astype(np.int32)], False, (40, 30, 90), px(2), cv2.LINE_AA)
    return _add_noise(img, noise)


def _canvas(size: int, colour: tuple[float, float, float]) -> np.ndarray:
    """A (size, size, 3) uint8 image of one BGR colour (cv2 fills it ten times faster than numpy)."""
    img = np.empty((size, size, 3), np.uint8)
    cv2.rectangle(img, (0, 0), (size, size), colour, -1)
    return img


def _add_noise(img: np.ndarray, noise: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """uint8 `img` plus the (positive, negative) uint8 parts of a noise field, saturated."""
    return cv2.subtract(cv2.add(img, noise[0]), noise[1])


def _draw_scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """A shot with nobody in it: a wall with a light gradient, a table top and one vase.

    Deliberately free of paired dark blobs: 2,000 noisy frames of it gave no Haar detection.
    """
    wall = np.linspace(1.1, 0.85, size)[:, None, None] * rng.uniform(70, 170, 3)[None, None, :]
    img = np.ascontiguousarray(np.repeat(wall, size, axis=1).clip(0, 255).astype(np.uint8))
    cv2.rectangle(img, (0, int(size * 0.72)), (size, size), tuple(rng.uniform(40, 120, 3)), -1)
    x = int(size * rng.uniform(0.2, 0.6))
    vase = (x, int(size * 0.45)), (x + int(size * 0.18), int(size * 0.72))
    cv2.rectangle(img, *vase, tuple(rng.uniform(0, 255, 3)), -1)
    return img


def render_frames(
    label: str,
    strength: float,
    rng: np.random.Generator,
    size: int = 160,
    seconds: float = 2.0,
    fps: int = 10,
    face: bool = True,
) -> list[np.ndarray]:
    """Frames of one clip: a face moving from rest toward `label`'s peak expression and back, or (face=False)
    a shot with nobody in it.

    Returns round(seconds * fps) (size, size, 3) uint8 BGR frames.
    """
    count = max(1, int(round(seconds * fps)))
    times = [i / fps for i in range(count)]
    # sensor noise: each frame crops a random window of one larger noise field (cheaper than fresh noise)
    margin = 16
    noise_field = np.round(rng.normal(0, 4, (size + margin, size + margin, 3)))
    rises, falls = np.maximum(noise_field, 0).astype(np.uint8), np.maximum(-noise_field, 0).astype(np.uint8)

    def noise() -> tuple[np.ndarray, np.ndarray]:
        x, y = rng.integers(0, margin, 2)
        window = np.s_[y : y + size, x : x + size]
        return np.ascontiguousarray(rises[window]), np.ascontiguousarray(falls[window])

    frames = []
    if not face:
        scene = _draw_scene(size, rng)
        for t in times:
            # the camera pans a little
            img = np.roll(scene, int(round(3 * math.sin(2 * math.pi * 0.5 * t))), axis=1)
            frames.append(_add_noise(img, noise()))
        return frames
    look = _face_look(size, rng)
    peak = face_cues(label, strength, rng)
    # expression time course: a bump from rest to the peak and back, its window partly off the clip's ends
    start = rng.uniform(-0.35, 0.05) * seconds
    stop = rng.uniform(0.95, 1.35) * seconds
    amp_x, amp_y, freq, phase = look.sway
    for t in times:
        weight = math.sin(math.pi * min(max((t - start) / (stop - start), 0.0), 1.0)) ** 0.5
        cues = FaceCues(
            *(
                getattr(look.resting, name) + weight * getattr(peak, name)
                for name in FaceCues.__dataclass_fields__
            )
        )
        dx = amp_x * math.sin(2 * math.pi * freq * t + phase) * size / 160
        dy = amp_y * math.sin(2 * math.pi * freq * 0.7 * t + phase * 1.3) * size / 160
        frames.append(_draw_face(look, cues, size, dx, dy, noise()))
    return frames


# ---------------------------------------------------------------- encoding and the per-clip job


def encode_mp4(frames: list[np.ndarray] | None, audio: np.ndarray | None, fps: int) -> bytes:
    """Mux BGR uint8 `frames` (H.264, yuv420p) and/or 16 kHz mono float `audio` (AAC) into mp4 bytes.

    Raises ValueError when both are None.
    """
    if frames is None and audio is None:
        raise ValueError("encode_mp4 needs frames, audio or both; got neither")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = audio_stream = None
        if frames is not None:
            video = container.add_stream("libx264", rate=fps)
            video.width, video.height = frames[0].shape[1], frames[0].shape[0]
            video.pix_fmt = "yuv420p"
            # one thread and fixed settings: the same frames give the same bytes
            video.codec_context.thread_count = 1
            video.options = {"preset": "ultrafast", "crf": "23"}
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=SAMPLE_RATE)
            audio_stream.layout = "mono"
            audio_stream.codec_context.thread_count = 1
            # the fast coder is 2x quicker than the default and transparent enough for eGeMAPS
            audio_stream.options = {"aac_coder": "fast"}
        if video is not None:
            for i, frame in enumerate(frames):
                # OpenCV's BT.601 limited-range conversion matches FFmpeg's and is quicker than swscale
                picture = av.VideoFrame.from_ndarray(
                    cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420), format="yuv420p"
                )
                picture.pts = i
                picture.time_base = Fraction(1, fps)
                container.mux(video.encode(picture))
            container.mux(video.encode(None))
        if audio_stream is not None:
            chunk = 1024  # AAC frame size
            for offset in range(0, len(audio), chunk):
                piece = np.zeros((1, chunk), np.float32)
                part = audio[offset : offset + chunk]
                piece[0, : len(part)] = part
                sound = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                sound.sample_rate = SAMPLE_RATE
                sound.pts = offset
                sound.time_base = Fraction(1, SAMPLE_RATE)
                container.mux(audio_stream.encode(sound))
            container.mux(audio_stream.encode(None))
    return buffer.getvalue()


def expression_strengths(rng: np.random.Generator) -> tuple[float, float]:
    """How strongly a clip shows its emotion in (audio, face), each in [0, 1].

    One intensity per clip, shared by the modalities with some slack; 12% of clips are ambiguous and barely
    show anything, so even a perfect fusion of audio and face cannot name them.
    """
    ambiguous = rng.random() < _AMBIGUOUS_SHARE
    intensity = rng.uniform(0.0, 0.3) if ambiguous else rng.uniform(0.5, 1.0)
    audio, face = np.clip(intensity * rng.uniform(0.8, 1.2, 2), 0.0, 1.0)
    return float(audio), float(face)


def _clip_rngs(seed: int, split: Split, index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for the clip's expression, text, audio and video, from (seed, set, index)."""
    children = np.random.SeedSequence([seed, _SPLIT_ID[split], index]).spawn(4)
    return tuple(np.random.default_rng(child) for child in children)


def _render_clip(job: tuple[_ClipPlan, DemoConfig]) -> tuple[str, str, str]:
    """Write one clip's media file; returns (name, transcript, text kind)."""
    plan, cfg = job
    expression_rng, text_rng, audio_rng, video_rng = _clip_rngs(cfg.seed, plan.split, plan.index)
    audio_strength, face_strength = expression_strengths(expression_rng)
    transcript, text_kind = transcript_line(plan.label, text_rng)
    if plan.broken == "empty_transcript":
        transcript = "" if plan.variant == "empty" else _GARBAGE_TRANSCRIPT
    if plan.broken == "unreadable" and plan.variant == "zero_bytes":
        plan.path.write_bytes(b"")
        return plan.name, transcript, text_kind
    wave = None
    if plan.broken != "no_audio":
        wave = synth_speech(audio_cues(plan.label, audio_strength, audio_rng), cfg.seconds, audio_rng)
    frames = None
    if plan.broken != "no_video":
        frames = render_frames(
            plan.label,
            face_strength,
            video_rng,
            cfg.size,
            cfg.seconds,
            cfg.fps,
            face=plan.broken != "no_face",
        )
    data = encode_mp4(frames, wave, cfg.fps)
    if plan.broken == "unreadable":
        # the first half of a valid mp4: the index (moov) box sits at the end, so nothing can be decoded
        data = data[: len(data) // 2]
    # a plain write: a rerun rewrites every clip, so an fsync per clip would only cost time
    plan.path.write_bytes(data)
    return plan.name, transcript, text_kind


def _init_worker() -> None:
    # the pool already spreads clips over cores; OpenCV's own threads would only contend
    cv2.setNumThreads(1)


# ---------------------------------------------------------------- the corpus


def class_counts(total: int) -> dict[str, int]:
    """`total` clips split like the MER2024 train set (largest remainder), every class at least one."""
    prior = np.array([_TRAIN_COUNTS[label] for label in LABELS], float)
    exact = total * prior / prior.sum()
    counts = np.maximum(np.floor(exact).astype(int), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while counts.sum() < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while counts.sum() > total:
        counts[np.argmax(counts)] -= 1
    return dict(zip(LABELS, counts.tolist(), strict=True))


def _plan_split(out: Path, split: Split, total: int, cfg: DemoConfig) -> list[_ClipPlan]:
    """Names, labels and broken kinds of one set, drawn from the set's own plan generator."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SPLIT_ID[split], _PLAN_KEY]))
    labels = [label for label, count in class_counts(total).items() for _ in range(count)]
    labels = [labels[i] for i in rng.permutation(total)]
    broken_at: dict[int, tuple[BrokenKind, str]] = {}
    chosen = rng.choice(total, size=len(BROKEN_KINDS) * cfg.broken_per_kind, replace=False)
    for slot, index in enumerate(chosen.tolist()):
        kind = BROKEN_KINDS[slot // cfg.broken_per_kind]
        variants = _VARIANTS[kind]
        broken_at[index] = (kind, variants[(slot % cfg.broken_per_kind) % len(variants)])
    folder = out / (LABELLED_DIR if split == "labelled" else UNLABELLED_DIR)
    plans = []
    for index, label in enumerate(labels):
        name = f"{_PREFIX[split]}{index + 1:08d}"
        kind, variant = broken_at.get(index, (None, ""))
        plans.append(_ClipPlan(name, split, index, label, kind, variant, folder / f"{name}.mp4"))
    return plans


def _csv_text(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _check_out(out: Path, plans: list[_ClipPlan]) -> None:
    """Refuse to mix this corpus with media already in `out` (the pool is listed from its folder)."""
    planned = {plan.path for plan in plans}
    strays = [
        path
        for folder in (out / LABELLED_DIR, out / UNLABELLED_DIR)
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path not in planned
    ]
    if strays:
        shown = ", ".join(str(p) for p in strays[:5]) + (" ..." if len(strays) > 5 else "")
        raise FileExistsError(
            f"{out} already holds {len(strays)} file(s) this demo would not write ({shown}); "
            "use an empty folder or delete it first"
        )


def make_demo(out: Path, cfg: DemoConfig, progress: bool = True) -> DemoSummary:
    """Write the demo corpus under `out` in the MER2024 raw layout and return what was written.

    Raises FileExistsError when `out`'s video folders hold files this config would not write.
    """
    started = time.perf_counter()
    out = Path(out)
    plans = _plan_split(out, "labelled", cfg.labelled, cfg) + _plan_split(
        out, "unlabelled", cfg.unlabelled, cfg
    )
    _check_out(out, plans)
    (out / LABELLED_DIR).mkdir(parents=True, exist_ok=True)
    (out / UNLABELLED_DIR).mkdir(parents=True, exist_ok=True)

    jobs = [(plan, cfg) for plan in plans]
    bar = tqdm(total=len(jobs), desc="demo clips", unit="clip", disable=not progress)
    if cfg.workers == 1:
        results = []
        for job in jobs:
            results.append(_render_clip(job))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")  # fork is unsafe once OpenCV/FFmpeg threads exist
        with context.Pool(cfg.workers, initializer=_init_worker) as pool:
            results = []
            for result in pool.imap(_render_clip, jobs, chunksize=8):
                results.append(result)
                bar.update()
    bar.close()
    transcripts = {name: text for name, text, _ in results}
    text_kinds: dict[str, int] = {}
    for _, _, kind in results:
        text_kinds[kind] = text_kinds.get(kind, 0) + 1

    labelled = [plan for plan in plans if plan.split == "labelled"]
    pool_plans = [plan for plan in plans if plan.split == "unlabelled"]
    atomic_write_text(out / LABEL_CSV, _csv_text(("name", "discrete"), [(p.name, p.label) for p in labelled]))
    atomic_write_text(
        out / TRANSCRIPTION_CSV,
        _csv_text(("name", "chinese"), [(p.name, transcripts[p.name]) for p in labelled]),
    )
    atomic_write_text(
        out / MERGE_CSV, _csv_text(("name", "chinese"), [(p.name, transcripts[p.name]) for p in plans])
    )
    atomic_write_text(
        out / HIDDEN_LABELS_CSV, _csv_text(("name", "discrete"), [(p.name, p.label) for p in pool_plans])
    )
    broken = [
        BrokenClip(p.name, p.split, p.broken, p.variant, p.label) for p in plans if p.broken is not None
    ]
    counts = {
        split: {label: sum(1 for p in plans if p.split == split and p.label == label) for label in LABELS}
        for split in ("labelled", "unlabelled")
    }
    manifest = {
        "config": asdict(cfg),
        "seed": cfg.seed,
        "layout": "mer2024",
        "counts": counts,
        "text_kinds": text_kinds,
        "audio_groups": AUDIO_GROUP,
        "visual_groups": VISUAL_GROUP,
        "broken": [asdict(clip) for clip in broken],
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return DemoSummary(
        root=out,
        labelled_dir=out / LABELLED_DIR,
        unlabelled_dir=out / UNLABELLED_DIR,
        label_csv=out / LABEL_CSV,
        transcription_csv=out / TRANSCRIPTION_CSV,
        merge_csv=out / MERGE_CSV,
        hidden_labels_csv=out / HIDDEN_LABELS_CSV,
        manifest=out / MANIFEST,
        counts=counts,
        broken=broken,
        seconds=time.perf_counter() - started,
        text_kinds=text_kinds,
    )
