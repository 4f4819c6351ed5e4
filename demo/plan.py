"""What a demo corpus holds, decided before any clip is drawn: sizes, names, labels and broken clips.

Usage:
    from demo.plan import DemoConfig, plan_split
    plans = plan_split(Path("demo-data"), "labelled", 120, DemoConfig())
Each clip draws its media from its own numpy Generators, seeded with (seed, set, index) by clip_rngs, so the same
config and seed give the same corpus whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from clips.config import ConfigError
from clips.labels import LABELS

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
class ClipPlan:
    """One clip to render: decided in the parent so that workers only draw media from the clip's own seed."""

    name: str
    split: Split
    index: int
    label: str
    broken: BrokenKind | None
    variant: str
    path: Path


# share of clips whose audio and face barely show their emotion
_AMBIGUOUS_SHARE = 0.12


def expression_strengths(rng: np.random.Generator) -> tuple[float, float]:
    """How strongly a clip shows its emotion in (audio, face), each in [0, 1].

    One intensity per clip, shared by the modalities with some slack; 12% of clips are ambiguous and barely
    show anything, so even a perfect fusion of audio and face cannot name them.
    """
    ambiguous = rng.random() < _AMBIGUOUS_SHARE
    intensity = rng.uniform(0.0, 0.3) if ambiguous else rng.uniform(0.5, 1.0)
    audio, face = np.clip(intensity * rng.uniform(0.8, 1.2, 2), 0.0, 1.0)
    return float(audio), float(face)


def clip_rngs(seed: int, split: Split, index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for the clip's expression, text, audio and video, from (seed, set, index)."""
    children = np.random.SeedSequence([seed, _SPLIT_ID[split], index]).spawn(4)
    return tuple(np.random.default_rng(child) for child in children)


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


def plan_split(out: Path, split: Split, total: int, cfg: DemoConfig) -> list[ClipPlan]:
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
        plans.append(ClipPlan(name, split, index, label, kind, variant, folder / f"{name}.mp4"))
    return plans
