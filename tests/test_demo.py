"""Tests of the synthetic demo corpus: layout, determinism, broken clips, face detection and cue separation.

Run with `python -m pytest tests/test_demo.py`; the three small corpora are built once per module.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import opensmile
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clips.config import ConfigError
from clips.labels import LABELS
from demo.audio import AUDIO_GROUP, audio_cues, synth_speech
from demo.corpus import make_demo
from demo.faces import VISUAL_GROUP, render_frames
from demo.plan import (
    BROKEN_KINDS,
    HIDDEN_LABELS_CSV,
    LABEL_CSV,
    LABELLED_DIR,
    MANIFEST,
    MERGE_CSV,
    TRANSCRIPTION_CSV,
    UNLABELLED_DIR,
    DemoConfig,
    DemoSummary,
    class_counts,
    expression_strengths,
)
from demo.text import transcript_line

SMALL = DemoConfig(labelled=36, unlabelled=36, broken_per_kind=2, seed=0, workers=2)
CSV_FILES = (LABEL_CSV, TRANSCRIPTION_CSV, MERGE_CSV, HIDDEN_LABELS_CSV)
# the feature extractor's exact Haar settings
HAAR = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
HOG = cv2.HOGDescriptor((64, 64), (32, 32), (16, 16), (16, 16), 9)


def detect_faces(frame_rgb: np.ndarray) -> np.ndarray:
    """Haar boxes (x, y, w, h) on one RGB frame, with the feature extractor's parameters."""
    gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    boxes = HAAR.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    return np.asarray(boxes).reshape(-1, 4)


