"""Every shipped config file loads into its stage's dataclass."""

from pathlib import Path

import pytest

from clips.config import load_config
from features.stage import FeaturesConfig
from student.distill import DistillConfig
from teacher.finetune import TeacherTrainConfig
from teacher.label import TeacherLabelConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STAGES = {
    "features-gpu.yaml": (FeaturesConfig, {"data": "d", "run": "r"}),
    "teacher-audio.yaml": (TeacherTrainConfig, {"data": "d", "out": "o", "run": "r"}),
    "teacher-vl.yaml": (TeacherTrainConfig, {"data": "d", "out": "o", "run": "r"}),
    "teacher-omni.yaml": (TeacherTrainConfig, {"data": "d", "out": "o", "run": "r"}),
    "teacher-text-cpu.yaml": (TeacherTrainConfig, {"data": "d", "out": "o"}),
    "teacher-label-llm.yaml": (TeacherLabelConfig, {"data": "d", "run": "r"}),
    "teacher-label-text.yaml": (TeacherLabelConfig, {"data": "d", "run": "r"}),
    "teacher-text-lora-bench.yaml": (TeacherTrainConfig, {"data": "d", "out": "o", "run": "r"}),
    "distill.yaml": (DistillConfig, {"data": "d", "run": "r"}),
}


def test_every_config_file_has_a_stage():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_config_file_loads(name):
    cls, required = STAGES[name]
    cfg = load_config(cls, CONFIGS / name, required)
    assert isinstance(cfg, cls) and cfg.data == Path("d")


def test_shipped_values_arrive():
    features = load_config(FeaturesConfig, CONFIGS / "features-gpu.yaml", {"data": "d", "run": "r"})
    assert features.features.extractors == ("hubert", "clip", "hf_text")
    assert features.features.extractor_options["clip"] == {"model": "/models/clip-vit-large-patch14", "view": "face"}
    label = load_config(TeacherLabelConfig, CONFIGS / "teacher-label-llm.yaml", {"data": "d", "run": "r"})
    assert [a.kind for a in label.agents] == ["features"] * 3 + ["llm"] * 4
    assert label.agents[3].options["family"] == "qwen2_audio"
    assert all(a.fold_adapters for a in label.agents[3:6]) and label.agents[6].fold_adapters is None
    train = load_config(TeacherTrainConfig, CONFIGS / "teacher-audio.yaml", {"data": "d", "out": "o", "run": "r"})
    assert train.teacher.family == "qwen2_audio" and train.lora.r == 16 and train.learning_rate == 1e-4
    assert train.folds == 5 and train.merge is True  # vLLM serves Qwen2-Audio's fold models merged


def test_shipped_distill_config_is_the_default():
    shipped = load_config(DistillConfig, CONFIGS / "distill.yaml", {"data": "d", "run": "r"})
    assert shipped.filter == DistillConfig(data=Path("d"), run=Path("r")).filter
    assert shipped.student == DistillConfig(data=Path("d"), run=Path("r")).student


def test_shipped_text_teacher_config():
    label = load_config(TeacherLabelConfig, CONFIGS / "teacher-label-text.yaml", {"data": "d", "run": "r"})
    assert label.features.extractors == ("egemaps", "whisper", "face", "e5", "llm_text")
    assert label.features.workers == 1  # each worker would hold its own copy of the LLM
    zero_shot, knn = label.agents[3].options, label.agents[4].options
    assert zero_shot["cpu_dtype"] == knn["cpu_dtype"] == "bfloat16" and "calibration" not in zero_shot
    assert knn["incontext_k"] == 4
    bench = load_config(TeacherTrainConfig, CONFIGS / "teacher-text-lora-bench.yaml", {"data": "d", "out": "o",
                                                                                          "run": "r"})
    assert (bench.folds, bench.epochs, bench.lora.r, bench.merge) == (5, 3, 8, False)
