"""Clips per second of LLM-teacher label scoring, per backend.

Usage:
    python -m bench.teacher                                  # tiny random models on CPU (plumbing cost only)
    python -m bench.teacher --model Qwen/Qwen2-Audio-7B-Instruct --family qwen2_audio --clips 256 --batch-size 32
    python -m bench.teacher --e2e --clips 16                 # 720p 5 s mp4 clips: decoding included, end to end
On a GPU with vllm importable, the same run adds the vLLM backend beside transformers. Rows: transformers
first-token scoring (one forward per batch), sequence scoring (6 rows per clip), a generate loop (generate one
token per clip with output scores: how a free-text labeller runs), and vLLM first-token scoring.
`--e2e` writes real-size clips (1280x720, 25 fps, 5 s, H.264 + AAC) and times an LLM agent over them from the
files: decoding alone (in the scoring process, then in worker processes), agent scoring with decoding in the
scoring process, with worker processes decoding ahead, and from a filled decoded-media cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llm.families import get_family
from llm.hf_backend import HFScorer, encode_requests, load_model, tokenizer_of
from llm.prompts import scoring_plan
from llm.requests import ClipMedia, RequestSettings, build_request
from llm.scoring import first_token_probs
from llm.tiny import TINY_MAX_PIXELS, TINY_MIN_PIXELS, qwen2_tokenizer, save_tiny, tiny_family

VIEWS = {"qwen2_audio": "audio", "qwen2_5_vl": "frames", "qwen2_5_omni": "audio+video", "qwen2_5_text": "text"}


def synthetic_media(n: int, seconds: float, frames: int, side: int, seed: int = 0) -> list[ClipMedia]:
    """n clips of noise audio, random frames and a short transcript."""
    rng = np.random.default_rng(seed)
    return [ClipMedia(name=f"c{i}", audio=(0.1 * rng.standard_normal(int(16_000 * seconds))).astype(np.float32),
                      frames=rng.integers(0, 255, (frames, side, side, 3), dtype=np.uint8), transcript="你怎么才来")
            for i in range(n)]


def clips_per_second(run: Callable[[], object], n: int, repeats: int = 2) -> float:
    """Best of `repeats` timed runs after one warm-up."""
    run()
    best = min(_timed(run) for _ in range(repeats))
    return n / best


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def generate_loop(scorer: HFScorer, requests) -> np.ndarray:
    """One `generate` call per clip (1 token, scores kept): the free-text labeller's cost, read as probabilities."""
    out = []
    for request in requests:
        inputs = encode_requests(scorer.processor, scorer.family, [request], [scorer.plan.prefix]).to(scorer.device)
        with torch.no_grad():
            result = scorer.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                           return_dict_in_generate=True)
        out.append(first_token_probs(result.scores[0].float().cpu().numpy(), scorer.plan))
    return np.concatenate(out)


def bench_family(model: str, family_name: str, n: int, batch_size: int, tiny: bool, device: str) -> list[tuple]:
    """(family, backend, clips/s) rows for one model."""
    family = tiny_family(family_name) if tiny else get_family(family_name)
    net, processor = load_model(model, family, device=device)
    media = synthetic_media(n, seconds=2.0 if tiny else 6.0, frames=4 if tiny else 8, side=112 if tiny else 336)
    settings = RequestSettings(view=VIEWS[family_name])
    start = time.perf_counter()
    requests = [build_request(family, processor, m, settings) for m in media]
    rows = [(family_name, "request building", n / (time.perf_counter() - start))]
    first = HFScorer(net, processor, family, scoring_plan("en", tokenizer_of(processor), "first_token"), batch_size)
    sequence = HFScorer(net, processor, family, scoring_plan("en", tokenizer_of(processor), "sequence"),
                        max(1, batch_size // 6))
    rows.append((family_name, "hf first-token", clips_per_second(lambda: first.score(requests), n)))
    rows.append((family_name, "hf sequence", clips_per_second(lambda: sequence.score(requests), n)))
    rows.append((family_name, "hf generate loop", clips_per_second(lambda: generate_loop(first, requests), n)))
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        from llm.vllm_backend import VLLMScorer

        del net, first, sequence
        torch.cuda.empty_cache()
        engine = VLLMScorer(model, family, scoring_plan("en", tokenizer_of(processor)),
                            engine={"gpu_memory_utilization": 0.8})
        rows.append((family_name, "vllm first-token", clips_per_second(lambda: engine.score(requests), n)))
    return rows


def write_clip(path: Path, seconds: float = 5.0, width: int = 1280, height: int = 720, fps: int = 25,
               seed: int = 0) -> Path:
    """An mp4 (H.264 + AAC, 16 kHz mono) of a moving face-sized block over a gradient, with a tone."""
    import av

    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=16_000, layout="mono")
        for i in range(int(seconds * fps)):
            frame = base.copy()
            x = (40 * i + seed * 97) % (width - 200)
            frame[200:440, x:x + 200] = rng.integers(0, 255, 3, dtype=np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(video.encode())
        wave = (0.2 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * 16_000)) / 16_000)).astype(np.float32)
        for begin in range(0, len(wave), 1024):
            chunk = av.AudioFrame.from_ndarray(wave[None, begin:begin + 1024], format="fltp", layout="mono")
            chunk.sample_rate = 16_000
            out.mux(audio.encode(chunk))
        out.mux(audio.encode())
    return path


