"""Issue 11's perception: BlazeFace on real-size frames, FER and face-mesh expression, Whisper base, Whisper ASR.

Real bundled models on real photos (matplotlib's Grace Hopper) placed in 1280x720 frames, synthetic audio, clips
written in tmp_path; hand-written arrays for the geometry.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from bench.features import write_mp4
from clips.dataset import ClipRef
from clips.faces import BlazeFaceDetector
from clips.io import CACHE_ENV
from clips.media import SAMPLE_RATE, DecodedClip, fit_frames
from clips.status import merge_status
from features import build_extractor, cache_key, extract_features
from features.base import DEFAULT_FRAME_SIDE, frame_side
from features.expression import (
    EXPRESSION_DIM,
    FER_LABELS,
    MESH,
    POSE,
    ExpressionModels,
    expression_features,
    fer_crop,
    keypoint_pose,
    mesh_geometry,
)
from features.face import FACE_DIM, FACE_LAYOUT, FaceExtractor
from features.runner import ClipWorker, fit_clip
from features.text import E5Extractor

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# the face in the photo, (x, y, w, h)
PHOTO_FACE = (161, 123, 208, 208)


def photo() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(GRACE_HOPPER)), cv2.COLOR_BGR2RGB)


def wide_shot(face_width: int, x: int, y: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A 1280x720 RGB frame with the photo's head and shoulders, the face `face_width` wide; the face box."""
    frame = np.full((720, 1280, 3), 110, np.uint8)
    fx, fy, fw, fh = PHOTO_FACE
    scale = face_width / fw
    x0, y0 = fx - fw // 2, fy - fh // 2
    cut = cv2.resize(photo()[y0 : fy + 2 * fh, x0 : fx + 3 * fw // 2], None, fx=scale, fy=scale,
                     interpolation=cv2.INTER_AREA)
    frame[y : y + cut.shape[0], x : x + cut.shape[1]] = cut[: 720 - y, : 1280 - x]
    return frame, (x + (fx - x0) * scale, y + (fy - y0) * scale, face_width, face_width)


def on_face(box: tuple[int, int, int, int], truth: tuple[float, float, float, float]) -> bool:
    x, y, w, h = box
    tx, ty, tw, th = truth
    return tx <= x + w / 2 <= tx + tw and ty <= y + h / 2 <= ty + th and 0.6 <= w / tw <= 1.4


def speechlike(seconds: float, silence: float = 0.0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic tone at 16 kHz after `silence` seconds of silence."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 180 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return np.concatenate([np.zeros(int(silence * SAMPLE_RATE)), 0.2 * voice]).astype(np.float32)


# ---------------------------------------------------------------- detection


def test_blazeface_finds_a_wide_shot_face_that_haar_at_320_misses() -> None:
    frame, truth = wide_shot(90, 500, 300)
    face = BlazeFaceDetector().detect(frame[None])[0]
    assert face is not None and on_face(face.box, truth)
    assert face.keypoints.shape == (6, 2) and 0.5 < face.score <= 1.0
    # the old default, Haar on frames decoded at 320 pixels, finds nothing here
    old = FaceExtractor(detector="haar").extract(DecodedClip("c", None, fit_frames(frame[None], 320), None, 1.0), None)
    assert old.status == ("no_face",)


def test_tiles_find_faces_too_small_for_the_whole_frame_search() -> None:
    frame, truth = wide_shot(50, 500, 300)
    assert BlazeFaceDetector(tile_frames=0).detect(frame[None]) == [None]
    face = BlazeFaceDetector(tile_frames=1).detect(frame[None])[0]
    assert face is not None and on_face(face.box, truth)


def test_detector_tracks_one_face_across_frames_and_finds_none_on_empty_frames() -> None:
    shots = [wide_shot(90, 400 + 12 * i, 300) for i in range(6)]
    faces = BlazeFaceDetector().detect(np.stack([frame for frame, _ in shots]))
    assert all(face is not None and on_face(face.box, truth) for face, (_, truth) in zip(faces, shots, strict=True))
    centres = [face.box[0] + face.box[2] / 2 for face in faces]
    assert all(b > a for a, b in zip(centres, centres[1:], strict=False))  # it follows the drift to the right
    empty = np.full((4, 360, 640, 3), 110, np.uint8)
    assert BlazeFaceDetector().detect(empty) == [None] * 4


def two_shot(jaw_left: float, jaw_right: float, width: int = 120) -> np.ndarray:
    """A 1280x720 frame with the photo's head twice side by side, each jaw dropped by jaw_* of the face height."""
    fx, fy, fw, fh = PHOTO_FACE
    frame = np.full((720, 1280, 3), 110, np.uint8)
    for x, jaw in ((200, jaw_left), (760, jaw_right)):
        cut = photo()[fy - fh // 2 : fy + 2 * fh, fx - fw // 2 : fx + 3 * fw // 2]
        top, bottom = fh // 2 + int(0.7 * fh), fh // 2 + int(1.15 * fh)  # from the mouth line to the chin
        strip = cv2.resize(cut[top:bottom], (cut.shape[1], bottom - top + int(jaw * fh)))
        cut = np.concatenate([cut[:top], strip, cut[bottom:]])[: cut.shape[0]]
        head = cv2.resize(cut, None, fx=width / fw, fy=width / fw, interpolation=cv2.INTER_AREA)
        frame[150 : 150 + head.shape[0], x : x + head.shape[1]] = head[:570]
    return frame


@pytest.mark.parametrize("talking", ["left", "right"])
def test_of_two_faces_alike_the_talking_one_is_taken(talking: str) -> None:
    # the left head is a little larger (its box 114 against 108 pixels): the old rule took it whoever talked
    frames = np.stack([two_shot(*((0.12 * (i % 2), 0.0) if talking == "left" else (0.0, 0.12 * (i % 2))))
                       for i in range(8)])
    detector = BlazeFaceDetector()
    tracks = detector.tracks(frames)
    assert len(tracks) == 2 and all(len(track.faces) == 8 for track in tracks)
    faces = detector.detect(frames)
    centres = [face.box[0] + face.box[2] / 2 for face in faces]
    assert all((c < 640) == (talking == "left") for c in centres)


def test_a_face_seen_once_does_not_win_over_one_seen_throughout() -> None:
    passer_by = wide_shot(200, 100, 150)[0]
    stays = [wide_shot(90, 800 + 4 * i, 300) for i in range(6)]
    frames = np.stack([np.where(np.arange(1280)[None, :, None] < 600, passer_by, stays[0][0])]
                      + [frame for frame, _ in stays[1:]])
    faces = BlazeFaceDetector().detect(frames)
    assert all(face is not None and on_face(face.box, truth) for face, (_, truth) in zip(faces, stays, strict=True))


# ---------------------------------------------------------------- expression


def test_fer_and_mesh_on_a_real_face() -> None:
    models = ExpressionModels()
    probs = models.fer(fer_crop(photo(), PHOTO_FACE)[None])
    assert probs.shape == (1, 7) and abs(float(probs.sum()) - 1.0) < 1e-4
    assert FER_LABELS[int(probs.argmax())] == "neutral"
    points, score = models.mesh(photo(), PHOTO_FACE)
    assert points.shape == (468, 2) and score > 0.9
    # the outer eye corners lie inside the face box, the right eye's (subject's right) on the image's left
    fx, fy, fw, fh = PHOTO_FACE
    assert fx < points[33, 0] < points[263, 0] < fx + fw and fy < points[33, 1] < fy + fh / 2


def test_keypoint_pose_by_hand() -> None:
    # eyes 10 apart on a level line, nose 2 right of their middle and 5 below, mouth 9 below, ears symmetric
    keypoints = np.array([[0, 0], [10, 0], [7, 5], [5, 9], [-5, 1], [15, 1]], dtype=np.float64)
    np.testing.assert_allclose(keypoint_pose(keypoints), [0.0, 0.2, 0.5, 0.9, (np.hypot(12, 4) - np.hypot(8, 4)) / 10])
    assert len(POSE) == 5


def test_mesh_geometry_by_hand() -> None:
    points = np.zeros((468, 2))
    points[33], points[263] = (0, 0), (20, 0)  # outer eye corners: the unit is 20
    points[133], points[362] = (8, 0), (12, 0)  # inner eye corners: each eye 8 wide
    points[159], points[145] = (4, -1), (4, 1)  # right eye 2 open
    points[386], points[374] = (16, -2), (16, 2)  # left eye 4 open
    points[105], points[334] = (4, -5), (16, -6)  # brows above the upper lids
    points[107], points[336] = (7, -4), (13, -4)  # inner brow ends 6 apart
    points[13], points[14] = (10, 20), (10, 24)  # lips 4 apart, centre at y 22
    points[61], points[291] = (2, 20), (18, 20)  # corners 16 apart, 2 above the lip centre: a smile
    expected = [4 / 20, 16 / 20, 2 / 20, 2 / 8, 4 / 8, 4 / 20, 4 / 20, 6 / 20, 0.7]
    np.testing.assert_allclose(mesh_geometry(points, 0.7), expected)
    assert len(MESH) == len(expected)


def test_expression_features_pool_over_face_frames_only() -> None:
    frames = np.stack([wide_shot(150, 400, 200)[0]] * 3)
    faces = BlazeFaceDetector().detect(frames)
    assert all(face is not None for face in faces)
    models = ExpressionModels()
    vector = expression_features(frames, [faces[0], None, faces[0]], models)
    assert vector.shape == (EXPRESSION_DIM,)
    fer_mean, fer_max, fer_peak = vector[:7], vector[7:14], vector[14:21]
    assert abs(float(fer_mean.sum()) - 1.0) < 1e-4 and abs(float(fer_peak.sum()) - 1.0) < 1e-4
    assert np.all(fer_max >= fer_mean - 1e-6)
    assert vector[21] == 1.0  # both face frames have BlazeFace keypoints
    # the two face frames are the same image and box, so the std parts are zero and the means equal one frame's
    single = expression_features(frames[:1], faces[:1], models)
    np.testing.assert_allclose(vector, single, atol=1e-5)
    assert np.all(expression_features(frames, [None] * 3, models) == 0)
    with pytest.raises(ValueError, match="one \\(or None\\) per frame"):
        expression_features(frames, faces[:2], models)


# ---------------------------------------------------------------- the face extractor


def test_face_extractor_on_a_wide_shot_clip() -> None:
    frames = np.stack([wide_shot(90, 400 + 6 * i, 300)[0] for i in range(8)])
    clip = DecodedClip("c", None, frames, np.arange(8) / 2, 4.0)
    result = FaceExtractor().extract(clip, None)
    assert result.status == () and result.vector.shape == (FACE_DIM,)
    assert result.vector[FACE_LAYOUT["geometry"]][0] == 1.0  # a face on every frame
    expression = result.vector[FACE_LAYOUT["expression"]]
    assert abs(float(expression[:7].sum()) - 1.0) < 1e-4
    assert FaceExtractor(detector="haar").extract(clip, None).status == ("no_face",)


def test_face_settings_change_the_cache_key() -> None:
    keys = {cache_key(FaceExtractor(**options)) for options in ({}, {"frame_side": 640}, {"detector": "haar"},
                                                              {"tile_frames": 0})}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="detector='mtcnn' is unknown"):
        FaceExtractor(detector="mtcnn")
    with pytest.raises(ValueError, match="frame_side=32"):
        FaceExtractor(frame_side=32)


def test_runner_decodes_at_the_largest_frame_side_and_hands_each_extractor_its_own(tmp_path: Path) -> None:
    frames = np.stack([wide_shot(90, 400, 300)[0]] * 10)
    ref = ClipRef("wide", write_mp4(tmp_path / "wide.mp4", frames, speechlike(1.0), fps=10), None, None)
    face, small = FaceExtractor(frame_side=640), FaceExtractor(detector="haar", frame_side=320)
    assert frame_side(face) == 640 and frame_side(E5Extractor()) == DEFAULT_FRAME_SIDE
    worker = ClipWorker([face, small], tmp_path / "cache", num_frames=4)
    clip, error = worker._decode(ref, [face, small])
    assert error == "" and clip.frames.shape == (4, 360, 640, 3)
    assert fit_clip(clip, small).frames.shape == (4, 180, 320, 3) and fit_clip(clip, face) is clip
    # text alone needs no media, unless ASR must read the audio
    assert worker._decode(ref, [E5Extractor()])[0].audio is None
    assert worker._decode(ref, [E5Extractor(asr=True)])[0].audio is not None


def test_extract_features_with_the_new_extractors(tmp_path: Path) -> None:
    frames = np.stack([wide_shot(90, 400 + 4 * i, 300)[0] for i in range(10)])
    ref = ClipRef("wide", write_mp4(tmp_path / "wide.mp4", frames, speechlike(1.0), fps=10), None, "我今天很高兴")
    report = extract_features([ref], ["face", "whisper"], tmp_path / "cache", workers=1, progress=False)
    assert report.processed == 1 and report.errors == [] and report.status_counts == {"ok": 1}
    assert set(report.cpu_seconds) == {"decode", *report.cache_keys}
    again = extract_features([ref], ["face", "whisper"], tmp_path / "cache", workers=1, progress=False)
    assert again.skipped == 1 and again.processed == 0


# ---------------------------------------------------------------- Whisper


def test_whisper_model_is_joined_checked_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from features import whisper

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = whisper.model_dir()
    assert folder == tmp_path / "cache" / "whisper-base-ct2"
    assert (folder / "model.bin").stat().st_size == whisper.MODEL_BYTES
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert whisper.model_dir() == folder and (folder / "model.bin").stat().st_mtime_ns == stamp
    # a join whose sha256 is not the expected one never lands
    monkeypatch.setattr(whisper, "MODEL_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="expected 0000"):
        whisper.model_dir(tmp_path / "other")
    assert list((tmp_path / "other" / "whisper-base-ct2").iterdir()) == []


def test_log_mel_matches_transformers() -> None:
    from transformers import WhisperFeatureExtractor

    from features.whisper import log_mel

    audio = speechlike(2.3, silence=0.2)
    expected = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                                        padding=False)["input_features"][0]
    mine = log_mel(audio)
    assert mine.shape == expected.shape == (80, 250)
    np.testing.assert_allclose(mine, expected, atol=1e-4)


def test_speech_mask_and_span_leave_out_silence() -> None:
    from features.whisper import speech_mask, speech_span

    audio = speechlike(0.5, silence=0.5)
    mask = speech_mask(audio, 50)
    assert mask.tolist() == [False] * 25 + [True] * 25
    # 1 s of silence, 0.5 s of speech, 1 s of silence: the span keeps the speech and 0.2 s either side
    padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speechlike(0.5), np.zeros(SAMPLE_RATE, np.float32)])
    span = speech_span(padded)
    assert span.size == int(0.9 * SAMPLE_RATE)
    np.testing.assert_array_equal(span, padded[int(0.8 * SAMPLE_RATE) : int(1.7 * SAMPLE_RATE)])


