import json
import re

import numpy as np
import pytest

from clips.dataset import ClipRef
from clips.labels import LABELS
from clips.media import DecodedClip
from llm.tiny import TINY_MAX_PIXELS, TINY_MIN_PIXELS
from llm.views import clip_media
from teacher.agents import build_agent
from teacher.spec import AgentContext, AgentSpec


@pytest.fixture
def refs(tmp_path, write_clip) -> dict[str, ClipRef]:
    """Four mp4 clips (video + audio), one wav (audio only) and one name without media."""
    out = {}
    for i, label in enumerate(["happy", "sad", "happy", "sad"]):
        path = write_clip(tmp_path / f"v{i}.mp4", seconds=1.0, tone_hz=200 + 150 * i, seed=i)
        out[path.stem] = ClipRef(name=path.stem, path=path, label=label, transcript=f"台词{i}")
    wav = write_clip(tmp_path / "a0.wav", seconds=1.0, video=False)
    out["a0"] = ClipRef(name="a0", path=wav, label="angry", transcript=None)
    out["gone"] = ClipRef(name="gone", path=None, label=None, transcript=None, status=("no_media",))
    return out


def _spec(name: str, model, family: str, view: str, **extra) -> AgentSpec:
    options = {"model": str(model), "family": family, "view": view, "device": "cpu", "batch_size": 2, **extra}
    return AgentSpec(name=name, kind="llm", options=options)


def test_llm_agents_score_through_build_agent_with_nan_rows_for_missing_media(tiny_dirs, refs):
    context = AgentContext(features=None, labels={}, clips=refs)
    names = ["v0", "a0", "gone", "v1", "unknown"]
    audio = build_agent(_spec("qwen-audio", tiny_dirs["qwen2_audio"], "qwen2_audio", "audio", language="zh"),
                        context)
    probs = audio.score(names)
    assert probs.shape == (5, 6)
    np.testing.assert_allclose(probs[[0, 1, 3]].sum(1), 1.0, atol=1e-5)
    assert np.isnan(probs[[2, 4]]).all()
    settings = audio.settings()
    assert settings["scoring_mode"] == "first_token" and settings["label_words"][0] == "平静"
    assert settings["answer_prefix"] == "情绪：" and settings["label_token_ids"][1] == [106353, 108299]  # 生气, 愤怒
    json.dumps(settings)  # stored beside the outputs

    frames = build_agent(_spec("qwen-frames", tiny_dirs["qwen2_5_vl"], "qwen2_5_vl", "frames", num_frames=4,
                               min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS), context)
    probs = frames.score(names)
    np.testing.assert_allclose(probs[[0, 3]].sum(1), 1.0, atol=1e-5)
    assert np.isnan(probs[[1, 2, 4]]).all()  # the wav has no frames


def test_llm_agent_needs_clips_and_valid_options(tiny_dirs):
    with pytest.raises(ValueError, match=r"needs the clips \(AgentContext.clips\)"):
        build_agent(_spec("x", tiny_dirs["qwen2_audio"], "qwen2_audio", "audio"), AgentContext(None, {}))
    with pytest.raises(ValueError, match=r"view='face': family qwen2_audio takes audio"):
        _spec("x", "m", "qwen2_audio", "face")


def test_face_view_without_a_face_has_no_frames():
    blank = DecodedClip(name="b", audio=None, frames=np.zeros((4, 112, 112, 3), np.uint8), frame_times=None,
                        duration=1.0)
    assert clip_media(blank, "face").frames is None
    assert clip_media(blank, "frames").frames.shape == (4, 112, 112, 3)


