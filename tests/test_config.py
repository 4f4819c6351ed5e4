from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clips.config import ConfigError, load_config, to_dict
from clips.io import atomic_save_npz, atomic_write_text, check_name, load_npz, name_problem
from clips.labels import LABELS, is_label, label_index
from clips.status import format_status, merge_status, parse_status


@dataclass
class Inner:
    # a number
    epochs: int = 10
    # a probability
    threshold: float = 0.5


@dataclass
class Outer:
    # required path
    data: Path
    # a tuple of names
    names: tuple[str, ...] = ("a",)
    # nested settings
    inner: Inner = field(default_factory=Inner)
    # optional
    label: str | None = None


def test_load_config_yaml_then_flags_deep_merged(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: somewhere\nnames: [x, y]\ninner:\n  epochs: 3\n  threshold: 1\n")
    cfg = load_config(Outer, path, {"inner": {"epochs": 7, "threshold": None}, "label": None})
    assert cfg == Outer(data=Path("somewhere"), names=("x", "y"), inner=Inner(epochs=7, threshold=1.0))
    assert isinstance(cfg.inner.threshold, float)
    assert to_dict(cfg) == {"data": "somewhere", "names": ["x", "y"], "inner": {"epochs": 7, "threshold": 1.0},
                            "label": None}


def test_load_config_refuses_unknown_and_missing_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nepochz: 3\ninner: {epochs: 2, thresold: 0.1}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) epochz for Outer; valid keys: data, inner, label, names"):
        load_config(Outer, path)
    path.write_text("data: d\ninner: {thresold: 0.1}\n")
    with pytest.raises(ConfigError, match=r"c.yaml.inner: unknown key\(s\) thresold for Inner"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"missing required key\(s\) data; .* \(e.g. --data\)"):
        load_config(Outer, None, {"inner": {"epochs": None}})
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Outer, path)


def test_labels_in_official_order():
    assert LABELS == ("neutral", "angry", "happy", "sad", "worried", "surprise")
    assert label_index(" Surprise ") == 5 and is_label("SAD") and not is_label("fear")
    with pytest.raises(ValueError, match="unknown label 'fear': expected one of neutral, angry"):
        label_index("fear")


def test_status_round_trip():
    assert merge_status(("no_face", "ok"), ("no_audio",)) == ("no_audio", "no_face")
    assert format_status(()) == "ok" and parse_status("ok") == ()
    assert parse_status("no_face;no_audio") == ("no_audio", "no_face")
    with pytest.raises(ValueError, match="unknown clip status"):
        merge_status(("broken",))


def test_names_and_atomic_files(tmp_path):
    assert name_problem("sample_00000001") is None
    for bad in ("a/b", "..", "../x", "", " a", "a\\b"):
        assert name_problem(bad) is not None
    with pytest.raises(ValueError, match="not safe as a file name"):
        check_name("../../etc/passwd")
    atomic_write_text(tmp_path / "sub" / "t.txt", "héllo")
    assert (tmp_path / "sub" / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_save_npz(tmp_path / "a.npz", x=__import__("numpy").arange(3))
    assert load_npz(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "sub"]
