"""K fold adapters on one model against K separate loads: the cost of scoring an agent's fold models.

Usage:
    python -m bench.fold_adapters                                   # tiny random text model (plumbing cost)
    python -m bench.fold_adapters --model ~/.cache/mer-semi/llm/qwen2.5-coder-0.5b-instruct --clips 64
Builds K LoRA adapters (random, r 16, on the family's targets), then scores `clips` pool transcripts under every
adapter and `clips` labelled ones under one adapter each, as teacher-label does: (a) one model holding the K adapters
and switching between them (llm.hf_backend.load_model(adapters=...)); (b) the model loaded K times, once with each
adapter. Prints load and scoring seconds of each, side by side, with the ratio, and checks that both give the same
probabilities.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm.families import get_family
from llm.hf_backend import HFScorer, load_model, release_memory, tokenizer_of
from llm.prompts import scoring_plan
from llm.requests import ClipMedia, RequestSettings, build_request

LINES = ["你怎么才来", "我真是太开心了", "这件事让我很担心", "你再说一遍试试", "天哪，真的吗", "算了，就这样吧"]


def make_adapters(model: str, family, k: int, out: Path, seed: int = 0) -> list[str]:
    """K random LoRA adapters of `model` (lora_B drawn, not zero, so each changes the scores) saved under out."""
    from peft import LoraConfig, get_peft_model

    paths = []
    for i in range(k):
        torch.manual_seed(seed + i)
        base, _ = load_model(model, family, device="cpu")
        net = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=family.lora_targets,
                                              task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, param in net.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.02)
        paths.append(str(out / f"fold_{i}"))
        net.save_pretrained(paths[-1])
        del net, base
        release_memory()
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="text checkpoint folder (default: a tiny random Qwen2.5 text model)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=32, help="pool clips, and as many labelled clips")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    family = get_family("qwen2_5_text")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from llm.tiny import qwen2_tokenizer, save_tiny

            model = str(save_tiny("qwen2_5_text", Path(tmp) / "tiny", qwen2_tokenizer()))
        adapters = make_adapters(model, family, args.folds, Path(tmp))

        def requests(processor):
            settings = RequestSettings(view="text", language="zh", transcript=True)
            media = [ClipMedia(name=f"c{i}", audio=None, frames=None, transcript=LINES[i % len(LINES)] + str(i))
                     for i in range(2 * args.clips)]
            return [build_request(family, processor, m, settings) for m in media]

        # each pool clip under every adapter, each labelled clip under its own fold's
        pool_ids = [k for _ in range(args.clips) for k in range(args.folds)]
        labelled_ids = [i % args.folds for i in range(args.clips)]

        start = time.perf_counter()
        net, processor = load_model(model, family, device="cpu", adapters=adapters)
        one_load = time.perf_counter() - start
        plan = scoring_plan("zh", tokenizer_of(processor))
        reqs = requests(processor)
        expanded = [reqs[i] for i in range(args.clips) for _ in range(args.folds)] + reqs[args.clips:]
        ids = pool_ids + labelled_ids
        scorer = HFScorer(net, processor, family, plan, args.batch_size)
        start = time.perf_counter()
        together = scorer.scores(expanded, adapter_ids=ids)[0]
        one_score = time.perf_counter() - start
        scorer.close()
        del net
        release_memory()

        separate = np.zeros_like(together)
        k_load = k_score = 0.0
        for k, adapter in enumerate(adapters):
            start = time.perf_counter()
            net, processor = load_model(model, family, adapter=adapter, device="cpu")
            k_load += time.perf_counter() - start
            rows = [i for i, a in enumerate(ids) if a == k]
            start = time.perf_counter()
            separate[rows] = HFScorer(net, processor, family, plan, args.batch_size).scores(
                [expanded[i] for i in rows])[0]
            k_score += time.perf_counter() - start
            del net
            release_memory()
    n = len(expanded)
    print(f"model {model}; {args.folds} adapters; {args.clips} pool clips x {args.folds} + {args.clips} labelled "
          f"= {n} scores; {torch.get_num_threads()} threads")
    print(f"{'':28}{'load s':>10}{'score s':>10}{'total s':>10}")
    print(f"{'one model, K adapters':28}{one_load:>10.2f}{one_score:>10.2f}{one_load + one_score:>10.2f}")
    print(f"{'K loads, one adapter each':28}{k_load:>10.2f}{k_score:>10.2f}{k_load + k_score:>10.2f}")
    print(f"ratio (K loads / one model): load {k_load / one_load:.2f}x, total "
          f"{(k_load + k_score) / (one_load + one_score):.2f}x; max |p difference| "
          f"{float(np.abs(together - separate).max()):.2e}")


if __name__ == "__main__":
    main()
