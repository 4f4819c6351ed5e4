"""A deterministic synthetic corpus in the MER2024 raw layout, so the whole pipeline runs offline on CPU.

Usage:
    from demo.corpus import make_demo
    from demo.plan import DemoConfig
    summary = make_demo(Path("demo-run/data"), DemoConfig(labelled=240, unlabelled=960, seed=0))
    summary.counts["labelled"]["surprise"], summary.broken_names("no_video")
With workers > 1 the clips render in spawned processes, so a script must call make_demo under
`if __name__ == "__main__":` (spawn re-imports the main module).

Every clip shows its emotion in all three modalities, each imperfectly. Each modality only separates groups of
classes, and the groups cross, so that audio and visual together pin down one class while either alone cannot:
    audio groups (demo.audio):  {neutral, sad} low and slow, {angry, happy} loud and fast, {worried, surprise}
                                rising pitch
    visual groups (demo.faces): {neutral, worried} resting face, {angry, sad} frown and knitted brows,
                                {happy, surprise} open smile and raised brows
    text (demo.text): a phrase of the clip's emotion for about 40% of clips, a misleading phrase of another
                      emotion for about 10%, else an everyday neutral line.
Per-clip nuisance (speaker pitch, face identity, head motion, expression strength, a share of ambiguous clips)
keeps a fused classifier well below 100%. A few clips of each set are broken on purpose (demo.plan.BROKEN_KINDS),
like the defects of the real release. The same config and seed write identical CSVs and media, whatever the
number of workers: each clip draws from its own numpy Generators (demo.plan.clip_rngs).
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import time
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from clips.io import atomic_write_text
from clips.labels import LABELS
from clips.media import SAMPLE_RATE
from demo.audio import AUDIO_GROUP, audio_cues, synth_speech
from demo.faces import VISUAL_GROUP, render_frames
from demo.plan import (
    HIDDEN_LABELS_CSV,
    LABEL_CSV,
    LABELLED_DIR,
    MANIFEST,
    MERGE_CSV,
    TRANSCRIPTION_CSV,
    UNLABELLED_DIR,
    BrokenClip,
    ClipPlan,
    DemoConfig,
    DemoSummary,
    clip_rngs,
    expression_strengths,
    plan_split,
)
from demo.text import GARBAGE_TRANSCRIPT, transcript_line


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


def _render_clip(job: tuple[ClipPlan, DemoConfig]) -> tuple[str, str, str]:
    """Write one clip's media file; returns (name, transcript, text kind)."""
    plan, cfg = job
    expression_rng, text_rng, audio_rng, video_rng = clip_rngs(cfg.seed, plan.split, plan.index)
    audio_strength, face_strength = expression_strengths(expression_rng)
    transcript, text_kind = transcript_line(plan.label, text_rng)
    if plan.broken == "empty_transcript":
        transcript = "" if plan.variant == "empty" else GARBAGE_TRANSCRIPT
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


def _csv_text(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _check_out(out: Path, plans: list[ClipPlan]) -> None:
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
    plans = plan_split(out, "labelled", cfg.labelled, cfg) + plan_split(
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
