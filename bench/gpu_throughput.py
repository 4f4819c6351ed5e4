"""Text-teacher scoring throughput of a real-size Qwen2.5 on one device, and what the MER2024 pool would take.

Usage:
    python -m bench.gpu_throughput --config-dir ~/.cache/mer-semi/llm/qwen2.5-coder-1.5b-instruct --device cuda
    python -m bench.gpu_throughput --device cpu --clips 16                 # tiny random model: plumbing only
Only the checkpoint's config and tokenizer are read: the weights are drawn at random in the device's dtype (bf16
on CUDA), which costs the same arithmetic as the trained ones, so the timings hold for the real model while its
scores mean nothing. The transformers backend scores `clips` demo-style transcripts (the text agent's prompt,
first-token scoring) under K LoRA adapters held by one model, as teacher-label's fold scoring does, at each batch
size; the clips/s printed count (clip, adapter) scores. The 115,595-clip pool then takes pool x K scores, plus the
5,030 labelled clips once. It also checks, on the device, that a batch of requests for mixed adapters scores each
request as it scores alone, and that the adapters really differ (another adapter per request moves the scores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm.families import get_family
from llm.hf_backend import HFScorer, adapter_name, load_processor, tokenizer_of
from llm.prompts import scoring_plan
from llm.requests import ClipMedia, RequestSettings, build_request

POOL, LABELLED = 115_595, 5_030
LINES = ("周末记得去交水电费。", "你到底有完没完，烦死了！", "太好了我们成功了，真开心！",
         "他走了以后，我每天都很难过。", "这么晚了他还没回来，我有点担心。", "什么？你说他已经结婚了？")


def random_model(config_dir: Path, device: torch.device, folds: int, seed: int = 0):
    """A causal LM of config_dir's architecture with random weights, and `folds` random LoRA adapters on it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = AutoConfig.from_pretrained(str(config_dir))
    with torch.device(device):
        net = AutoModelForCausalLM.from_config(config, dtype=dtype)
    family = get_family("qwen2_5_text")
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=family.lora_targets, task_type="CAUSAL_LM")
    net = get_peft_model(net, lora, adapter_name=adapter_name(0))
    for k in range(1, folds):
        net.add_adapter(adapter_name(k), lora)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", type=Path, help="folder with config.json and the tokenizer (default: tiny)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--batch-sizes", default="32,128")
    args = parser.parse_args()
    device = torch.device(args.device)
    family = get_family("qwen2_5_text")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.config_dir
        if folder is None:
            from llm.tiny import qwen2_tokenizer, save_tiny

            folder = save_tiny("qwen2_5_text", Path(tmp) / "tiny", qwen2_tokenizer())
        processor = load_processor(folder)
        net = random_model(folder, device, args.folds)
    plan = scoring_plan("zh", tokenizer_of(processor))
    settings = RequestSettings(view="text", language="zh", transcript=True)
    requests = [build_request(family, processor, ClipMedia(name=f"c{i}", audio=None, frames=None,
                                                           transcript=LINES[i % len(LINES)] + f"（{i}）"), settings)
                for i in range(args.clips)]
    params = sum(p.numel() for p in net.parameters())
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"{params / 1e9:.2f} B parameters ({folder.name}, random weights); {args.folds} adapters; "
          f"{args.clips} transcripts of ~{np.mean([len(r.prompt) for r in requests]):.0f} prompt characters")

    # a mixed batch scores each request as it scores alone, and another adapter per request moves the scores
    scorer = HFScorer(net, processor, family, plan, batch_size=16)
    mixed = scorer.scores(requests[:16], adapter_ids=[i % args.folds for i in range(16)])[0]
    alone = np.stack([scorer.scores([r], adapter_ids=[i % args.folds])[0][0] for i, r in enumerate(requests[:16])])
    shifted = scorer.scores(requests[:16], adapter_ids=[(i + 1) % args.folds for i in range(16)])[0]
    print(f"adapter switching: max |p(mixed batch) - p(one request at a time)| = {np.abs(mixed - alone).max():.2e}; "
          f"another adapter per request moves p by up to {np.abs(mixed - shifted).max():.2e}")
    if args.folds > 1 and np.abs(mixed - shifted).max() <= 10 * np.abs(mixed - alone).max():
        raise SystemExit("adapter switching: another adapter gives the same scores; the adapters are not applied")

    print(f"{'batch':>6}{'scores':>8}{'seconds':>9}{'scores/s':>10}{'pool x K + labelled, hours':>28}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        scorer.batch_size = batch
        ids = [k for _ in range(len(requests) // args.folds) for k in range(args.folds)]
        expanded = requests[:len(ids)]
        scorer.scores(expanded[:batch], adapter_ids=ids[:batch])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scorer.scores(expanded, adapter_ids=ids)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rate = len(expanded) / seconds
        hours = (POOL * args.folds + LABELLED) / rate / 3600
        print(f"{batch:>6}{len(expanded):>8}{seconds:>9.2f}{rate:>10.1f}{hours:>28.2f}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
