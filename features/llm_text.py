"""LLM hidden states as text features: a causal LM reads the transcript inside a short emotion prompt, and one
layer's hidden states are pooled (mean over the transcript's tokens and/or the prompt's last token).

Usage:
    extractor = LLMTextExtractor()                    # the registry Qwen2.5-Coder-1.5B (python cli.py fetch-llm)
    extractor = LLMTextExtractor(model="/models/Qwen2.5-7B-Instruct", depth=0.67, pool="both")
    extractor.prepare(["我今天真的非常高兴", "你怎么才来"])  # one padded forward pass per batch_size lines
    result = extractor.extract(clip, transcript="我今天真的非常高兴")   # (dim,), or missing without a transcript
In a features config: `extractors: [egemaps, whisper, face, e5, llm_text]`, options under
`extractor_options: {llm_text: {model: ..., batch_size: 16}}`. The runner hands each chunk of pending clips to
`prepare` first, so transcripts are scored in padded batches; `extract` then reads the batch's result.

What is computed, and why:
- The line is wrapped in a fixed continuation prompt, `台词："<line>"\n说话人的情绪用一个词概括是：` (PromptEOL,
  Jiang et al. 2023: the state that predicts the one-word summary is a sentence embedding that a linear model
  reads well); the prompt names the task (emotion) and none of the labels, and is not tuned on any corpus.
- `pool: both` stores the mean over the transcript's own tokens (what the line says; the fixed prompt tokens are
  left out since a causal model gives every clip the same states there) beside the prompt's last token (what the
  model would answer), side by side: dim = 2 x hidden size.
- `depth: 0.67` pools the layer two thirds of the way up: the last layers of a causal LM specialise in predicting
  the next token, and probing studies find sentence-level semantics, emotion and sentiment among them, strongest
  in the middle-to-upper layers (Skean et al. 2025, "Layer by layer"; Jin et al. 2024, "Exploring concept depth").
  Only the layers up to the pooled one are run: the layers above it would be computed and thrown away.
- Rows are left-padded with an attention mask and position ids counted from each row's first real token, so a
  line's vector does not depend on what else is in its batch (tests/test_llm_text.py checks it).
The model loads once, on the first batch, in bf16 on CUDA and on CPUs with native bf16 matrix products (AVX512-BF16
or AMX: the registry 1.5B then holds 2.8 GB at its peak instead of 9.2 GB in float32, and runs 1.7x faster on 2
cores), else in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clips.io import cache_root
from clips.media import DecodedClip
from features.base import FeatureResult, finite_vector, missing

# the folder `python cli.py fetch-llm --size 1.5b` converts the registry model into ($MER_SEMI_CACHE/llm/<name>)
REGISTRY_FOLDER = "qwen2.5-coder-1.5b-instruct"
# (text before the line, text after it) per language: a continuation prompt that asks for a one-word emotion
PROMPTS: dict[str, tuple[str, str]] = {
    "zh": ("台词：\u201c", "\u201d\n说话人的情绪用一个词概括是："),
    "en": ('Subtitle: "', '"\nIn one word, the emotion of the speaker is:'),
}
POOLS = ("both", "mean", "last")


def default_model() -> str:
    """The converted registry Qwen2.5-Coder-1.5B-Instruct folder under $MER_SEMI_CACHE/llm."""
    return str(cache_root() / "llm" / REGISTRY_FOLDER)


@functools.cache
def _config(model: str) -> Any:
    """The model's config, read once per process; raises ValueError naming the fix when the folder is missing."""
    from transformers import AutoConfig

    path = Path(model).expanduser()
    if model == default_model() and not (path / "config.json").is_file():
        raise ValueError(f"llm_text: no model at {path}; run `python cli.py fetch-llm --size 1.5b` (after "
                         "pip install -e \".[qwen-cpu]\") or give the option model: <folder or hub id>")
    return AutoConfig.from_pretrained(str(path) if path.exists() else model)


def layer_of(depth: float, layers: int) -> int:
    """The 1-based decoder layer at relative `depth` of a model with `layers` layers (at least the first)."""
    return min(max(int(round(depth * layers)), 1), layers)


