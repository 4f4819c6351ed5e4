"""Resumable, append-only store of each teacher agent's label probabilities per clip.

Usage:
    store = AgentStore(run / "agents")
    todo = [n for n in names if n not in store.done("audio")]
    store.append("audio", batch_names, batch_probs)          # one atomic shard per batch
    names, probs = store.read("audio")                        # (n,), (n, 6)
    store.append("audio", batch_names, batch_probs, fold_probs=batch_fold_probs)   # + (n, K, 6) per fold model
    store.matrix_folds(["audio"], pool_names, folds=5)        # (agents, clips, K, 6)
    store.append("qwen-text", batch_names, batch_probs, mass=batch_mass)   # LLM agents: label mass too
    names, mass = store.read_mass("qwen-text")                # (n,); NaN where a shard stored none

Each agent has a folder of shards `part-XXXXXXXX.npz` (arrays `names`, `probs`, and `mass` for LLM agents: the
probability the model put on any label token, a confidence signal), each written atomically, so a
kill -9 loses at most the batch in flight and a rerun skips every clip already stored. Rows of NaN mean the agent
had no evidence for that clip (its modality is missing). An agent fitted per fold of the run's assignment also
stores `fold_probs`, each fold model's probabilities; meta.json records (`labelled_scores`) whether its
labelled clips were scored out of fold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from clips.io import atomic_save_npz, atomic_write_text, check_name, load_npz
from clips.labels import NUM_LABELS

_SHARD = re.compile(r"^part-(\d{8})\.npz$")


class AgentStore:
    """Per-agent probability shards under one folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def agent_dir(self, agent: str) -> Path:
        return self.root / check_name(agent)

    def agents(self) -> list[str]:
        """Names of the agents that have a folder, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def write_meta(self, agent: str, meta: dict) -> None:
        """Record the agent's settings; a rerun with different settings must use a fresh run folder."""
        path = self.agent_dir(agent) / "meta.json"
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old != meta:
                raise ValueError(
                    f"{path}: agent {agent!r} was stored with other settings ({old}); now {meta}. "
                    "Use a new --run folder, or delete that agent's folder to relabel."
                )
            return
        atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True))

    def read_meta(self, agent: str) -> dict | None:
        """The agent's recorded settings, or None when it has none."""
        path = self.agent_dir(agent) / "meta.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def _shards(self, agent: str) -> list[Path]:
        folder = self.agent_dir(agent)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if _SHARD.match(p.name))

    def _first_rows(self, agent: str) -> Iterator[tuple[Path, dict, list[int], list[str]]]:
        """(shard, its arrays, indices of the names no earlier shard stored, those names) per shard of `agent`."""
        seen: set[str] = set()
        for shard in self._shards(agent):
            data = load_npz(shard)
            shard_names = [str(n) for n in data["names"]]
            keep = [i for i, n in enumerate(shard_names) if n not in seen]
            seen.update(shard_names[i] for i in keep)
            yield shard, data, keep, [shard_names[i] for i in keep]

    def read(self, agent: str) -> tuple[list[str], np.ndarray]:
        """All stored (names, probs (n, 6)) of `agent`, first occurrence of a name kept."""
        names, probs, _ = self.read_with_mass(agent)
        return names, probs

    def read_with_mass(self, agent: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """All stored (names, probs (n, 6), label mass (n,)) of `agent` in one pass over its shards, first
        occurrence of a name kept; the mass is NaN for shards without it."""
        names: list[str] = []
        blocks: list[np.ndarray] = []
        masses: list[np.ndarray] = []
        for shard, data, keep, kept in self._first_rows(agent):
            probs = data["probs"].astype(np.float32)
            if probs.shape != (len(data["names"]), NUM_LABELS):
                raise ValueError(f"{shard}: probs of shape {probs.shape} for {len(data['names'])} names; "
                                 "delete the shard and rerun teacher-label")
            mass = data["mass"].astype(np.float32) if "mass" in data else np.full(len(probs), np.nan, np.float32)
            names.extend(kept)
            blocks.append(probs[keep])
            masses.append(mass[keep])
        probs = np.concatenate(blocks) if blocks else np.zeros((0, NUM_LABELS), np.float32)
        return names, probs, np.concatenate(masses) if masses else np.zeros(0, np.float32)

    def read_folds(self, agent: str) -> tuple[list[str], np.ndarray] | None:
        """All stored (names, fold_probs (n, K, 6)) of `agent`, first occurrence of a name kept; None when its
        shards hold no per-fold probabilities (an agent fitted without folds, or one that saw no label)."""
        names: list[str] = []
        blocks: list[np.ndarray] = []
        for _, data, keep, kept in self._first_rows(agent):
            if "fold_probs" not in data:
                return None
            names.extend(kept)
            blocks.append(data["fold_probs"].astype(np.float32)[keep])
        if not blocks:
            return None
        if len({b.shape[1] for b in blocks}) > 1:
            raise ValueError(f"{self.agent_dir(agent)}: shards with different fold counts; relabel the agent in a "
                             "new --run folder")
        return names, np.concatenate(blocks)

    def done(self, agent: str) -> set[str]:
        """Names already stored for `agent`."""
        return set(self.read(agent)[0])

    def append(self, agent: str, names: list[str], probs: np.ndarray, fold_probs: np.ndarray | None = None,
               mass: np.ndarray | None = None) -> Path:
        """Write one shard for a batch, with each fold model's (n, K, 6) `fold_probs` and the (n,) label `mass`
        when given; returns its path."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (len(names), NUM_LABELS):
            raise ValueError(f"agent {agent!r}: probs of shape {probs.shape} for {len(names)} names")
        arrays = {"names": np.array(names, dtype=str), "probs": probs}
        if fold_probs is not None:
            fold_probs = np.asarray(fold_probs, dtype=np.float32)
            if fold_probs.ndim != 3 or fold_probs.shape[0] != len(names) or fold_probs.shape[2] != NUM_LABELS:
                raise ValueError(f"agent {agent!r}: fold_probs of shape {fold_probs.shape} for {len(names)} names; "
                                 f"give (n, folds, {NUM_LABELS})")
            arrays["fold_probs"] = fold_probs
        if mass is not None:
            arrays["mass"] = np.asarray(mass, dtype=np.float32)
            if arrays["mass"].shape != (len(names),):
                raise ValueError(f"agent {agent!r}: mass of shape {arrays['mass'].shape} for {len(names)} names")
        shards = self._shards(agent)
        index = int(_SHARD.match(shards[-1].name).group(1)) + 1 if shards else 0
        path = self.agent_dir(agent) / f"part-{index:08d}.npz"
        atomic_save_npz(path, **arrays)
        return path

    def read_mass(self, agent: str) -> tuple[list[str], np.ndarray]:
        """All stored (names, (n,) label mass) of `agent`, first occurrence kept; NaN for shards without mass."""
        names, _, mass = self.read_with_mass(agent)
        return names, mass

    def matrix(self, agents: list[str], names: list[str]) -> np.ndarray:
        """(agents, clips, 6) probabilities aligned with `names`; NaN where an agent has no row for a clip."""
        return _stacked(agents, names, self.read, (NUM_LABELS,))

    def matrix_folds(self, agents: list[str], names: list[str], folds: int) -> np.ndarray:
        """(agents, clips, folds, 6) each agent's fold-model probabilities aligned with `names`; an agent stored
        without per-fold probabilities (one that saw no label) gives its single probabilities to every fold."""

        def read(agent: str) -> tuple[list[str], np.ndarray]:
            stored = self.read_folds(agent)
            if stored is None:
                stored_names, probs = self.read(agent)
                return stored_names, np.repeat(probs[:, None, :], folds, axis=1)
            if stored[1].shape[1] != folds:
                raise ValueError(f"{self.agent_dir(agent)}: {stored[1].shape[1]} fold models, the run has {folds} "
                                 "folds; relabel the agent in a new --run folder")
            return stored

        return _stacked(agents, names, read, (folds, NUM_LABELS))

    def mass_matrix(self, agents: list[str], names: list[str]) -> np.ndarray:
        """(agents, clips) label mass aligned with `names`: NaN where an agent stored none (feature agents)."""
        return _stacked(agents, names, self.read_mass, ())


def _stacked(agents: list[str], names: list[str], read: Callable[[str], tuple[list[str], np.ndarray]],
             tail: tuple[int, ...]) -> np.ndarray:
    """(agents, clips, *tail) of each agent's read(agent) -> (stored names, values) aligned with `names`; NaN where
    an agent has no row for a clip."""
    out = np.full((len(agents), len(names), *tail), np.nan, dtype=np.float32)
    position = {n: i for i, n in enumerate(names)}
    for a, agent in enumerate(agents):
        stored_names, values = read(agent)
        dst, src = _aligned(stored_names, position)
        out[a, dst] = values[src]
    return out


def _aligned(stored_names: list[str], position: dict[str, int]) -> tuple[list[int], list[int]]:
    """(rows in the output, rows in the stored arrays) of the stored names that the output asks for."""
    pairs = [(position[n], j) for j, n in enumerate(stored_names) if n in position]
    return [d for d, _ in pairs], [s for _, s in pairs]