def decode(path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(frames (T, H, W, 3) uint8 RGB, audio (samples,) float32) of an mp4; None for a missing stream."""
    with av.open(str(path)) as container:
        frames = None
        if container.streams.video:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = None
        if container.streams.audio:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, audio


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def clip_path(summary: DemoSummary, name: str) -> Path:
    folder = summary.labelled_dir if name.startswith("sample_") else summary.unlabelled_dir
    return folder / f"{name}.mp4"


def normal_names(summary: DemoSummary) -> list[str]:
    broken = {clip.name for clip in summary.broken}
    rows = read_csv(summary.label_csv) + read_csv(summary.hidden_labels_csv)
    return [row["name"] for row in rows if row["name"] not in broken]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    return make_demo(tmp_path_factory.mktemp("demo") / "a", SMALL, progress=False)


@pytest.fixture(scope="module")
def corpus_again(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    # one worker instead of two: the corpus must not depend on how clips are spread over processes
    return make_demo(tmp_path_factory.mktemp("demo") / "b", replace(SMALL, workers=1), progress=False)


@pytest.fixture(scope="module")
def corpus_other_seed(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    return make_demo(tmp_path_factory.mktemp("demo") / "c", replace(SMALL, workers=1, seed=1), progress=False)


def test_layout_files_and_csvs(corpus: DemoSummary) -> None:
    root = corpus.root
    labelled = [f"sample_{i:08d}" for i in range(1, 37)]
    pool = [f"samplenew3_{i:08d}" for i in range(1, 37)]
    assert sorted(p.name for p in (root / LABELLED_DIR).iterdir()) == [f"{n}.mp4" for n in labelled]
    assert sorted(p.name for p in (root / UNLABELLED_DIR).iterdir()) == [f"{n}.mp4" for n in pool]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == sorted([*CSV_FILES, MANIFEST])

    for name, header in [
        (LABEL_CSV, "name,discrete"),
        (TRANSCRIPTION_CSV, "name,chinese"),
        (MERGE_CSV, "name,chinese"),
        (HIDDEN_LABELS_CSV, "name,discrete"),
    ]:
        assert (root / name).read_text(encoding="utf-8").splitlines()[0] == header
    labels = read_csv(root / LABEL_CSV)
    hidden = read_csv(root / HIDDEN_LABELS_CSV)
    assert [r["name"] for r in labels] == labelled
    assert [r["name"] for r in read_csv(root / TRANSCRIPTION_CSV)] == labelled
    assert [r["name"] for r in read_csv(root / MERGE_CSV)] == labelled + pool
    assert [r["name"] for r in hidden] == pool
    assert {r["discrete"] for r in labels + hidden} <= set(LABELS)
    merged = {r["name"]: r["chinese"] for r in read_csv(root / MERGE_CSV)}
    assert all(merged[r["name"]] == r["chinese"] for r in read_csv(root / TRANSCRIPTION_CSV))

    for split, rows in (("labelled", labels), ("unlabelled", hidden)):
        assert corpus.counts[split] == {label: sum(r["discrete"] == label for r in rows) for label in LABELS}
        assert corpus.counts[split] == class_counts(36)
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["seed"] == 0 and manifest["config"]["labelled"] == 36
    assert len(manifest["broken"]) == 2 * len(BROKEN_KINDS) * SMALL.broken_per_kind


def test_class_counts_follow_mer2024_train() -> None:
    default = class_counts(DemoConfig().labelled)
    assert sum(default.values()) == 120 and list(default) == list(LABELS)
    assert default["surprise"] == 4
    assert default["neutral"] > default["angry"] > default["happy"] > default["sad"] > default["worried"]
    assert sum(class_counts(960).values()) == 960


def test_config_checks_name_field_and_fix() -> None:
    with pytest.raises(ConfigError) as error:
        DemoConfig(labelled=5, size=101, workers=0)
    message = str(error.value)
    assert "labelled=5" in message and "size=101" in message and "workers=0" in message
    assert "raise labelled" in message


def test_refuses_a_folder_with_other_media(tmp_path: Path) -> None:
    (tmp_path / UNLABELLED_DIR).mkdir()
    (tmp_path / UNLABELLED_DIR / "other_clip.mp4").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="other_clip"):
        make_demo(tmp_path, SMALL, progress=False)


def test_same_seed_same_corpus(corpus: DemoSummary, corpus_again: DemoSummary) -> None:
    for name in CSV_FILES:
        assert (corpus.root / name).read_bytes() == (corpus_again.root / name).read_bytes()
    assert corpus.broken == corpus_again.broken
    for name in normal_names(corpus)[::6]:
        frames_a, audio_a = decode(clip_path(corpus, name))
        frames_b, audio_b = decode(clip_path(corpus_again, name))
        np.testing.assert_array_equal(frames_a, frames_b)
        np.testing.assert_array_equal(audio_a, audio_b)
    for folder in (LABELLED_DIR, UNLABELLED_DIR):
        for path in sorted((corpus.root / folder).iterdir()):
            assert path.read_bytes() == (corpus_again.root / folder / path.name).read_bytes(), path.name


def test_other_seed_other_corpus(corpus: DemoSummary, corpus_other_seed: DemoSummary) -> None:
    assert (corpus.root / MERGE_CSV).read_bytes() != (corpus_other_seed.root / MERGE_CSV).read_bytes()
    assert (corpus.root / LABEL_CSV).read_bytes() != (corpus_other_seed.root / LABEL_CSV).read_bytes()
    shared = sorted(set(normal_names(corpus)) & set(normal_names(corpus_other_seed)))
    frames_a, audio_a = decode(clip_path(corpus, shared[0]))
    frames_b, audio_b = decode(clip_path(corpus_other_seed, shared[0]))
    assert not np.array_equal(frames_a, frames_b) and not np.array_equal(audio_a, audio_b)


def test_broken_clips(corpus: DemoSummary) -> None:
    merged = {r["name"]: r["chinese"] for r in read_csv(corpus.merge_csv)}
    for split in ("labelled", "unlabelled"):
        for kind in BROKEN_KINDS:
            assert len(corpus.broken_names(kind, split)) == SMALL.broken_per_kind, (split, kind)
    by_kind = {kind: [c for c in corpus.broken if c.kind == kind] for kind in BROKEN_KINDS}

    variants = {c.variant for c in by_kind["unreadable"]}
    assert variants == {"zero_bytes", "truncated"}
    for clip in by_kind["unreadable"]:
        path = clip_path(corpus, clip.name)
        if clip.variant == "zero_bytes":
            assert path.stat().st_size == 0
        else:
            assert path.stat().st_size > 0
        with pytest.raises(av.FFmpegError):
            decode(path)
    for clip in by_kind["no_audio"]:
        frames, audio = decode(clip_path(corpus, clip.name))
        assert audio is None and frames is not None and len(frames) == 20
    for clip in by_kind["no_video"]:
        frames, audio = decode(clip_path(corpus, clip.name))
        assert frames is None and audio is not None and len(audio) >= 32_000
    for clip in by_kind["no_face"]:
        frames, audio = decode(clip_path(corpus, clip.name))
        assert audio is not None and frames is not None
        assert sum(len(detect_faces(frame)) > 0 for frame in frames) == 0
    assert {c.variant for c in by_kind["empty_transcript"]} == {"empty", "garbage"}
    assert {merged[c.name] for c in by_kind["empty_transcript"]} == {"", "<|zh-CN|>"}
    labels = {
        r["name"]: r["discrete"] for r in read_csv(corpus.label_csv) + read_csv(corpus.hidden_labels_csv)
    }
    assert all(labels[c.name] == c.label for c in corpus.broken)


def test_haar_finds_the_face_after_h264(corpus: DemoSummary) -> None:
    hits = total = 0
    for name in normal_names(corpus):
        frames, audio = decode(clip_path(corpus, name))
        assert frames.shape == (20, 160, 160, 3) and audio.dtype == np.float32
        for frame in frames[::4]:
            hits += len(detect_faces(frame)) > 0
            total += 1
    assert hits / total >= 0.9, f"Haar found the face on {hits}/{total} frames"


def test_text_shares() -> None:
    kinds = [transcript_line(label, np.random.default_rng([7, i]))[1] for i, label in enumerate(LABELS * 100)]
    assert abs(kinds.count("keyword") / len(kinds) - 0.4) < 0.05
    assert abs(kinds.count("misleading") / len(kinds) - 0.1) < 0.03


def _cue_features(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """eGeMAPS functionals and face-crop HOG of `per_class` clips per label, drawn as make_demo draws them.

    Returns (audio (N, 88), visual (N, 324), label index (N,)).
    """
    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
    )
    audio, visual, y = [], [], []
    for i, label in enumerate(label for label in LABELS for _ in range(per_class)):
        rng = np.random.default_rng([seed, i])
        audio_strength, face_strength = expression_strengths(rng)
        wave = synth_speech(audio_cues(label, audio_strength, rng), 2.0, rng)
        audio.append(smile.process_signal(wave, 16_000).to_numpy().reshape(-1))
        crops = []
        for frame in render_frames(label, face_strength, rng)[6:15:8]:  # around the expression peak
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            boxes = detect_faces(rgb)
            assert len(boxes), "Haar missed a face"
            x, top, w, h = max(boxes, key=lambda b: b[2] * b[3])
            gray = cv2.cvtColor(rgb[top : top + h, x : x + w], cv2.COLOR_RGB2GRAY)
            crops.append(HOG.compute(cv2.resize(gray, (64, 64))).reshape(-1))
        visual.append(np.mean(crops, axis=0))
        y.append(LABELS.index(label))
    return np.array(audio), np.array(visual), np.array(y)


def _cv_accuracy(features: np.ndarray, target: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(4, shuffle=True, random_state=0)
    return float((cross_val_predict(model, features, target, cv=folds) == target).mean())


def test_each_modality_separates_its_groups_only_fusion_separates_classes() -> None:
    audio, visual, y = _cue_features(per_class=12, seed=3)
    audio_group = np.array([AUDIO_GROUP[LABELS[i]] for i in y])
    visual_group = np.array([VISUAL_GROUP[LABELS[i]] for i in y])
    scores = {
        "audio group": _cv_accuracy(audio, audio_group),
        "audio class": _cv_accuracy(audio, y),
        "visual group": _cv_accuracy(visual, visual_group),
        "visual class": _cv_accuracy(visual, y),
        "fused class": _cv_accuracy(np.hstack([audio, visual]), y),
    }
    # balanced classes: knowing only the group caps class accuracy at 50% (chance is 17%)
    assert scores["audio group"] >= 0.7, scores
    assert scores["visual group"] >= 0.75, scores
    assert scores["audio class"] <= 0.6, scores
    assert scores["visual class"] <= 0.6, scores
    assert scores["fused class"] >= 0.6, scores
    assert scores["fused class"] >= max(scores["audio class"], scores["visual class"]) + 0.15, scores