def test_teacher_train_end_to_end_then_serve_adapter_and_merged(tiny_dirs, refs, tmp_path):
    from teacher.finetune import LoraSettings, TeacherTrainConfig, train_teacher
    from teacher.llm_options import LLMAgentOptions

    labelled = [r for r in refs.values() if r.label is not None]
    teacher = LLMAgentOptions(model=str(tiny_dirs["qwen2_audio"]), family="qwen2_audio", view="audio", device="cpu")
    cfg = TeacherTrainConfig(data=tmp_path, out=tmp_path / "teacher", teacher=teacher, lora=LoraSettings(r=4, alpha=8),
                             epochs=2, learning_rate=5e-3, batch_size=2, grad_accum=2, held_out=0.4, progress=False)
    report = train_teacher(cfg, labelled)
    assert report.train_clips + report.held_clips == 5 and report.held_clips == 2
    assert 0.0 <= report.waf <= 1.0 and len(report.losses) == 2
    assert (report.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((cfg.out / "report.json").read_text())["config"]["teacher"]["family"] == "qwen2_audio"

    context = AgentContext(features=None, labels={}, clips=refs)
    with_adapter = build_agent(_spec("lora", tiny_dirs["qwen2_audio"], "qwen2_audio", "audio",
                                     adapter=str(report.adapter_dir)), context)
    merged = build_agent(_spec("merged", report.merged_dir, "qwen2_audio", "audio"), context)
    names = ["v0", "v1", "a0"]
    np.testing.assert_allclose(merged.score(names), with_adapter.score(names), atol=1e-5)


def test_ask_prints_probabilities_and_an_answer(tiny_dirs, refs):
    from teacher.llm_agent import ask_clip

    lines: list[str] = []
    spec = _spec("qwen-audio", tiny_dirs["qwen2_audio"], "qwen2_audio", "audio")
    answers = ask_clip(refs["v0"].path, [spec], max_new_tokens=4, echo=lines.append)
    assert sum(answers[0].probs.values()) == pytest.approx(1.0, abs=1e-5)
    printed = dict(re.findall(r"(\w+) (\d\.\d{3})", lines[0]))
    assert set(printed) == set(LABELS) and sum(map(float, printed.values())) == pytest.approx(1.0, abs=5e-3)
    assert lines[1].startswith("qwen-audio says:")
    answers = ask_clip(refs["v0"].path, [spec], question="Is the speaker calm?", max_new_tokens=3, echo=lines.append)
    assert isinstance(answers[0].text, str) and lines[-1].startswith("qwen-audio says:")


def test_teacher_label_holds_one_llm_model_at_a_time(tiny_dirs, refs, tmp_path, monkeypatch):
    """Each agent is built, scores every clip and is released before the next is built; mass is stored."""
    import gc
    import weakref

    from teacher import llm_agent
    from teacher.label import TeacherLabelConfig, label_agents
    from teacher.store import AgentStore

    alive: list[weakref.ref] = []
    live_at_build: list[int] = []
    build_hf = llm_agent.SCORER_BUILDERS["hf"]

    def counting(options, family, plan_for, adapters):
        gc.collect()
        live_at_build.append(sum(ref() is not None for ref in alive))
        scorer, processor = build_hf(options, family, plan_for, adapters)
        alive.append(weakref.ref(scorer.model))
        return scorer, processor

    monkeypatch.setitem(llm_agent.SCORER_BUILDERS, "hf", counting)
    specs = [_spec(f"text-{i}", tiny_dirs["qwen2_5_text"], "qwen2_5_text", "text", language=language)
             for i, language in enumerate(["zh", "en"])]
    cfg = TeacherLabelConfig(data=tmp_path, run=tmp_path / "run", agents=specs, batch_size=3, progress=False)
    names = sorted(refs)
    scored, skipped, _ = label_agents(cfg, AgentContext(features=None, labels={}, clips=refs), names)
    gc.collect()
    assert live_at_build == [0, 0] and len(alive) == 2
    assert all(ref() is None for ref in alive)  # the last one is released too
    assert scored == {"text-0": 6, "text-1": 6} and skipped == {"text-0": 0, "text-1": 0}
    store = AgentStore(tmp_path / "run" / "agents")
    stored_names, mass = store.read_mass("text-0")
    with_text = [i for i, n in enumerate(stored_names) if refs[n].transcript]
    assert len(with_text) == 4 and np.isnan(np.delete(mass, with_text)).all()
    assert ((mass[with_text] > 0) & (mass[with_text] < 1)).all()
    matrix = store.mass_matrix(["text-0", "text-1"], stored_names)  # (agents, clips), what a filter reads
    assert matrix.shape == (2, 6)
    np.testing.assert_array_equal(matrix[0], mass)
    # a rerun builds nothing: every clip is stored
    live_at_build.clear()
    assert label_agents(cfg, AgentContext(features=None, labels={}, clips=refs), names)[1] == {"text-0": 6, "text-1": 6}
    assert live_at_build == []
