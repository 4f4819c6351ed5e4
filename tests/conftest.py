"""Session fixtures for the LLM tests: the real Qwen2 vocabulary, tiny saved models built once, synthetic clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_FAMILIES = ("qwen2_audio", "qwen2_5_vl", "qwen2_5_omni", "qwen2_5_text")


@pytest.fixture(scope="session")
def qwen2_tok():
    """The real Qwen2 BPE as a transformers fast tokenizer (about 5 s, once)."""
    from llm.tiny import qwen2_tokenizer

    return qwen2_tokenizer()


@pytest.fixture(scope="session")
def tiny_dirs(qwen2_tok, tmp_path_factory) -> dict[str, Path]:
    """family -> folder of a saved tiny random model + processor (loads like a hub checkpoint)."""
    from llm.tiny import save_tiny

    root = tmp_path_factory.mktemp("tiny-qwen")
    return {family: save_tiny(family, root / family, qwen2_tok) for family in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_family():
    """family name -> Family record with video limits small enough for 112x112 test frames."""
    from llm.tiny import tiny_family as make

    return make


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dirs, tiny_family):
    """family name -> (model, processor) loaded from the saved folder on CPU, cached for the session."""
    from llm.hf_backend import load_model

    cache: dict[str, tuple] = {}

    def load(name: str):
        if name not in cache:
            cache[name] = load_model(tiny_dirs[name], tiny_family(name), device="cpu")
        return cache[name]

    return load


@pytest.fixture(scope="session")
def clip_media_set():
    """Three synthetic ClipMedia of different lengths: audio 1-2 s, 3-5 frames of 112x112, a transcript."""
    from llm.requests import ClipMedia

    rng = np.random.default_rng(0)
    return [ClipMedia(name=f"c{i}", audio=(0.1 * rng.standard_normal(16_000 * (1 + i % 2))).astype(np.float32),
                      frames=rng.integers(0, 255, (3 + i, 112, 112, 3), dtype=np.uint8), transcript=f"你好{i}")
            for i in range(3)]


def _write_clip(path: Path, seconds: float, video: bool, tone_hz: float, seed: int) -> Path:
    import av

    rng = np.random.default_rng(seed)
    rate = 16_000
    with av.open(str(path), "w") as out:
        if video:
            vstream = out.add_stream("libx264", rate=10)
            vstream.width = vstream.height = 112
            vstream.pix_fmt = "yuv420p"
        astream = out.add_stream("aac" if video else "pcm_s16le", rate=rate, layout="mono")
        if video:
            for i in range(int(seconds * 10)):
                img = np.full((112, 112, 3), (i * 20 + seed * 40) % 255, np.uint8)
                img[20:90, 30:80] = rng.integers(0, 255, 3)
                for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        t = np.arange(int(seconds * rate)) / rate
        wave = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        fmt = "fltp" if video else "s16"
        samples = wave if video else (wave * 32767).astype(np.int16)
        step = 1024
        for begin in range(0, len(samples), step):
            chunk = samples[begin:begin + step][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout="mono")
            frame.sample_rate = rate
            for packet in astream.encode(frame):
                out.mux(packet)
        for packet in astream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def write_clip():
    """write_clip(path, seconds=1.0, video=True, tone_hz=220.0, seed=0) -> path of an mp4 (H.264 + AAC) or wav."""

    def write(path: Path, seconds: float = 1.0, video: bool = True, tone_hz: float = 220.0, seed: int = 0) -> Path:
        return _write_clip(Path(path), seconds, video, tone_hz, seed)

    return write
