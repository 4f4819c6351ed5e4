"""Clips per second of LLM-teacher label scoring, per backend.

Usage:
    python -m bench.teacher                                  # tiny random models on CPU (plumbing cost only)
    python -m bench.teacher --model Qwen/Qwen2-Audio-7B-Instruct --family qwen2_audio --clips 256 --batch-size 32
On a GPU with vllm importable, the same run adds the vLLM backend beside transformers. Rows: transformers
first-token scoring (one forward per batch), sequence scoring (6 rows per clip), a generate loop (generate one
token per clip with output scores: how a free-text labeller runs), and vLLM first-token scoring.
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
from llm.prompts import label_words
from llm.requests import ClipMedia, RequestSettings, build_request
from llm.scoring import first_token_probs, plan_scoring
from llm.tiny import TINY_MAX_PIXELS, TINY_MIN_PIXELS, qwen2_tokenizer, save_tiny

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
        inputs = encode_requests(scorer.processor, scorer.family, [request]).to(scorer.device)
        with torch.no_grad():
            result = scorer.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                           return_dict_in_generate=True)
        out.append(first_token_probs(result.scores[0].float().cpu().numpy(), scorer.plan))
    return np.concatenate(out)


def bench_family(model: str, family_name: str, n: int, batch_size: int, tiny: bool, device: str) -> list[tuple]:
    """(family, backend, clips/s) rows for one model."""
    family = get_family(family_name)
    if tiny and family.video is not None:
        family = dataclasses.replace(family, video=dataclasses.replace(family.video, min_pixels=TINY_MIN_PIXELS,
                                                                       max_pixels=TINY_MAX_PIXELS))
    net, processor = load_model(model, family, device=device)
    words = label_words("en")
    media = synthetic_media(n, seconds=2.0 if tiny else 6.0, frames=4 if tiny else 8, side=112 if tiny else 336)
    settings = RequestSettings(view=VIEWS[family_name])
    start = time.perf_counter()
    requests = [build_request(family, processor, m, settings) for m in media]
    rows = [(family_name, "request building", n / (time.perf_counter() - start))]
    first = HFScorer(net, processor, family, plan_scoring(words, tokenizer_of(processor), "first_token"), batch_size)
    sequence = HFScorer(net, processor, family, plan_scoring(words, tokenizer_of(processor), "sequence"),
                        max(1, batch_size // 6))
    rows.append((family_name, "hf first-token", clips_per_second(lambda: first.score(requests), n)))
    rows.append((family_name, "hf sequence", clips_per_second(lambda: sequence.score(requests), n)))
    rows.append((family_name, "hf generate loop", clips_per_second(lambda: generate_loop(first, requests), n)))
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        from llm.vllm_backend import VLLMScorer

        del net, first, sequence
        torch.cuda.empty_cache()
        engine = VLLMScorer(model, family, plan_scoring(words, tokenizer_of(processor)),
                            engine={"gpu_memory_utilization": 0.8})
        rows.append((family_name, "vllm first-token", clips_per_second(lambda: engine.score(requests), n)))
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
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    if args.model:
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
        print(f"{family:14s} {backend:18s} {rate:9.1f} clips/s")


if __name__ == "__main__":
    main()
