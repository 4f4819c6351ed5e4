"""Embedded extractors, the per-clip cache, the runner and load_features on synthetic clips in tmp_path."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import av
import cv2
import matplotlib
import numpy as np
import pytest

from clips import media
from clips.dataset import ClipRef
from clips.io import atomic_save_npz
from clips.media import SAMPLE_RATE, DecodedClip
from features import (
    DEFAULT_EXTRACTORS,
    EXTRACTORS,
    FeatureResult,
    build_extractor,
    cache_key,
    extract_features,
    load_features,
)
from features.cache import clip_path, read_entry, write_entry
from features.face import (
    CROP_SIZE,
    FACE_DIM,
    FACE_LAYOUT,
    LBP_BINS,
    crop_gray,
    face_features,
    hog_cells,
    lbp_histogram,
)

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
needs_face_photo = pytest.mark.skipif(
    not GRACE_HOPPER.is_file(), reason="matplotlib's grace_hopper.jpg is absent"
)
RNG = np.random.default_rng(0)
# the runner's tests use one extractor per modality (the default set adds Whisper, tested in test_features_perception)
ONE_PER_MODALITY = ("egemaps", "face", "e5")


def sine(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * RNG.standard_normal(t.size)).astype(np.float32)


def face_frames(count: int = 8, size: int = 160) -> np.ndarray:
    """(count, size, size, 3) RGB frames of a real photographed face drifting right by 2 px a frame."""
    image = cv2.cvtColor(cv2.imread(str(GRACE_HOPPER)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image[:512], (size, size), interpolation=cv2.INTER_AREA)
    return np.stack([np.roll(image, 2 * i, axis=1) for i in range(count)])


def noise_frames(count: int = 8, size: int = 96) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def make_clip(
    name: str = "clip", audio: np.ndarray | None = None, frames: np.ndarray | None = None
) -> DecodedClip:
    times = None if frames is None else np.linspace(0.0, 3.0, len(frames), endpoint=False)
    return DecodedClip(name=name, audio=audio, frames=frames, frame_times=times, duration=3.0)


# ---------------------------------------------------------------- registry and keys


def test_registry_lists_defaults_and_refuses_unknown_names() -> None:
    assert DEFAULT_EXTRACTORS == ("egemaps", "whisper", "face", "e5")
    assert set(DEFAULT_EXTRACTORS) <= set(EXTRACTORS)
    with pytest.raises(
        ValueError,
        match=r"unknown feature extractor 'nope'; registered: clip, compare, e5, egemaps, emobase, face, hf_text, "
        "hubert, llm_text, whisper$",
    ):
        build_extractor("nope")
    with pytest.raises(ValueError, match="bad options"):
        build_extractor("egemaps", window=3)
    with pytest.raises(ValueError, match="bad options"):
        build_extractor("egemaps", dim=3)
    compare, emobase = build_extractor("compare"), build_extractor("emobase")
    assert (compare.name, compare.dim, emobase.name, emobase.dim) == ("compare", 6373, "emobase", 988)
    with pytest.raises(ValueError, match="feature_set='GeMAPS' is unknown"):
        build_extractor("egemaps", feature_set="GeMAPS")


def test_cache_key_is_name_and_settings_hash() -> None:
    key = cache_key(build_extractor("face"))
    assert key.startswith("face-") and len(key) == len("face-") + 8
    assert key == cache_key(build_extractor("face", num_frames=8))
    assert key != cache_key(build_extractor("face", num_frames=16))
    # num_frames does not change audio or text features, so it does not change their keys
    assert cache_key(build_extractor("egemaps", num_frames=4)) == cache_key(build_extractor("egemaps"))
    assert cache_key(build_extractor("e5", num_frames=4)) == cache_key(build_extractor("e5"))


def test_visual_cache_keys_follow_how_frames_are_decoded(monkeypatch) -> None:
    import features.base

    face, egemaps = cache_key(build_extractor("face")), cache_key(build_extractor("egemaps"))
    monkeypatch.setattr(features.base, "FEATURE_DECODE", {"deblock": True})
    assert cache_key(build_extractor("face")) != face  # frames decoded otherwise: the cached vectors are not reused
    assert cache_key(build_extractor("egemaps")) == egemaps  # audio features do not depend on frame decoding
    monkeypatch.setattr(features.base, "FRAME_SCALING", "BICUBIC")
    monkeypatch.setattr(features.base, "FEATURE_DECODE", {"deblock": False})
    assert cache_key(build_extractor("face")) != face


def test_steady_rate_leaves_out_the_first_half_of_the_clips() -> None:
    from features.runner import ExtractionReport

    # 4 s of start-up for the first clip, then one clip every 0.25 s
    finished = [4.0 + 0.25 * i for i in range(8)]
    report = ExtractionReport(processed=8, skipped=0, status_counts={}, errors=[], elapsed=6.0, seconds={},
                              cache_keys=[], finished=finished)
    assert report.clips_per_second == pytest.approx(8 / 6.0)
    assert report.steady_clips_per_second == pytest.approx(4.0)  # clips 5..8 over the 1 s after clip 4
    assert ExtractionReport(3, 0, {}, [], 1.0, {}, [], finished=[0.1, 0.2, 0.3]).steady_clips_per_second == 0.0


def test_worker_thread_limits_reach_an_already_loaded_blas() -> None:
    import subprocess
    import sys

    # a fresh interpreter: numpy (and its OpenBLAS pool) is loaded before the limit, as in a spawned worker
    # (set to 3 threads first, so the check means something on a one-core machine too)
    code = ("import numpy, features.runner as r; from threadpoolctl import threadpool_info, threadpool_limits; "
            "threadpool_limits(3); r._limit_threads(); print(sorted({p['num_threads'] for p in threadpool_info()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[1]"


# ---------------------------------------------------------------- embedded extractors


def test_egemaps_on_audio_and_missing_audio() -> None:
    extractor = build_extractor("egemaps")
    result = extractor.extract(make_clip(audio=sine(1.0)), None)
    assert result.vector.shape == (88,) and result.vector.dtype == np.float32
    assert np.isfinite(result.vector).all() and result.status == ()
    assert extractor.extract(make_clip(audio=None), None) == FeatureResult(None, ("no_audio",))
    assert extractor.extract(make_clip(audio=sine(0.05)), None) == FeatureResult(None, ("no_audio",))


def test_e5_embeds_chinese_and_flags_empty_transcripts() -> None:
    extractor = build_extractor("e5")
    result = extractor.extract(make_clip(), "我今天真的非常高兴")
    assert result.vector.shape == (384,) and result.status == ()
    assert np.linalg.norm(result.vector) == pytest.approx(1.0, abs=1e-4)
    for transcript in (None, "", "   "):
        assert extractor.extract(make_clip(), transcript) == FeatureResult(None, ("empty_transcript",))


@needs_face_photo
def test_face_extractor_finds_a_real_face() -> None:
    result = build_extractor("face").extract(make_clip(frames=face_frames()), None)
    assert result.status == ()
    assert result.vector.shape == (FACE_DIM,) and FACE_DIM <= 600
    geometry = result.vector[FACE_LAYOUT["geometry"]]
    assert geometry[0] == 1.0  # detected on every frame
    assert 0.3 < geometry[2] < 0.7  # the face is about half the frame wide
    # the face drifts right, so the crop and centre change between frames
    assert result.vector[FACE_LAYOUT["motion"]][6] > 0


def test_face_extractor_falls_back_to_whole_frames_without_a_face() -> None:
    result = build_extractor("face").extract(make_clip(frames=noise_frames()), None)
    assert result.status == ("no_face",)
    geometry = result.vector[FACE_LAYOUT["geometry"]]
    np.testing.assert_allclose(geometry, [0, 0, 1, 0, 0.5, 0, 0.5, 0])
    assert np.abs(result.vector[FACE_LAYOUT["appearance"]]).sum() > 0
    assert build_extractor("face").extract(make_clip(frames=None), None) == FeatureResult(None, ("no_video",))


def test_face_features_from_given_boxes() -> None:
    frames = noise_frames(count=3, size=100)
    boxes = [(10, 20, 40, 40), None, (12, 20, 40, 40)]
    vector = face_features(frames, boxes, profile=[False, False, True])
    geometry = vector[FACE_LAYOUT["geometry"]]
    np.testing.assert_allclose(geometry[:4], [2 / 3, 0.5, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(geometry[4], (30 + 32) / 2 / 100, atol=1e-6)
    # only the two frames with a face are averaged: the same as averaging their crops' descriptors by hand
    from features.face import crop_descriptor

    manual = np.mean([crop_descriptor(crop_gray(frames[i], boxes[i]))[0] for i in (0, 2)], axis=0)
    np.testing.assert_allclose(vector[FACE_LAYOUT["appearance"]], manual, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one \\(or None\\) per frame"):
        face_features(frames, boxes[:2])


def test_crop_hog_and_lbp_shapes() -> None:
    frame = noise_frames(count=1, size=120)[0]
    crop = crop_gray(frame, (100, 100, 50, 50))  # clipped to the frame
    assert crop.shape == (CROP_SIZE, CROP_SIZE) and crop.dtype == np.uint8
    hist, magnitude = hog_cells(crop, 4, 4, 9)
    assert hist.shape == (144,) and magnitude.shape == crop.shape
    assert np.linalg.norm(hist) == pytest.approx(1.0, abs=1e-4)
    lbp = lbp_histogram(crop)
    assert lbp.shape == (LBP_BINS,) and lbp.sum() == pytest.approx(1.0)
    # a flat image has a single LBP pattern (all neighbours >= centre)
    assert lbp_histogram(np.full((8, 8), 7, np.uint8)).max() == 1.0
    with pytest.raises(ValueError, match="outside"):
        crop_gray(frame, (200, 200, 10, 10))


# ---------------------------------------------------------------- cache files


def test_cache_entry_roundtrip_and_validation(tmp_path: Path) -> None:
    path = clip_path(tmp_path, "x-00000000", "a")
    write_entry(path, FeatureResult(np.arange(4, dtype=np.float32), ("no_face",)), 4, ("no_audio",))
    entry = read_entry(path, 4)
    np.testing.assert_array_equal(entry.vector, np.arange(4))
    assert (entry.mask, entry.status, entry.clip_status, entry.error) == (
        True,
        ("no_face",),
        ("no_audio",),
        "",
    )
    write_entry(path, FeatureResult(None, ("no_video",)), 4, error="boom")
    entry = read_entry(path, 4)
    assert not entry.mask and entry.error == "boom" and not entry.vector.any()
    assert read_entry(path, 5) is None  # wrong dim
    atomic_save_npz(
        path, feature=np.array([0, np.nan, 0, 0], np.float32), mask=np.array(True), status=np.array("ok")
    )
    assert read_entry(path, 4) is None  # not finite
    path.write_bytes(path.read_bytes()[:40])
    assert read_entry(path, 4) is None  # truncated
    assert read_entry(tmp_path / "absent.npz", 4) is None
    with pytest.raises(ValueError, match="not safe"):
        clip_path(tmp_path, "x-00000000", "../escape")


# ---------------------------------------------------------------- runner


class FakeDecoder:
    """Stands in for clips.media.decode_clip: media by clip name, and a count of decodes."""

    def __init__(self, clips: dict[str, DecodedClip]) -> None:
        self.clips = clips
        self.calls: list[str] = []

    def __call__(self, path: Path, name: str | None = None, num_frames: int = 8, **_: object) -> DecodedClip:
        self.calls.append(name)
        return self.clips[name]


@pytest.fixture
def corpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[ClipRef], FakeDecoder]:
    """Four clips: full, audio-only (no video), no media file at all, and one with an empty transcript."""
    decoded = {
        "full": make_clip("full", audio=sine(1.0), frames=noise_frames(4)),
        "audio_only": DecodedClip("audio_only", sine(1.0), None, None, 1.0, status=("no_video",)),
        "silent_text": make_clip("silent_text", audio=sine(0.5), frames=noise_frames(4)),
    }
    decoder = FakeDecoder(decoded)
    monkeypatch.setattr(media, "decode_clip", decoder)
    refs = [
        ClipRef("full", tmp_path / "full.mp4", "happy", "我很高兴"),
        ClipRef("audio_only", tmp_path / "audio_only.mp4", None, "真的吗"),
        ClipRef("no_file", None, None, "没有视频", status=("no_media",)),
        ClipRef("silent_text", tmp_path / "silent_text.mp4", "sad", None, status=("empty_transcript",)),
    ]
    return refs, decoder


def read_status_csv(root: Path) -> list[list[str]]:
    with (root / "status.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_runner_caches_every_clip_and_writes_status(corpus, tmp_path: Path) -> None:
    refs, decoder = corpus
    root = tmp_path / "cache"
    report = extract_features(refs, ONE_PER_MODALITY, root, workers=1, progress=False)
    assert (report.processed, report.skipped, report.errors) == (4, 0, [])
    assert sorted(decoder.calls) == ["audio_only", "full", "silent_text"]  # no_file is never decoded
    assert read_status_csv(root) == [
        ["name", "status"],
        ["full", "no_face"],
        ["audio_only", "no_video"],
        ["no_file", "no_audio;no_video;no_media"],
        ["silent_text", "no_face;empty_transcript"],
    ]
    assert report.status_counts == {
        "no_face": 2,
        "no_video": 2,
        "no_audio": 1,
        "no_media": 1,
        "empty_transcript": 1,
    }
    for key in report.cache_keys:
        meta = (root / key / "meta.json").read_text()
        assert '"settings"' in meta and '"versions"' in meta and '"numpy"' in meta

    names = ["silent_text", "no_file", "full", "audio_only"]
    features = load_features(root, ONE_PER_MODALITY, names)
    assert features.names == names and features.extractors == report.cache_keys
    assert features.modalities == ["audio", "visual", "text"]
    assert [b.shape for b in features.blocks] == [(4, 88), (4, FACE_DIM), (4, 384)]
    expected = np.array([[1, 1, 0], [0, 0, 1], [1, 1, 1], [1, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(features.masks, expected)
    for block, mask in zip(features.blocks, features.masks.T, strict=True):
        assert not block[~mask].any() and block[mask].any(axis=1).all()
    direct = build_extractor("e5").extract(make_clip(), "我很高兴").vector
    np.testing.assert_array_equal(features.blocks[2][2], direct)


def test_rerun_skips_valid_files_and_recomputes_corrupted_ones(corpus, tmp_path: Path) -> None:
    refs, decoder = corpus
    root = tmp_path / "cache"
    first = extract_features(refs, ONE_PER_MODALITY, root, workers=1, progress=False)
    decoder.calls.clear()
    again = extract_features(refs, ONE_PER_MODALITY, root, workers=1, progress=False)
    assert (again.processed, again.skipped, decoder.calls) == (0, 4, [])
    assert again.status_counts == first.status_counts
    assert read_status_csv(root)[1:] == read_status_csv(root)[1:]

    face_file = clip_path(root, first.cache_keys[1], "full")
    face_file.write_bytes(b"not an npz")
    text_file = clip_path(root, first.cache_keys[2], "audio_only")
    atomic_save_npz(text_file, feature=np.zeros(3, np.float32), mask=np.array(True), status=np.array("ok"))
    before = clip_path(root, first.cache_keys[0], "full").stat().st_mtime_ns
    third = extract_features(refs, ONE_PER_MODALITY, root, workers=1, progress=False)
    assert (third.processed, third.skipped) == (2, 2)
    assert sorted(decoder.calls) == ["full"]  # text-only recomputation needs no decoding
    assert read_entry(face_file, FACE_DIM) is not None and read_entry(text_file, 384) is not None
    assert clip_path(root, first.cache_keys[0], "full").stat().st_mtime_ns == before  # valid files untouched


def test_status_csv_keeps_rows_of_other_clips(corpus, tmp_path: Path) -> None:
    refs, _ = corpus
    root = tmp_path / "cache"
    extract_features(refs[:2], ["e5"], root, workers=1, progress=False)
    extract_features(refs[2:], ["e5"], root, workers=1, progress=False)
    assert [row[0] for row in read_status_csv(root)] == [
        "name",
        "full",
        "audio_only",
        "no_file",
        "silent_text",
    ]


def test_a_crashing_extractor_does_not_stop_the_run(corpus, monkeypatch, tmp_path: Path) -> None:
    refs, _ = corpus

    class Fragile:
        name, modality, dim = "fragile", "audio", 2

        def settings(self) -> dict:
            return {}

        def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
            if clip.name == "full":
                raise RuntimeError("decoder exploded")
            return FeatureResult(np.ones(2, np.float32))

    monkeypatch.setitem(EXTRACTORS, "fragile", lambda num_frames=8: Fragile())
    root = tmp_path / "cache"
    report = extract_features(refs, ["fragile", "e5"], root, workers=1, progress=False)
    key = report.cache_keys[0]
    assert report.processed == 4
    assert report.errors == [("full", key, "RuntimeError: decoder exploded")]
    assert ["full", "no_audio"] in read_status_csv(root)
    entry = read_entry(clip_path(root, key, "full"), 2)
    assert not entry.mask and entry.error == "RuntimeError: decoder exploded"
    features = load_features(root, ["fragile", "e5"], ["full", "audio_only"])
    np.testing.assert_array_equal(features.masks, [[False, True], [True, True]])
    # the failed entry is retried on the next run; the good ones are skipped
    again = extract_features(refs, ["fragile", "e5"], root, workers=1, progress=False)
    assert (again.processed, again.skipped, len(again.errors)) == (1, 3, 1)


def test_runner_refuses_bad_input(corpus, tmp_path: Path) -> None:
    refs, _ = corpus
    with pytest.raises(ValueError, match="appear twice"):
        extract_features([refs[0], refs[0]], ["e5"], tmp_path, workers=1, progress=False)
    with pytest.raises(ValueError, match="not safe"):
        extract_features([ClipRef("a/b", None, None, "x")], ["e5"], tmp_path, workers=1, progress=False)
    with pytest.raises(ValueError, match="extractor_options for \\['face'\\]"):
        extract_features(refs, ["e5"], tmp_path, extractor_options={"face": {}}, progress=False)
    with pytest.raises(ValueError, match="workers=0"):
        extract_features(refs, ["e5"], tmp_path, workers=0, progress=False)


def test_two_worker_processes_match_in_process(tmp_path: Path) -> None:
    refs = [ClipRef(f"t{i}", None, None, text) for i, text in enumerate(["你好", "太好了", "", "为什么"])]
    report = extract_features(refs, ["e5", "egemaps"], tmp_path / "pool", workers=2, progress=False)
    assert (report.processed, report.skipped) == (4, 0)
    extract_features(refs, ["e5", "egemaps"], tmp_path / "single", workers=1, progress=False)
    names = [ref.name for ref in refs]
    pooled = load_features(tmp_path / "pool", ["e5", "egemaps"], names)
    single = load_features(tmp_path / "single", ["e5", "egemaps"], names)
    np.testing.assert_array_equal(pooled.blocks[0], single.blocks[0])
    np.testing.assert_array_equal(pooled.masks, [[True, False]] * 2 + [[False, False]] + [[True, False]])


# ---------------------------------------------------------------- load_features


def test_load_features_errors_and_consolidated_cache(tmp_path: Path) -> None:
    refs = [ClipRef(f"c{i}", None, None, f"第{i}句话") for i in range(3)]
    report = extract_features(refs, ["e5"], tmp_path, workers=1, progress=False)
    key = report.cache_keys[0]
    names = ["c2", "c0"]
    first = load_features(tmp_path, [key], names)
    consolidated = list((tmp_path / key).glob("consolidated-*.npz"))
    assert len(consolidated) == 1
    # a fresh consolidated file is what the second call reads
    atomic_save_npz(consolidated[0], feature=np.full((2, 384), 7, np.float32), mask=np.ones(2, bool))
    assert (load_features(tmp_path, ["e5"], names).blocks[0] == 7).all()
    # rewriting a clip file makes it stale, so the clip files are read again
    os.utime(clip_path(tmp_path, key, "c0"), ns=(1 << 62, 1 << 62))
    np.testing.assert_array_equal(load_features(tmp_path, ["e5"], names).blocks[0], first.blocks[0])

    with pytest.raises(FileNotFoundError, match=r"1 clip\(s\) not extracted \(e.g. \['c9'\]\)"):
        load_features(tmp_path, ["e5"], ["c0", "c9"])
    with pytest.raises(ValueError, match="no feature cache for 'face'"):
        load_features(tmp_path, ["face"], names)
    extract_features(
        refs, ["e5"], tmp_path, workers=1, progress=False, extractor_options={"e5": {"variant": "enpt"}}
    )
    with pytest.raises(ValueError, match="matches several caches"):
        load_features(tmp_path, ["e5"], names)


# ---------------------------------------------------------------- end to end on an mp4


def write_face_mp4(path: Path, frames: np.ndarray, seconds: float = 3.0, fps: int = 10) -> Path:
    """H.264 + AAC mp4 showing `frames` in turn, with a 220 Hz tone."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        signal = sine(seconds)
        for start in range(0, signal.size, 1024):
            chunk = av.AudioFrame.from_ndarray(
                signal[None, start : start + 1024], format="flt", layout="mono"
            )
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode())
    return path


@needs_face_photo
def test_end_to_end_on_an_mp4(tmp_path: Path) -> None:
    path = write_face_mp4(tmp_path / "sample_1.mp4", face_frames())
    try:
        media.decode_clip(path, name="sample_1", num_frames=2)
    except NotImplementedError:
        pytest.skip("clips.media.decode_clip is not implemented yet")
    refs = [ClipRef("sample_1", path, "happy", "我很高兴")]
    report = extract_features(refs, ONE_PER_MODALITY, tmp_path / "cache", workers=1, progress=False)
    assert (report.processed, report.errors, report.status_counts) == (1, [], {"ok": 1})
    features = load_features(tmp_path / "cache", ONE_PER_MODALITY, ["sample_1"])
    assert features.masks.tolist() == [[True, True, True]]
    assert features.blocks[1][0, FACE_LAYOUT["geometry"]][0] == 1.0  # the face is found on every frame