def test_whisper_extractor_pools_encoder_states() -> None:
    extractor = build_extractor("whisper")
    clip = DecodedClip("c", speechlike(2.0, silence=0.5), None, None, 2.5)
    first = extractor.extract(clip, None)
    assert first.status == () and first.vector.shape == (1024,) and extractor.dim == 1024
    assert np.all(first.vector[512:] >= 0) and float(np.abs(first.vector[:512]).sum()) > 0
    np.testing.assert_array_equal(extractor.extract(clip, None).vector, first.vector)
    assert extractor.extract(DecodedClip("c", None, None, None, 0.0), None).status == ("no_audio",)
    assert extractor.extract(DecodedClip("c", np.zeros(800, np.float32), None, None, 0.05), None).status == (
        "no_audio",
    )
    with pytest.raises(ValueError, match="compute_type='int4'"):
        build_extractor("whisper", compute_type="int4")


def test_whisper_transcribes_to_text() -> None:
    from features.whisper import WhisperModel

    text = WhisperModel.load().transcribe(speechlike(2.0))
    assert isinstance(text, str) and "<|" not in text


class FixedTranscriber:
    """Stands in for Whisper's ASR (a dependency of the extractor under test): always the same line."""

    def transcribe(self, audio: np.ndarray) -> str:
        return " 我今天很高兴 "


def test_e5_fills_a_missing_transcript_from_asr_and_says_so() -> None:
    extractor = E5Extractor(asr=True)
    extractor._asr = FixedTranscriber()
    clip = DecodedClip("c", speechlike(1.0), None, None, 1.0)
    result = extractor.extract(clip, None)
    assert result.status == ("asr_transcript",)
    np.testing.assert_array_equal(result.vector, E5Extractor().extract(clip, "我今天很高兴").vector)
    # a real transcript is used as it is; without audio there is nothing to transcribe
    assert extractor.extract(clip, "你好").status == ()
    assert extractor.extract(DecodedClip("c", None, None, None, 0.0), None).status == ("empty_transcript",)
    assert cache_key(E5Extractor(asr=True)) != cache_key(E5Extractor())
    assert merge_status(("asr_transcript",), ("no_face",)) == ("no_face", "asr_transcript")
