"""Throughput of the embedded feature extractors on real-size clips: clips/s in all and per extractor.

Usage:
    python -m bench.features --clips 120 --workers 2                (720p, 5 s: the issue-11 target is >= 4 clips/s)
    python -m bench.features --extractors egemaps,face --size 160x160 --seconds 3
(as a module: bench/student.py would shadow the package). Writes `--distinct` H.264 + AAC clips (a 1280x720 wide shot
with a real face photo drifting across a blurred background, sensor noise, x264 "veryfast" with B-frames at about
2 Mbit/s like broadcast video; speech-like audio from the demo's synthesiser) and copies them to `--clips` names,
runs extract_features from a cold cache, and prints clips/s, then per part (decoding and each extractor) the
milliseconds per clip (wall and CPU, and CPU without the workers' one-off model loading) and the clips/s that
part alone allows with this many workers on otherwise idle cores (from its warm CPU time), and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import av
import cv2
import matplotlib
import numpy as np

from bench.scenes import background, load_portraits, wide_shot
from clips.dataset import ClipRef
from clips.media import SAMPLE_RATE, decode_clip
from demo.audio import audio_cues, synth_speech
from features import DEFAULT_EXTRACTORS, build_extractor, cache_key, extract_features
from features.base import DEFAULT_FRAME_SIDE, FEATURE_DECODE, frame_side
from features.runner import fit_clip

TRANSCRIPTS = ("我今天真的非常高兴", "你为什么不早点告诉我", "别担心，一切都会好起来的", "这到底是怎么回事")
LABELS = ("neutral", "angry", "happy", "sad", "worried", "surprise")


def shot_frames(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """(count, height, width, 3) RGB frames of one shot: a face 90-200 px wide (at 1280) drifting, sensor noise."""
    portrait = load_portraits()[0]
    scale = width / 1280
    face_width = int(rng.integers(90, 200))
    scene = background(rng)
    start = np.array([rng.integers(0, 1280 - 3 * face_width), rng.integers(0, max(1, 720 - 4 * face_width))])
    step = rng.normal(0, 1.5, 2)
    frames = []
    for i in range(count):
        frame, _ = wide_shot(rng, portrait, face_width, scene, tuple(int(v) for v in start + i * step))
        frames.append(frame if scale == 1 and height == 720 else _resize(frame, width, height))
    return np.stack(frames)


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def face_frames(count: int, size: int = 160) -> np.ndarray:
    """(count, size, size, 3) RGB frames of matplotlib's Grace Hopper photo (a face Haar finds), drifting."""
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = cv2.resize(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)[:512], (size, size))
    return np.stack([np.roll(image, i % 20, axis=1) for i in range(count)])