def pool_states(states: Any, text_mask: Any, pool: str) -> Any:
    """(B, T, H) hidden states of left-padded rows -> (B, H) or (B, 2H) pooled vectors, float32.

    `text_mask` (B, T) marks the transcript's own tokens; "mean" is the mean over them, "last" the state of the
    last position (the end of the prompt in every left-padded row), "both" the two side by side.
    """
    import torch

    states = states.float()
    weights = text_mask.unsqueeze(-1).float()                                      # (B, T, 1)
    mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)               # (B, H)
    last = states[:, -1]                                                           # (B, H)
    return {"mean": mean, "last": last, "both": torch.cat([mean, last], dim=-1)}[pool]


@dataclass
class LLMTextExtractor:
    """A causal LM's pooled hidden state of one layer over the transcript in an emotion prompt."""

    # checkpoint folder or hub id of a causal LM (None: the registry Qwen2.5-Coder-1.5B that fetch-llm converts)
    model: str | None = None
    # relative depth of the pooled layer: 1.0 is the last decoder layer, 0.5 the middle one
    depth: float = 0.67
    # "both" (mean over the transcript's tokens beside the prompt's last token), "mean" or "last"
    pool: Literal["both", "mean", "last"] = "both"
    # prompt language (the words around the line): zh or en
    language: str = "zh"
    # transcripts per forward pass (left-padded to the longest in the batch)
    batch_size: int = 16
    # longest transcript in tokens; longer lines keep their first max_tokens tokens
    max_tokens: int = 256
    # "auto" (bf16 on CUDA and on CPUs with native bf16, else float32), "float32" or "bfloat16"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # "auto" (CUDA when visible), "cpu" or "cuda"
    device: str = "auto"
    # torch intra-op threads on CPU (None: torch's default, one per core)
    threads: int | None = None
    name: str = field(default="llm_text", init=False)
    modality: str = field(default="text", init=False)
    _net: Any = field(default=None, init=False, repr=False)
    _tokenizer: Any = field(default=None, init=False, repr=False)
    _ready: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        self.model = str(self.model) if self.model else default_model()
        if not 0.0 < self.depth <= 1.0:
            problems.append(f"depth={self.depth}: use a relative depth in (0, 1]; 1.0 is the last layer")
        if self.pool not in POOLS:
            problems.append(f"pool={self.pool!r}: use one of {', '.join(POOLS)}")
        if self.language not in PROMPTS:
            problems.append(f"language={self.language!r}: use one of {', '.join(PROMPTS)}")
        for name in ("batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: use a positive number")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            problems.append(f"dtype={self.dtype!r}: use auto, float32 or bfloat16")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads={self.threads}: use a positive number or leave it unset")
        if problems:
            raise ValueError("llm_text options: " + "; ".join(problems))

    @property
    def layer(self) -> int:
        """The 1-based decoder layer pooled (from `depth` and the model's config)."""
        return layer_of(self.depth, int(_config(self.model).num_hidden_layers))

    @property
    def dim(self) -> int:
        """Hidden size, twice that for pool "both"."""
        hidden = int(_config(self.model).hidden_size)
        return 2 * hidden if self.pool == "both" else hidden

    def settings(self) -> dict:
        """Model, pooled layer, pooling, prompt and token limit (batching and device do not change the vector
        beyond float rounding)."""
        return {"model": str(self.model), "layer": self.layer, "pool": self.pool,
                "prompt": list(PROMPTS[self.language]), "max_tokens": self.max_tokens, "dtype": self.resolved_dtype()}

    def extract(self, clip: DecodedClip, transcript: str | None) -> FeatureResult:
        """(dim,) pooled hidden state of the transcript (from the last prepare() batch when it held it); missing
        ("empty_transcript") when the transcript is None or blank."""
        if transcript is None or not transcript.strip():
            return missing("text")
        line = transcript.strip()
        vector = self._ready.get(line)          # two clips of one chunk with the same line share its vector
        if vector is None:
            vector = self.embed([line])[0]
        return FeatureResult(finite_vector(vector, self.dim))

    def prepare(self, transcripts: Sequence[str | None]) -> None:
        """Embed the non-blank `transcripts` in padded batches ahead of extract() (the runner calls this with each
        chunk of pending clips); replaces what an earlier call left."""
        lines = list(dict.fromkeys(t.strip() for t in transcripts if t and t.strip()))
        self._ready = dict(zip(lines, self.embed(lines), strict=True)) if lines else {}

    def embed(self, lines: Sequence[str]) -> np.ndarray:
        """(len(lines), dim) float32 vectors of non-blank lines, batch_size lines per forward pass (lines of similar
        length batched together)."""
        return self._batched(lines, (self.dim,))

    def hidden_layers(self, lines: Sequence[str]) -> np.ndarray:
        """(len(lines), layers, dim) pooled states of every decoder layer up to the pooled one (for comparing
        layers in one pass; bench/llm_text.py)."""
        return self._batched(lines, (self.layer, self.dim), all_layers=True)

    def _batched(self, lines: Sequence[str], shape: tuple[int, ...], all_layers: bool = False) -> np.ndarray:
        """(len(lines), *shape) of _forward over batch_size lines at a time, lines of similar length together."""
        self._load()
        order = np.argsort([len(line) for line in lines], kind="stable")
        out = np.zeros((len(lines), *shape), dtype=np.float32)
        for begin in range(0, len(lines), self.batch_size):
            rows = order[begin:begin + self.batch_size]
            out[rows] = self._forward([lines[i] for i in rows], all_layers=all_layers)
        return out

    def resolved_dtype(self, device: Any = None) -> str:
        """"float32" or "bfloat16": `dtype`, or for "auto" bf16 on CUDA and on CPUs with native bf16 matmuls."""
        if self.dtype != "auto":
            return self.dtype
        import torch

        cuda = (device.type == "cuda") if device is not None else (self.device != "cpu" and torch.cuda.is_available())
        return "bfloat16" if cuda or torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"

    def _load(self) -> None:
        if self._net is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available()
                              else ("cpu" if self.device == "auto" else self.device))
        if self.threads and device.type == "cpu":
            torch.set_num_threads(self.threads)
        dtype = getattr(torch, self.resolved_dtype(device))
        source = str(Path(self.model).expanduser()) if Path(self.model).expanduser().exists() else self.model
        self._tokenizer = AutoTokenizer.from_pretrained(source)
        net = AutoModel.from_pretrained(source, dtype=dtype, use_safetensors=True)
        # the layers above the pooled one would be computed and discarded: drop them before moving to the device
        net.layers = net.layers[:self.layer]
        self._net = net.to(device).eval()

    @staticmethod
    def prompt_words(language: str) -> tuple[str, str]:
        """(text before the line, text after it) of the prompt in `language`."""
        return PROMPTS[language]

    def _ids(self, lines: Sequence[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
        """Token ids of each prompted line and the (start, stop) span of the line's own tokens."""
        before, after = PROMPTS[self.language]

        def encode(text: str) -> list[int]:
            return self._tokenizer(text, add_special_tokens=False)["input_ids"]

        head, tail = encode(before), encode(after)
        rows, spans = [], []
        for line in lines:
            body = encode(line)[:self.max_tokens]
            rows.append(head + body + tail)
            spans.append((len(head), len(head) + len(body)))
        return rows, spans

    def _forward(self, lines: Sequence[str], all_layers: bool = False) -> np.ndarray:
        """(B, dim) pooled states of the pooled layer, or (B, layers, dim) of every layer up to it."""
        import torch

        rows, spans = self._ids(lines)
        width = max(len(r) for r in rows)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        text = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row, (start, stop)) in enumerate(zip(rows, spans, strict=True)):
            offset = width - len(row)
            ids[i, offset:] = torch.tensor(row)
            mask[i, offset:] = 1
            text[i, offset + start:offset + stop] = True
        # positions count from each row's first real token, so padding does not shift a line's rotary positions
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self._net.parameters()).device
        captured: list[Any] = []
        hooks = [layer.register_forward_hook(lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple)
                                                                                   else out))
                 for layer in self._net.layers]
        try:
            with torch.inference_mode():
                self._net(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                          use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        text = text.to(device)
        if all_layers:
            pooled = [pool_states(states, text, self.pool) for states in captured]
            return torch.stack(pooled, dim=1).cpu().numpy()                        # (B, layers, dim)
        return pool_states(captured[-1], text, self.pool).cpu().numpy()             # (B, dim)
