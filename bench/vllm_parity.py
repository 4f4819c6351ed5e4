"""HF-vs-vLLM parity on tiny checkpoints that vLLM can run: what tests/test_vllm_*.py assert and what
bench/gpu_check.py prints, from one place.

Usage:
    folder = tiny_checkpoint("qwen2_audio", root, tokenizer)       # head size 64, the real 30 s audio window
    requests, plan = parity_requests("qwen2_audio", folder, n=4)
    expected = hf_scores(folder, "qwen2_audio", requests, plan)    # Scores(probs (n, 6), mass (n,))
    with engine_env("cpu"):
        scorer = VLLMScorer(str(folder), tiny_family("qwen2_audio"), plan, engine=engine_settings("cpu"))
        got = Scores(*scorer.scores(requests))
    agreement(expected, got).within(FP32_TOLERANCE)

On CPU both sides run in float32 and agree to about 1e-6 (see FP32_TOLERANCE); on a GPU both run in bf16. The CPU
engine runs in this process (`engine_env`: no engine-core or worker processes to spawn, which costs about a minute
per engine on 2 cores); teacher-label's engines run as users run them, in their own processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm.requests import ClipMedia, Request, RequestSettings, build_request
from llm.scoring import LabelScoring

# Largest label-probability difference allowed between the two backends in float32. Measured on CPU: 4e-7 (text),
# the same order for Qwen2-Audio and LoRA adapters: both sides compute the same float32 sums in different orders
# (fused CPU attention kernel, batched prefill), so errors sit near float32 epsilon times the logit scale. A wrong
# token, position, mask or adapter moves the probabilities by 1e-2 or more, 100x above this bound.
FP32_TOLERANCE = 1e-4
# bf16 on both sides (a GPU): bf16 logits carry 3 significant digits, and a tiny model's sharp logits (output
# weights drawn with std 0.5) amplify them
BF16_TOLERANCE = 0.05
# relative label-mass difference allowed, per dtype
MASS_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}
# the view each tiny family is checked on
VIEWS = {"qwen2_5_text": "text", "qwen2_audio": "audio", "qwen2_5_vl": "frames", "qwen2_5_omni": "audio+video"}
# prompt language of the checks (Chinese, as the corpus)
LANGUAGE = "zh"
# demo-style subtitles, one per label
LINES = ("周末记得去交水电费。", "你到底有完没完，烦死了！", "太好了我们成功了，真开心！",
         "他走了以后，我每天都很难过。", "这么晚了他还没回来，我有点担心。", "什么？你说他已经结婚了？")


@dataclass
class Scores:
    """One backend's scores of the same requests."""

    # (n, 6) label probabilities
    probs: np.ndarray
    # (n,) label mass
    mass: np.ndarray


@dataclass
class Agreement:
    """How two backends' scores differ."""

    # largest absolute label-probability difference
    max_dp: float
    # largest relative label-mass difference
    mass_rel: float
    # share of clips with the same top label
    same_argmax: float

    def within(self, tolerance: float, mass_tolerance: float = MASS_TOLERANCE["float32"]) -> bool:
        return self.max_dp <= tolerance and (np.isnan(self.mass_rel) or self.mass_rel <= mass_tolerance)

    def __str__(self) -> str:
        return (f"max |dp| {self.max_dp:.2e}, mass rel err {self.mass_rel:.2e}, "
                f"same argmax {self.same_argmax:.0%}")


def agreement(expected: Scores, got: Scores) -> Agreement:
    """The Agreement of two backends' scores of the same requests."""
    if expected.probs.shape != got.probs.shape:
        raise ValueError(f"score shapes differ: {expected.probs.shape} and {got.probs.shape}")
    return Agreement(max_dp=float(np.abs(expected.probs - got.probs).max()),
                     mass_rel=float(np.nanmax(np.abs(expected.mass - got.mass) / np.maximum(expected.mass, 1e-12))),
                     same_argmax=float((expected.probs.argmax(1) == got.probs.argmax(1)).mean()))


def tiny_checkpoint(family: str, root: Path, tokenizer, seed: int = 0) -> Path:
    """A tiny random `family` checkpoint that vLLM's CPU build runs (llm.tiny.VLLM_SIZE), saved under root/family."""
    from llm.tiny import VLLM_SIZE, save_tiny

    return save_tiny(family, Path(root) / family, tokenizer, seed=seed, size=VLLM_SIZE)