def write_clip(path: Path, frames: np.ndarray, seconds: float, fps: int, seed: int) -> None:
    """An H.264 + AAC mp4 of `frames` (repeated) at `fps` with a noisy tone at 16 kHz: small clips for tests."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.02 * rng.standard_normal(t.size))
    count = int(seconds * fps)
    write_mp4(path, frames[np.arange(count) % len(frames)], audio.astype(np.float32), fps, preset="ultrafast")


def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int = 25, preset: str = "veryfast",
              bit_rate: int | None = None) -> Path:
    """Write an H.264 (x264 `preset`, at `bit_rate` else x264's default quality) + AAC mp4 of RGB `frames` and
    16 kHz mono `audio` to `path`; returns `path`."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        if bit_rate is not None:
            video.bit_rate = bit_rate
        video.options = {"preset": preset}
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        for start in range(0, audio.size, 1024):
            chunk = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = start
            out.mux(sound.encode(chunk))
        out.mux(sound.encode())
    return path


def write_clips(folder: Path, count: int, distinct: int, seconds: float, size: tuple[int, int]) -> list[ClipRef]:
    """`distinct` clips written, then copied to `count` names; their refs with transcripts."""
    rng = np.random.default_rng(0)
    fps = 25
    sources = []
    for i in range(min(distinct, count)):
        path = folder / f"source_{i:03d}.mp4"
        # the sensor noise changes every frame, as a camera's does, so the bitrate is a real video's
        frames = shot_frames(rng, int(seconds * fps), *size)
        audio = synth_speech(audio_cues(LABELS[i % len(LABELS)], 0.8, rng), seconds, rng)
        # about 2 Mbit/s at 720p, as broadcast video
        write_mp4(path, frames, audio, fps, bit_rate=int(2_000_000 * size[0] * size[1] / (1280 * 720)))
        sources.append(path)
    refs = []
    for i in range(count):
        path = folder / f"bench_{i:05d}.mp4"
        shutil.copyfile(sources[i % len(sources)], path)
        refs.append(ClipRef(path.stem, path, None, TRANSCRIPTS[i % len(TRANSCRIPTS)]))
    return refs


def loading_seconds(ref: ClipRef, extractors: list[str], num_frames: int) -> dict[str, float]:
    """CPU seconds each extractor's first call costs more than its second (model loading), by cache key."""
    built = [build_extractor(name, num_frames=num_frames) for name in extractors]
    side = max((frame_side(e) for e in built if e.modality == "visual"), default=DEFAULT_FRAME_SIDE)
    clip = decode_clip(ref.path, num_frames=num_frames, max_side=side, **FEATURE_DECODE)
    loading = {}
    for extractor in built:
        costs = []
        for _ in range(2):
            started = time.process_time()
            extractor.extract(fit_clip(clip, extractor), ref.transcript)
            costs.append(time.process_time() - started)
        loading[cache_key(extractor)] = max(costs[0] - costs[1], 0.0)
    return loading


def main() -> None:
    """Parse flags, write the clips, run the extraction and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--distinct", type=int, default=6, help="clips actually encoded; the rest are copies")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the clips")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--extractors", default=",".join(DEFAULT_EXTRACTORS), help="comma-separated names")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    extractors = [name for name in args.extractors.split(",") if name]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        refs = write_clips(folder, args.clips, args.distinct, args.seconds, size)
        report = extract_features(refs, extractors, folder / "cache", workers=args.workers,
                                  num_frames=args.num_frames)
        loading = loading_seconds(refs[0], extractors, args.num_frames)

    print(f"{args.clips} clips of {args.seconds:.0f} s at {size[0]}x{size[1]}, {args.workers} workers, "
          f"extractors {extractors}")
    print(f"elapsed {report.elapsed:.1f} s (including worker start-up and model loading): "
          f"{report.clips_per_second:.2f} clips/s")
    print(f"steady rate (second half of the clips, models loaded): {report.steady_clips_per_second:.2f} clips/s")
    print(f"statuses {report.status_counts}, errors {len(report.errors)}")
    # CPU time is what a part costs whatever else runs on the machine (wall time grows when the cores are shared);
    # "warm" leaves out each worker's one-off model loading, which a 115,000-clip run spreads to nothing
    print(f"  {'part':<22} {'wall ms/clip':>12} {'CPU ms/clip':>12} {'warm CPU ms':>12} {'clips/s warm':>13}")
    processed = max(report.processed, 1)
    warm_total = 0.0
    for part, seconds in sorted(report.seconds.items()):
        cpu = report.cpu_seconds.get(part, 0.0) / processed
        warm = max(cpu - args.workers * loading.get(part, 0.0) / processed, 0.0)
        warm_total += warm
        print(f"  {part:<22} {1000 * seconds / processed:12.1f} {1000 * cpu:12.1f} {1000 * warm:12.1f} "
              f"{args.workers / max(warm, 1e-9):13.1f}")
    wall, cpu = sum(report.seconds.values()) / processed, sum(report.cpu_seconds.values()) / processed
    print(f"  {'all parts':<22} {1000 * wall:12.1f} {1000 * cpu:12.1f} {1000 * warm_total:12.1f} "
          f"{args.workers / max(warm_total, 1e-9):13.1f}")
    print("model loading per worker (CPU s): " + ", ".join(f"{k} {v:.2f}" for k, v in loading.items()))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main process {own:.0f} MiB, largest worker {children:.0f} MiB")


if __name__ == "__main__":
    main()
