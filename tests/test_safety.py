"""Safety by inspection of the source and by refusal: no pickle loading, no remote code, no writes outside the run.

The CLI-level refusals of unsafe names in label, transcript and candidate CSVs and of oddly named pool files are
in tests/test_bad_inputs.py; here the helpers every writer goes through are checked directly.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clips.io import check_name, load_npz, name_problem
from features.base import FeatureResult
from features.cache import clip_path, read_entry, write_entry
from teacher.store import AgentStore

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
UNSAFE_NAMES = ["../evil", "..", ".", "a/b", "a\\b", "/abs", "", " padded", "line\nbreak", "..hidden"]


def sources() -> list[Path]:
    """Every Python file git tracks in the project, this file left out: a virtual environment of any name inside
    the checkout (venv/, env/) holds third-party code, not the project's."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "*.py"], cwd=REPO, capture_output=True, check=True)
    paths = (REPO / name for name in tracked.stdout.decode("utf-8").split("\0") if name)
    return sorted(p for p in paths if p.is_file() and p.resolve() != THIS)


def calls(pattern: str) -> list[tuple[Path, int, str]]:
    """(file, line, text) of every source line matching `pattern`."""
    regex = re.compile(pattern)
    return [(path.relative_to(REPO), number, line.strip()) for path in sources()
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if regex.search(line)]


def test_no_pickle_loading_anywhere() -> None:
    assert len(sources()) > 30
    assert calls(r"\bpickle\.loads?\(|\bimport pickle\b|\bcPickle\b|\bdill\b|joblib\.load") == []
    assert calls(r"allow_pickle\s*=\s*True") == []
    unsafe_torch = [hit for hit in calls(r"\btorch\.load\(") if "weights_only=True" not in hit[2]]
    assert unsafe_torch == [], "torch.load must pass weights_only=True"


def test_remote_code_is_never_trusted_by_default() -> None:
    # no loader passes trust_remote_code at all, so transformers' default (False) holds everywhere
    assert calls(r"trust_remote_code") == []
    loaders = calls(r"from_pretrained\(")
    assert any(str(path).startswith("llm") for path, _, _ in loaders)
    assert any(str(path) == "features/hf.py" for path, _, _ in loaders)


def test_np_load_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(path)
    # the cache reader refuses it too (None: recompute, never trust)
    assert read_entry(path, 1) is None


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_names_never_become_file_names(name: str, tmp_path: Path) -> None:
    assert name_problem(name) is not None
    with pytest.raises(ValueError, match="rename"):
        check_name(name)
    with pytest.raises(ValueError):
        clip_path(tmp_path / "cache", "e5-00000000", name)
    with pytest.raises(ValueError):
        AgentStore(tmp_path / "agents").append(name, ["clip"], np.full((1, 6), 1 / 6, np.float32))
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_cache_writes_stay_in_their_folder(tmp_path: Path) -> None:
    cache = tmp_path / "run" / "features"
    path = clip_path(cache, "e5-00000000", "sample_00000001")
    write_entry(path, FeatureResult(np.ones(4, np.float32)), 4)

    assert path.resolve().is_relative_to(cache.resolve())
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == [
        "run/features/e5-00000000/sample_00000001.npz"
    ]