def parity_media(n: int, seed: int = 0) -> list[ClipMedia]:
    """`n` synthetic clips: 1-3 s of noisy audio, four 112x112 frames, a demo subtitle each."""
    rng = np.random.default_rng(seed)
    return [ClipMedia(name=f"c{i}", audio=(0.1 * rng.standard_normal(16_000 * (1 + i % 3))).astype(np.float32),
                      frames=rng.integers(0, 255, (4, 112, 112, 3), dtype=np.uint8), transcript=LINES[i % len(LINES)],
                      duration=2.0) for i in range(n)]


def parity_requests(family: str, folder: Path, n: int, language: str = LANGUAGE
                    ) -> tuple[list[Request], LabelScoring]:
    """(n requests of the family's check view, the label scoring plan) on the checkpoint's own processor."""
    from llm.hf_backend import load_processor, tokenizer_of
    from llm.prompts import scoring_plan
    from llm.tiny import tiny_family

    processor = load_processor(folder)
    settings = RequestSettings(view=VIEWS[family], language=language)
    requests = [build_request(tiny_family(family), processor, media, settings) for media in parity_media(n)]
    return requests, scoring_plan(language, tokenizer_of(processor))


def hf_scores(folder: Path, family: str, requests: Sequence[Request], plan: LabelScoring,
              adapter: Path | None = None, device: str = "cpu") -> Scores:
    """The transformers backend's scores of `requests` on `folder` (with `adapter`), float32 on CPU, bf16 on CUDA."""
    from llm.hf_backend import HFScorer, load_model, release_memory
    from llm.tiny import tiny_family

    model, processor = load_model(folder, tiny_family(family), adapter=adapter, device=device)
    scores = Scores(*HFScorer(model, processor, tiny_family(family), plan, batch_size=4).scores(list(requests)))
    del model
    release_memory()
    return scores


def engine_settings(device: str) -> dict:
    """vLLM engine arguments of the checks: float32 and eager in this process on CPU; bf16 on a GPU."""
    common = {"max_model_len": 2048, "enforce_eager": True, "seed": 0}
    if device == "cpu":
        return {**common, "dtype": "float32", "distributed_executor_backend": "uni"}
    return {**common, "dtype": "bfloat16", "gpu_memory_utilization": 0.3}


@contextmanager
def engine_env(device: str, in_process: bool = True) -> Iterator[None]:
    """Environment of the checks' engines while inside: on CPU a 1 GiB KV cache, no thread pinning (the cores are
    shared), and with `in_process` the engine core in this process. vLLM caches its environment once an engine
    starts; the cache is dropped on entry and exit so each engine reads its own."""
    settings = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"} if device == "cpu" else {}
    settings["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    before = {k: os.environ.get(k) for k in settings}
    from vllm import envs

    envs.disable_envs_cache()
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        envs.disable_envs_cache()


def train_adapter(model_dir: Path, family: str, refs: list, out: Path, r: int, seed: int = 0,
                  merge: bool = False) -> tuple[Path, Path | None]:
    """teacher-train (two short epochs, CPU) of `model_dir` on `refs` (ClipRefs): (adapter folder, merged export
    folder or None)."""
    from teacher.finetune import LoraSettings, TeacherTrainConfig, train_teacher
    from teacher.llm_options import LLMAgentOptions

    teacher = LLMAgentOptions(model=str(model_dir), family=family, view=VIEWS[family], language=LANGUAGE,
                              device="cpu", batch_size=4, decode_workers=0)
    cfg = TeacherTrainConfig(data=out, out=out, teacher=teacher, lora=LoraSettings(r=r, alpha=2 * r, dropout=0.0),
                             epochs=2, learning_rate=2e-2, batch_size=4, grad_accum=1, held_out=0.0, seed=seed,
                             merge=merge, progress=False)
    report = train_teacher(cfg, refs)
    return report.adapter_dir, report.merged_dir


def text_adapters(folder: Path, root: Path) -> list[Path]:
    """Two teacher-train adapters of a text checkpoint, rank 4 and rank 12, tuned towards different labels."""
    from clips.dataset import ClipRef
    from clips.labels import LABELS

    adapters = []
    for k, (r, shift) in enumerate([(4, 1), (12, 3)]):
        refs = [ClipRef(name=f"t{i}", path=None, label=LABELS[(i + shift) % 6], transcript=LINES[i % 6])
                for i in range(12)]
        adapters.append(train_adapter(folder, "qwen2_5_text", refs, Path(root) / f"teacher-{k}", r=r, seed=k)[0])
    return adapters


def audio_teacher(folder: Path, root: Path) -> tuple[Path, Path]:
    """(adapter, merged export) of a Qwen2-Audio checkpoint tuned by teacher-train on 12 synthetic wav clips."""
    import wave

    from clips.dataset import ClipRef
    from clips.labels import LABELS

    refs = []
    Path(root).mkdir(parents=True, exist_ok=True)
    for i, media in enumerate(parity_media(12, seed=1)):
        path = Path(root) / f"a{i}.wav"
        with wave.open(str(path), "wb") as out:  # 16-bit mono PCM at 16 kHz
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16_000)
            out.writeframes((np.clip(media.audio, -1, 1) * 32767).astype("<i2").tobytes())
        refs.append(ClipRef(name=path.stem, path=path, label=LABELS[i % 6], transcript=None))
    adapter, merged = train_adapter(folder, "qwen2_audio", refs, Path(root) / "teacher", r=8, merge=True)
    return adapter, merged


