"""decode_clip on synthetic clips written with PyAV in tmp_path: good, partial, lying and broken files."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest

from clips import media
from clips.media import SAMPLE_RATE, decode_clip, scaled_size, uniform_indices

# the AAC encoder pads the last frame to 1024 samples: at 44.1 kHz that is up to 372 samples at 16 kHz
AAC_FRAME_16K = int(np.ceil(1024 * SAMPLE_RATE / 44_100))
# each video frame i is a flat grey of level GREY_STEP * i, so a decoded frame tells which source frame it is
GREY_STEP = 8


def write_clip(
    path: Path,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (160, 160),
    audio: bool = True,
    video: bool = True,
    rate: int = 44_100,
    options: dict[str, str] | None = None,
) -> Path:
    """An H.264 (yuv420p) + AAC mono clip of `seconds`; size is (height, width); audio is a 440 Hz sine."""
    with av.open(str(path), "w", options=options or {}) as out:
        if video:
            video_stream = out.add_stream("libx264", rate=fps)
            video_stream.height, video_stream.width = size
            video_stream.pix_fmt = "yuv420p"
            video_stream.options = {"preset": "ultrafast"}
        if audio:
            audio_stream = out.add_stream("aac", rate=rate, layout="mono")
        if video:
            for i in range(int(round(seconds * fps))):
                image = np.full((*size, 3), (GREY_STEP * i) % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                out.mux(video_stream.encode(frame))
            out.mux(video_stream.encode())
        if audio:
            n = int(round(seconds * rate))
            signal = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
            step = audio_stream.frame_size or 1024
            for start in range(0, n, step):
                chunk = signal[None, start : start + step]  # (1, samples) packed mono
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                out.mux(audio_stream.encode(frame))
            out.mux(audio_stream.encode())
    return path


def write_wav(path: Path, seconds: float, rate: int = 8_000) -> Path:
    """A stereo 16-bit PCM wav of `seconds`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        n = int(round(seconds * rate))
        samples = (1000 * np.sin(2 * np.pi * 220 * np.arange(n) / rate)).astype(np.int16)
        stereo = np.stack([samples, samples], axis=1).reshape(1, -1)  # packed s16: (1, n * channels)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def claim_mkv_duration(path: Path, seconds: float) -> None:
    """Overwrite the Segment Info Duration (ms) of a Matroska file so it claims `seconds`."""
    data = bytearray(path.read_bytes())
    at = data.find(bytes([0x44, 0x89]))  # EBML id of Duration
    assert at > 0, "no Duration element written"
    if data[at + 2] == 0x88:  # 8-byte float
        data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    else:
        assert data[at + 2] == 0x84, "unexpected Duration size"
        data[at + 3 : at + 7] = struct.pack(">f", seconds * 1000)
    path.write_bytes(bytes(data))


def frame_levels(frames: np.ndarray) -> np.ndarray:
    """(T,) grey level of each flat frame, rounded to the source frame index."""
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / GREY_STEP).astype(int)


