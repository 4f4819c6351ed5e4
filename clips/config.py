"""Typed stage configs filled from YAML files and command-line flags; unknown keys are refused.

Usage:
    cfg = load_config(DistillConfig, Path("configs/distill.yaml"), overrides={"epochs": 40})
Each stage defines a dataclass with a one-line docstring per field (as a comment above it) and checks in
__post_init__; this module only fills it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag that does not fit its dataclass."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if hint is Path:
        return Path(value)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`; raises ConfigError listing every unknown key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    required = [f.name for f in fields.values() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in data]
    if required:
        raise ConfigError(
            f"{where}: missing required key(s) {', '.join(required)}; set them in the config file "
            f"or give them as flags (e.g. --{required[0].replace('_', '-')})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def load_config(cls: type[T], path: Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Dataclass `cls` from an optional YAML file, then flags in `overrides` (deep-merged, None skipped)."""
    data: dict[str, Any] = {}
    where = cls.__name__
    if path is not None:
        where = str(path)
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(loaded).__name__}")
        data.update(loaded)
    _merge(data, overrides or {})
    return from_dict(cls, data, where)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Deep-merge `overrides` into `base`, skipping None values (flags not given)."""
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            target = base.get(key) if isinstance(base.get(key), dict) else {}
            _merge(target, value)
            if target:
                base[key] = target
        else:
            base[key] = value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-friendly dict of a config dataclass (Paths as strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}