@dataclass
class Check:
    """One named parity check's outcome."""

    name: str
    agreement: Agreement
    tolerance: float
    mass_tolerance: float

    @property
    def ok(self) -> bool:
        return self.agreement.within(self.tolerance, self.mass_tolerance)


def vllm_checks(root: Path, tokenizer, device: str) -> list[Check]:
    """Every HF-vs-vLLM parity check, as the vllm tests run them: the text base model, each of two LoRA adapters
    served together by one engine, and a Qwen2-Audio merged export against its adapter under transformers.
    float32 on CPU, bf16 on a GPU (the transformers side then runs on the same GPU)."""
    from llm.vllm_backend import VLLMScorer

    tolerance, mass = (FP32_TOLERANCE, MASS_TOLERANCE["float32"]) if device == "cpu" else \
        (BF16_TOLERANCE, MASS_TOLERANCE["bfloat16"])
    checks = []
    text = tiny_checkpoint("qwen2_5_text", root, tokenizer)
    adapters = text_adapters(text, Path(root) / "text-teachers")
    requests, plan = parity_requests("qwen2_5_text", text, n=8)
    with engine_env(device):
        scorer = VLLMScorer(str(text), family_of("qwen2_5_text"), plan, adapters=adapters,
                            engine=engine_settings(device))
        try:
            for k, adapter in [(None, None), *enumerate(adapters)]:
                got = Scores(*scorer.scores(requests, adapter_ids=[k] * len(requests)))
                expected = hf_scores(text, "qwen2_5_text", requests, plan, adapter, device)
                label = "base" if k is None else f"adapter {k} (one engine, 2 LoRAs)"
                checks.append(Check(f"text {label}", agreement(expected, got), tolerance, mass))
        finally:
            scorer.close()
    audio = tiny_checkpoint("qwen2_audio", root, tokenizer)
    adapter, merged = audio_teacher(audio, Path(root) / "audio-teacher")
    requests, plan = parity_requests("qwen2_audio", merged, n=6)
    with engine_env(device):
        scorer = VLLMScorer(str(merged), family_of("qwen2_audio"), plan, engine=engine_settings(device))
        try:
            got = Scores(*scorer.scores(requests))
        finally:
            scorer.close()
    expected = hf_scores(audio, "qwen2_audio", requests, plan, adapter, device)
    checks.append(Check("qwen2_audio merged export vs adapter", agreement(expected, got), tolerance, mass))
    return checks


def family_of(name: str):
    """The family record of the checks (video limits small enough for 112x112 frames)."""
    from llm.tiny import tiny_family

    return tiny_family(name)


# the checks vllm_checks runs, by name (what a machine without vllm reports as skipped)
CHECK_NAMES = ("text base", "text adapter 0 (one engine, 2 LoRAs)", "text adapter 1 (one engine, 2 LoRAs)",
               "qwen2_audio merged export vs adapter")
