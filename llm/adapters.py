"""Checkpoints and LoRA adapters as vLLM reads them: published key layouts, Omni adapter keys under `thinker.`.

Usage:
    check_vllm_adapter(Path("runs/a/teacher/adapter"), get_family("qwen2_5_omni"))   # raises with the fix
    vllm_adapter(Path("runs/a/teacher/adapter"), Path("runs/a/teacher/adapter-vllm"), get_family("qwen2_5_omni"))
    published_layout(Path("runs/a/teacher/merged"), "qwen2_audio")   # keys renamed in place to the hub layout

transformers 5 saves a Qwen2-Audio model with its language model's weights under `language_model.model.model.*`
(its own module tree); the published Qwen2-Audio checkpoints, and so vLLM's loader, have `language_model.model.*`.
transformers reads both; vLLM refuses the first (`There is no module or parameter named 'model' in Qwen2Model`).
`published_layout` rewrites a saved folder into the published layout, which every reader loads.

teacher-train tunes the standalone thinker (Qwen2_5OmniThinkerForConditionalGeneration), so peft saves
`base_model.model.model.layers.N...` keys. vLLM serves the thinker from a full Omni checkpoint whose weights sit under
`thinker.` and maps adapter modules the same way: an adapter without the prefix would match nothing and be ignored
without a word. `vllm_adapter` writes a copy with the prefix inserted (and target_modules as plain module names, which
vLLM's LoRA manager expects instead of peft's regex); `check_vllm_adapter` refuses an adapter that lacks it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llm.families import Family

_PEFT_ROOT = "base_model.model."
_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"

# family -> (saved prefix, published prefix): key renames from transformers 5's save layout to the hub checkpoints'
PUBLISHED_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_audio": (("language_model.model.model.", "language_model.model."),),
}


def published_layout(model_dir: Path, family: str) -> int:
    """Rename the tensors of every safetensors file in `model_dir` to the published layout of `family`, in place
    (the shard index too); returns how many keys changed (0: already published, or nothing to rename)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    renames = PUBLISHED_RENAMES.get(family, ())
    if not renames:
        return 0

    def renamed(key: str) -> str:
        for saved, published in renames:
            if key.startswith(saved):
                return published + key[len(saved):]
        return key

    model_dir = Path(model_dir)
    changed = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as weights:
            keys = list(weights.keys())
            if all(renamed(k) == k for k in keys):
                continue
            metadata = weights.metadata() or {"format": "pt"}
            tensors = {renamed(k): weights.get_tensor(k) for k in keys}
        changed += sum(renamed(k) != k for k in keys)
        save_file(tensors, str(shard), metadata=metadata)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return changed


def adapter_keys(adapter_dir: Path) -> list[str]:
    """The tensor names of a saved peft adapter."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / _WEIGHTS), "pt") as weights:
        return list(weights.keys())


def check_vllm_adapter(adapter_dir: Path, family: Family) -> None:
    """Raise ValueError when vLLM would silently ignore `adapter_dir` for `family` (keys without its prefix)."""
    prefix = family.vllm_adapter_prefix
    if prefix is None:
        return
    stray = [k for k in adapter_keys(adapter_dir) if not k.startswith(_PEFT_ROOT + prefix)]
    if stray:
        raise ValueError(f"adapter {adapter_dir}: {len(stray)} keys such as {stray[0]!r} lack the {prefix!r} prefix "
                         f"that vLLM's {family.model_class} maps, so vLLM would ignore them; serve teacher-train's "
                         "adapter-vllm/ (llm.adapters.vllm_adapter writes it) or its merged export")


def vllm_adapter(adapter_dir: Path, out: Path, family: Family) -> Path:
    """A copy of `adapter_dir` at `out` whose keys carry `family.vllm_adapter_prefix`; returns `out`.

    target_modules becomes the list of projection names the family's regex names (vLLM does not take a regex).
    """
    from safetensors.torch import load_file, save_file

    prefix = family.vllm_adapter_prefix or ""
    adapter_dir, out = Path(adapter_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(adapter_dir / _WEIGHTS))
    renamed = {(_PEFT_ROOT + prefix + k[len(_PEFT_ROOT):]) if k.startswith(_PEFT_ROOT) and prefix
               and not k.startswith(_PEFT_ROOT + prefix) else k: v for k, v in tensors.items()}
    save_file(renamed, str(out / _WEIGHTS), metadata={"format": "pt"})
    config = json.loads((adapter_dir / _CONFIG).read_text(encoding="utf-8"))
    config["target_modules"] = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in renamed if ".lora_" in k})
    (out / _CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    for extra in adapter_dir.iterdir():  # README and anything else peft wrote
        if extra.name not in (_WEIGHTS, _CONFIG) and extra.is_file():
            shutil.copy2(extra, out / extra.name)
    return out