def bench_end_to_end(model: str, family: str, view: str, n: int, batch_size: int, workers: int,
                     root: Path) -> list[tuple]:
    """(family, stage, clips/s) rows for an LLM agent over n real-size clips read from files."""
    from clips.dataset import ClipRef
    from llm.decoded import DecodedCache
    from teacher.llm_agent import LLMAgent
    from teacher.llm_options import LLMAgentOptions

    refs = {f"c{i}": ClipRef(name=f"c{i}", path=write_clip(root / f"c{i}.mp4", seed=i), label=None,
                             transcript="你怎么才来") for i in range(n)}
    names = list(refs)
    rows = []

    def timed_rate(run: Callable[[], object]) -> float:
        return n / _timed(run)

    options = LLMAgentOptions(model=model, family=family, view=view, device="cpu", batch_size=batch_size,
                              decode_workers=0, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    settings = options.decode_settings()
    for label, count in (("decode, in process", 0), (f"decode, {workers} workers", workers)):
        cache = DecodedCache(None, settings, workers=count)
        rows.append((family, label, timed_rate(lambda cache=cache: list(cache.iter_media(refs.values())))))
    for label, count, folder in (("agent, decode in process", 0, None),
                                 (f"agent, {workers} decode workers", workers, None),
                                 (f"agent, {workers} workers fill cache", workers, root / "decoded"),
                                 ("agent, from the cache", workers, root / "decoded")):
        agent = LLMAgent("bench", dataclasses.replace(options, decode_workers=count,
                                                      media_cache=str(folder) if folder else None), refs)
        agent.score(names[:2])  # warm-up (also warms the cache for 2 clips, a 2/n effect)
        rows.append((family, label, timed_rate(lambda agent=agent: agent.score(names))))
        agent.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder or hub id; tiny random models when omitted")
    parser.add_argument("--family", default="qwen2_audio", help="family of --model")
    parser.add_argument("--families", default="qwen2_audio,qwen2_5_vl,qwen2_5_text",
                        help="tiny families to time when --model is omitted")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--e2e", action="store_true", help="end to end on 720p 5 s clips, decoding included")
    parser.add_argument("--view", default="audio", help="view of the --e2e agent")
    parser.add_argument("--workers", type=int, default=2, help="decode worker processes of the --e2e agent")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    if args.e2e:
        with tempfile.TemporaryDirectory() as root:
            model = args.model or str(save_tiny(args.family, Path(root) / args.family, qwen2_tokenizer()))
            rows += bench_end_to_end(model, args.family, args.view, args.clips, args.batch_size, args.workers,
                                     Path(root))
    elif args.model:
        rows += bench_family(args.model, args.family, args.clips, args.batch_size, tiny=False, device=args.device)
    else:
        tokenizer = qwen2_tokenizer()
        with tempfile.TemporaryDirectory() as root:
            for name in args.families.split(","):
                folder = save_tiny(name, Path(root) / name, tokenizer)
                rows += bench_family(str(folder), name, args.clips, args.batch_size, tiny=True, device=args.device)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(f"\nlabel scoring, {args.clips} clips, batch {args.batch_size}, {device}, torch {torch.__version__}")
    for family, backend, rate in rows:
        print(f"{family:14s} {backend:34s} {rate:9.2f} clips/s")


if __name__ == "__main__":
    main()