def test_audio_and_video_clip(tmp_path: Path) -> None:
    clip = decode_clip(write_clip(tmp_path / "sample_1.mp4", seconds=2.0, fps=10))

    assert clip.name == "sample_1"
    assert clip.status == ()
    assert clip.error is None
    assert clip.audio is not None and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert abs(clip.audio.size - 2 * SAMPLE_RATE) <= AAC_FRAME_16K
    # a 0.3-amplitude sine survives resampling: RMS 0.3 / sqrt(2)
    assert np.sqrt(np.mean(clip.audio[1000:-1000] ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    assert clip.frames is not None and clip.frames.shape == (8, 160, 160, 3) and clip.frames.dtype == np.uint8
    # 20 frames, 8 bins of 2.5: bin centres 1.25, 3.75, ... -> frames 1, 3, 6, 8, 11, 13, 16, 18
    expected = np.array([1, 3, 6, 8, 11, 13, 16, 18])
    np.testing.assert_allclose(clip.frame_times, expected / 10, atol=1e-6)
    np.testing.assert_array_equal(frame_levels(clip.frames), expected)
    assert clip.duration == pytest.approx(2.0, abs=AAC_FRAME_16K / SAMPLE_RATE)
    assert clip.info["claimed_duration"] == pytest.approx(2.0, abs=0.05)
    assert clip.info["fps"] == 10
    assert clip.info["video_packets"] == 20
    assert clip.info["source_sample_rate"] == 44_100


def test_frames_are_downscaled_keeping_aspect(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "wide.mp4", seconds=1.0, size=(120, 320), audio=False)

    clip = decode_clip(path, max_side=160)

    assert clip.frames is not None and clip.frames.shape == (8, 60, 160, 3)


def test_fewer_frames_than_asked_returns_all(tmp_path: Path) -> None:
    clip = decode_clip(write_clip(tmp_path / "short.mp4", seconds=0.5, fps=10), num_frames=8)

    assert clip.frames is not None and clip.frames.shape[0] == 5
    np.testing.assert_allclose(clip.frame_times, [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
    np.testing.assert_array_equal(frame_levels(clip.frames), [0, 1, 2, 3, 4])


def test_audio_only_mp4_is_no_video(tmp_path: Path) -> None:
    clip = decode_clip(write_clip(tmp_path / "samplenew3_1.mp4", seconds=2.0, video=False))

    assert clip.status == ("no_video",)
    assert clip.frames is None and clip.frame_times is None
    assert clip.audio is not None and abs(clip.audio.size - 2 * SAMPLE_RATE) <= AAC_FRAME_16K
    assert clip.duration == pytest.approx(2.0, abs=AAC_FRAME_16K / SAMPLE_RATE)


def test_video_only_mp4_is_no_audio(tmp_path: Path) -> None:
    clip = decode_clip(write_clip(tmp_path / "silent.mp4", seconds=3.0, audio=False))

    assert clip.status == ("no_audio",)
    assert clip.audio is None
    assert clip.frames is not None and clip.frames.shape[0] == 8
    assert clip.duration == pytest.approx(3.0)


def test_wav_is_resampled_to_16k_mono(tmp_path: Path) -> None:
    clip = decode_clip(write_wav(tmp_path / "speech.wav", seconds=2.0, rate=8_000))

    assert clip.status == ("no_video",)
    assert clip.audio is not None and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    # PCM has no frame padding: only the resampler's few samples of slack
    assert abs(clip.audio.size - 2 * SAMPLE_RATE) <= 16
    # ffmpeg's stereo-to-mono matrix is (L + R) / sqrt(2), as `ffmpeg -ac 1` (the organisers' wav extraction)
    assert np.abs(clip.audio).max() == pytest.approx(np.sqrt(2) * 1000 / 32768, rel=0.05)


def test_max_seconds_bounds_audio_and_frames(tmp_path: Path) -> None:
    clip = decode_clip(write_clip(tmp_path / "long.mp4", seconds=3.0), max_seconds=1.0, num_frames=4)

    assert clip.audio is not None and clip.audio.size == SAMPLE_RATE
    assert clip.info["video_packets"] == 10
    # 10 frames in the first second, 4 bins of 2.5 -> frames 1, 3, 6, 8
    np.testing.assert_allclose(clip.frame_times, [0.1, 0.3, 0.6, 0.8], atol=1e-6)
    assert clip.duration == pytest.approx(1.0)


def test_claimed_long_duration_samples_the_real_length(tmp_path: Path) -> None:
    # Matroska's Duration header can be rewritten in place; ffmpeg then reports it as the container duration
    path = write_clip(tmp_path / "liar.mkv", seconds=3.0)
    claim_mkv_duration(path, 2000.0)

    clip = decode_clip(path, num_frames=8)

    assert clip.info["claimed_duration"] == pytest.approx(2000.0)
    assert clip.status == ()
    assert clip.duration == pytest.approx(3.0, abs=AAC_FRAME_16K / SAMPLE_RATE)
    # 30 frames, 8 bins of 3.75 -> frames 1, 5, 9, 13, 16, 20, 24, 28 spread over the real 3 s
    expected = np.array([1, 5, 9, 13, 16, 20, 24, 28])
    np.testing.assert_allclose(clip.frame_times, expected / 10, atol=1e-3)
    np.testing.assert_array_equal(frame_levels(clip.frames), expected)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a video at all " * 500, np.random.default_rng(0).bytes(20_000)],
    ids=["zero_bytes", "text", "random_bytes"],
)
def test_broken_files_are_unreadable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)

    clip = decode_clip(path)

    assert "unreadable" in clip.status
    assert clip.status == ("no_audio", "no_video", "unreadable")
    assert clip.audio is None and clip.frames is None and clip.duration == 0.0
    assert clip.error


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    clip = decode_clip(tmp_path / "nowhere.mp4", name="nowhere")

    assert clip.name == "nowhere"
    assert "unreadable" in clip.status
    assert "nowhere.mp4" in clip.error


def test_truncated_mp4_keeps_what_decoded(tmp_path: Path) -> None:
    # faststart puts the index first, so cutting the tail leaves an openable file with missing packets
    path = write_clip(tmp_path / "cut.mp4", seconds=3.0, options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])

    clip = decode_clip(path)

    assert "truncated" in clip.status and "unreadable" not in clip.status
    assert clip.error
    assert clip.audio is not None and clip.frames is not None
    assert 0.5 < clip.duration < 2.5
    assert clip.frame_times.max() < clip.duration


def test_mp4_cut_before_its_index_is_unreadable(tmp_path: Path) -> None:
    # without faststart the index (moov) is written last: cutting the file loses all of it
    path = write_clip(tmp_path / "cut.mp4", seconds=3.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    assert "unreadable" in decode_clip(path).status


def test_permission_error_is_unreadable_with_the_os_message(tmp_path: Path, monkeypatch) -> None:
    path = write_clip(tmp_path / "locked.mp4", seconds=0.5)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(media.av, "open", refuse)
    clip = decode_clip(path)

    assert "unreadable" in clip.status
    assert "Permission denied" in clip.error


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file, any mode")
def test_unreadable_permissions_on_disk(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "locked.mp4", seconds=0.5)
    path.chmod(0)
    try:
        clip = decode_clip(path)
    finally:
        path.chmod(0o644)

    assert "unreadable" in clip.status
    assert "Permission denied" in clip.error


def test_uniform_indices() -> None:
    np.testing.assert_array_equal(uniform_indices(30, 8), [1, 5, 9, 13, 16, 20, 24, 28])
    np.testing.assert_array_equal(uniform_indices(8, 8), np.arange(8))
    np.testing.assert_array_equal(uniform_indices(3, 8), [0, 1, 2])
    np.testing.assert_array_equal(uniform_indices(100, 4), [12, 37, 62, 87])
    assert uniform_indices(0, 8).size == 0
    assert uniform_indices(5, 0).size == 0


def test_scaled_size() -> None:
    assert scaled_size(1280, 720, 320) == (320, 180)
    assert scaled_size(720, 1280, 320) == (180, 320)
    assert scaled_size(100, 50, 320) == (100, 50)  # never enlarged


def test_decoding_a_short_clip_is_fast(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "fast.mp4", seconds=3.0, fps=10, size=(160, 160))
    decode_clip(path)  # warm-up: codec tables, first allocation
    times = []
    for _ in range(5):
        start = time.perf_counter()
        decode_clip(path)
        times.append(time.perf_counter() - start)
    # about 25 ms on one free core; the bound is loose so a busy test machine does not fail it
    assert float(np.median(times)) < 0.2


def test_skipping_the_deblocking_filter_keeps_timing_and_changes_pixels_a_little(tmp_path: Path) -> None:
    from bench.features import write_mp4

    rng = np.random.default_rng(0)
    # a smooth gradient drifting under sensor noise, squeezed to 150 kbit/s: blocky enough for the filter to act
    ramp = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None]
    frames = [np.clip(np.roll(ramp, 4 * i, axis=1) + rng.normal(0, 12, (192, 320, 3)), 0, 255).astype(np.uint8)
              for i in range(30)]
    path = write_mp4(tmp_path / "blocky.mp4", np.stack(frames), np.zeros(SAMPLE_RATE, np.float32), fps=10,
                     bit_rate=150_000)

    filtered = decode_clip(path, num_frames=6)
    unfiltered = decode_clip(path, num_frames=6, deblock=False)

    assert unfiltered.status == filtered.status == ()
    assert unfiltered.frames.shape == filtered.frames.shape == (6, 192, 320, 3)
    np.testing.assert_array_equal(unfiltered.frame_times, filtered.frame_times)
    error = np.mean((unfiltered.frames.astype(np.float64) - filtered.frames) ** 2)
    assert error > 0  # the filter did run on the default path
    assert 10 * np.log10(255**2 / error) > 30  # and leaving it out is a small change
