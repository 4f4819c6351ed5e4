"""The registry Qwen2.5 on the demo's transcripts: LLM hidden-state features against e5, and the zero-shot text agent
uncalibrated, calibrated and with in-context examples; out-of-fold WAF side by side, clips/s and memory.

Usage:
    nice -n 10 .venv/bin/python -m bench.llm_text                       # 0.5B and 1.5B (python cli.py fetch-llm)
    .venv/bin/python -m bench.llm_text --models 1.5b --seeds 5 --incontext-seeds 1
    .venv/bin/python -m bench.llm_text --memory 1.5b:bfloat16      # the agent's peak memory alone (also :float32)

Data: the demo's 118 labelled subtitle lines (bench.text_corpus; exactly make-demo's). Every WAF is out of fold:
  features   standardised logistic regression (C chosen on each training fold; bench.linear) and the fusion student
             on one text block, 5 folds, mean +- sd over --seeds fold assignments (the student's seed too);
             a shuffled-labels row checks that chance comes out as chance.
  layers     the same logistic regression on other layers' pooled states (from one full-depth pass); shown to
             document the choice of depth, not used to make it (the default was fixed beforehand, features.llm_text).
  agent      the shipped zero-shot text agent (zh prompt, prefilled answer), its scores divided by the content-free
             prior (no labels used), corrected by a prior fitted on the training folds, and with k=4 in-context
             examples from the other folds (nearest by e5).
Speed is measured here, on whatever else the cores are doing (the load average is printed); the pool projection
is 115,595 clips at the measured rate; the GPU projection is computed from the architecture (FLOPs per clip at a
stated sustained rate), not measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold

from bench.linear import linear_oof
from bench.text_corpus import demo_lines
from clips.folds import FoldAssignment, stratified_folds
from clips.labels import LABELS, label_index
from clips.scoring import score
from features.llm_text import LLMTextExtractor, layer_of
from features.text import E5Extractor
from llm.calibration import prior_correct
from pseudo.measure import calibrated_held_out, fold_calibrations
from student.linear import C_GRID, linear_design
from student.train import StudentConfig, train_student

POOL = 115_595
# FLOP/s a GPU sustains on these short rows, for the computed projection (about a third of 989 dense bf16 TFLOP/s)
SUSTAINED = 300e12
DEPTHS = (0.25, 0.5, 0.67, 0.75, 1.0)


def rss_gb() -> float:
    """Peak resident memory of this process so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def waf(y: np.ndarray, predicted: np.ndarray) -> float:
    return score(y, predicted).waf


def row_space(x: np.ndarray, fold_of: np.ndarray) -> list[np.ndarray]:
    """Per fold k, the rows of `x` standardised on fold k's training rows and written in the basis of those rows'
    span. An L2 logistic regression's solution lies in the span of its training rows, so bench.linear's
    regression (standardised, C chosen by an inner CV on training rows only) gives the same predictions on these
    (n, <= n_train) matrices as on the (n, 3072) features, tens of times faster."""
    out = []
    for k in range(int(fold_of.max()) + 1):
        train = fold_of != k
        mean, scale = x[train].mean(0), x[train].std(0)
        z = (x - mean) / np.where(scale > 0, scale, 1.0)
        basis = np.linalg.svd(z[train], full_matrices=False)[2]                  # (n_train, d)
        out.append(z @ basis.T)
    return out


def linear_wafs(x: np.ndarray, y: np.ndarray, seeds: int) -> list[float]:
    """Out-of-fold WAF of the standardised logistic regression, one fold assignment per seed."""
    design = linear_design([x], np.ones((len(x), 1), bool))
    wafs = []
    for seed in range(seeds):
        fold_of = stratified_folds(y, 5, seed)
        if design.shape[1] <= len(y):
            wafs.append(waf(y, linear_oof(design, y, fold_of, seed)))
            continue
        predicted = np.zeros(len(y), dtype=np.int64)
        for k, z in enumerate(row_space(design, fold_of)):
            held = fold_of == k
            model = LogisticRegressionCV(Cs=list(C_GRID), cv=StratifiedKFold(3, shuffle=True, random_state=seed),
                                         max_iter=2000, scoring="f1_weighted")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predicted[held] = model.fit(z[~held], y[~held]).predict(z[held])
        wafs.append(waf(y, predicted))
    return wafs


def student_wafs(blocks: list[np.ndarray], y: np.ndarray, seeds: int) -> list[float]:
    """Out-of-fold WAF of the fusion student (labelled only), fold assignment and seed = each seed."""
    wafs = []
    for seed in range(seeds):
        result = train_student(blocks, np.ones((len(y), len(blocks)), bool), np.eye(6, dtype=np.float32)[y],
                               np.ones(len(y), np.float32), np.ones(len(y), bool),
                               StudentConfig(device="cpu", seed=seed), progress=False,
                               fold_of=stratified_folds(y, 5, seed))
        wafs.append(result.scores.waf)
    return wafs


def training_fold_prior(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """(n, 6) the agent's probabilities with the label prior that distill's filter fits on the other folds."""
    calibrations = fold_calibrations(probs[None], y, fold_of)
    return calibrated_held_out(probs[None], fold_of, calibrations, temperature=False)[0]


def show(rows: list[tuple[str, list[float], str]]) -> None:
    print(f"{'':<52}{'out-of-fold WAF':>20}  note")
    for name, values, note in rows:
        sd = f" +- {np.std(values, ddof=1):.3f}" if len(values) > 1 else "         "
        print(f"{name:<52}{np.mean(values):>11.3f}{sd}  {note}")


def feature_rows(folder: Path, size: str, lines: list[str], y: np.ndarray, seeds: int, extra: int) -> list:
    """LR and student rows of the llm_text features of one model, with its speed."""
    extractor = LLMTextExtractor(model=str(folder))
    extractor._load()
    started = time.perf_counter()
    x = extractor.embed(lines)
    rate = len(lines) / (time.perf_counter() - started)
    hidden = x.shape[1] // 2
    print(f"llm_text {size}: layer {extractor.layer}, dim {extractor.dim}, {extractor.resolved_dtype()}, "
          f"{rate:.2f} clips/s on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}); pool "
          f"{POOL / rate / 3600:.1f} h; peak RSS {rss_gb():.1f} GB")
    rng = np.random.default_rng(0)
    rows = [(f"LR  llm_text {size} (layer {extractor.layer}, mean+last)", linear_wafs(x, y, seeds),
             f"{rate:.2f} clips/s"),
            (f"LR  llm_text {size} mean only", linear_wafs(x[:, :hidden], y, extra), "same pass"),
            (f"LR  llm_text {size} last token only", linear_wafs(x[:, hidden:], y, extra), "same pass"),
            (f"LR  llm_text {size}, shuffled labels", linear_wafs(x, rng.permutation(y), extra), "chance check"),
            (f"student llm_text {size}", student_wafs([x], y, seeds), "")]
    extractor._net = None
    return rows, x


def layer_rows(folder: Path, size: str, lines: list[str], y: np.ndarray, seeds: int) -> list:
    """LR rows of other depths, from one full-depth pass (documentation of the choice, not the choice)."""
    full = LLMTextExtractor(model=str(folder), depth=1.0)
    layers = full.hidden_layers(lines)                                        # (n, L, 2H)
    count = layers.shape[1]
    rows = []
    for depth in DEPTHS:
        layer = layer_of(depth, count)
        rows.append((f"LR  llm_text {size} layer {layer}/{count} (depth {depth})",
                     linear_wafs(layers[:, layer - 1], y, seeds), "default" if depth == 0.67 else ""))
    return rows


def agent_rows(folder: Path, size: str, refs, y: np.ndarray, e5: np.ndarray, seeds: int, incontext_seeds: int,
               k: int) -> list:
    """The zero-shot text agent: raw, content-free calibrated, training-fold prior, in-context (cross-fitted)."""
    from features.cache import FeatureSet
    from teacher.agents import build_agent
    from teacher.spec import AgentContext, AgentSpec

    options = {"model": str(folder), "family": "qwen2_5_text", "view": "text", "language": "zh", "device": "cpu",
               "cpu_dtype": "bfloat16", "batch_size": 8}
    clips = {ref.name: ref for ref in refs}
    names = [ref.name for ref in refs]
    agent = build_agent(AgentSpec(name="zs", kind="llm", options=options),
                        AgentContext(features=None, labels={}, clips=clips))
    started = time.perf_counter()
    probs = agent.score(names)
    rate = len(names) / (time.perf_counter() - started)
    prior = agent.content_free_prior()
    agent.close()
    print(f"agent {size}: {rate:.2f} clips/s scoring (bf16, batch 8); pool {POOL / rate / 3600:.1f} h; content-free "
          f"prior " + " ".join(f"{label} {p:.2f}" for label, p in zip(LABELS, prior, strict=True)))
    calibrated = prior_correct(probs, prior)
    worried = LABELS.index("worried")

    def said(p: np.ndarray) -> str:
        return f"says worried {int((p.argmax(1) == worried).sum())}x (truth {int((y == worried).sum())})"

    rows = [(f"agent {size} zero-shot", [waf(y, probs.argmax(1))], said(probs)),
            (f"agent {size} content-free calibrated", [waf(y, calibrated.argmax(1))], said(calibrated)),
            (f"agent {size} training-fold prior",
             [waf(y, training_fold_prior(probs, y, stratified_folds(y, 5, s)).argmax(1)) for s in range(seeds)], "")]
    features = FeatureSet(names=names, blocks=[e5], masks=np.ones((len(names), 1), bool), extractors=["e5-bench"],
                          modalities=["text"])
    labels = {ref.name: ref.label for ref in refs}
    wafs, rate = [], 0.0
    for seed in range(incontext_seeds):
        order = sorted(names)
        fold_of = stratified_folds([label_index(labels[n]) for n in order], 5, seed)
        folds = FoldAssignment(names=tuple(order), labels=tuple(labels[n] for n in order), fold_of=fold_of, folds=5,
                               seed=seed)
        agent = build_agent(AgentSpec(name="icl", kind="llm", options={**options, "incontext_k": k}),
                            AgentContext(features=features, labels=labels, clips=clips, folds=folds))
        started = time.perf_counter()
        knn = agent.score(names)
        rate = len(names) / (time.perf_counter() - started)
        agent.close()
        wafs.append(waf(y, knn.argmax(1)))
    if wafs:
        rows.append((f"agent {size} in-context k={k} (other folds, e5)", wafs, f"{rate:.2f} clips/s (labelled; the "
                     f"pool costs 5x: one scoring per fold)"))
    return rows


def gpu_projection(folder: Path, lines: list[str], k: int) -> None:
    """Hours for the pool on one GPU, computed (not measured): 2 x parameters run x tokens FLOPs per clip at a stated
    sustained rate."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = h // config.num_attention_heads * config.num_key_value_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f                        # q, o, k, v and the SwiGLU MLP
    from llm.families import get_family
    from llm.incontext import examples_block
    from llm.requests import ClipMedia, RequestSettings, build_request

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    family, settings = get_family("qwen2_5_text"), RequestSettings(view="text", language="zh")
    before, after = LLMTextExtractor.prompt_words("zh")
    prompt = {"llm_text": [], "agent": [], f"agent in-context k={k}": []}
    for i, line in enumerate(lines):
        request = build_request(family, tokenizer, ClipMedia(name="c", audio=None, frames=None, transcript=line),
                                settings)
        shown = examples_block("zh", [(lines[(i + j + 1) % len(lines)], 0) for j in range(k)])
        prompt["llm_text"].append(count(before + line + after))
        prompt["agent"].append(count(request.prompt) + 2)                   # + the prefilled answer "情绪："
        prompt[f"agent in-context k={k}"].append(count(request.prompt) + 2 + count(shown))
    prompt = {name: float(np.mean(values)) for name, values in prompt.items()}
    used = {"llm_text": layer_of(0.67, layers), "agent": layers, f"agent in-context k={k}": layers}
    scorings = {"llm_text": 1, "agent": 1, f"agent in-context k={k}": 5}
    print(f"GPU projection (computed): 2 x params x tokens per clip, {SUSTAINED / 1e12:.0f} TFLOP/s sustained "
          f"(about a third of an H100/H200's 989 dense bf16 TFLOP/s: short padded rows); mean prompt tokens "
          + ", ".join(f"{name} {value:.0f}" for name, value in prompt.items()))
    for name in prompt:
        flops = 2 * per_layer * used[name] * prompt[name] * scorings[name]
        if name != "llm_text":
            flops += 2 * h * config.vocab_size                              # the output layer at the answer slot
        print(f"  {name}: {flops / 1e9:.0f} GFLOP per clip -> {SUSTAINED / flops:,.0f} clips/s, pool "
              f"{POOL * flops / SUSTAINED / 60:.1f} min")


def memory_probe(size: str, dtype: str) -> None:
    """Load the text agent of `size` in `dtype` on CPU as teacher-label does, score 16 demo lines, print peak RSS."""
    from llm.fetch import fetched
    from teacher.agents import build_agent
    from teacher.spec import AgentContext, AgentSpec

    refs = demo_lines("labelled", 120)[:16]
    options = {"model": str(fetched(size)), "family": "qwen2_5_text", "view": "text", "language": "zh",
               "device": "cpu", "cpu_dtype": dtype, "batch_size": 8}
    started = time.perf_counter()
    agent = build_agent(AgentSpec(name="m", kind="llm", options=options),
                        AgentContext(features=None, labels={}, clips={r.name: r for r in refs}))
    loaded, load_seconds = rss_gb(), time.perf_counter() - started
    started = time.perf_counter()
    agent.score([r.name for r in refs])
    print(f"memory {size} {dtype}: peak RSS {loaded:.2f} GB after loading ({load_seconds:.0f} s), {rss_gb():.2f} GB "
          f"after scoring 16 lines ({16 / (time.perf_counter() - started):.2f} clips/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="0.5b,1.5b", help="Registry sizes, comma-separated.")
    parser.add_argument("--seeds", type=int, default=5, help="Fold assignments (and student seeds), mean +- sd.")
    parser.add_argument("--extra-seeds", type=int, default=2, help="Fold assignments of the supplementary rows.")
    parser.add_argument("--incontext-seeds", type=int, default=1, help="Fold assignments for the in-context agent.")
    parser.add_argument("--k", type=int, default=4, help="In-context examples per clip.")
    parser.add_argument("--no-agent", action="store_true", help="Features only.")
    parser.add_argument("--layers", action="store_true", help="Also LR on other depths (one full-depth pass).")
    parser.add_argument("--both-blocks", action="store_true", help="Also the student on e5 and llm_text together.")
    parser.add_argument("--memory", help="SIZE:DTYPE, e.g. 1.5b:bfloat16: peak memory of the agent alone, then exit.")
    args = parser.parse_args()

    if args.memory:
        memory_probe(*args.memory.split(":"))
        return
    refs = demo_lines("labelled", 120)
    lines = [ref.transcript for ref in refs]
    from llm.fetch import fetched

    y = np.array([label_index(ref.label) for ref in refs])
    print(f"{len(refs)} demo transcripts, labels {np.bincount(y, minlength=6).tolist()}; {args.seeds} fold "
          f"assignments; load average {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    e5_model = E5Extractor()
    e5 = np.stack([e5_model.extract(None, line).vector for line in lines])  # type: ignore[arg-type]
    e5_rate = len(lines) / (time.perf_counter() - started)
    rows = [("LR  e5", linear_wafs(e5, y, args.seeds), f"{e5_rate:.1f} clips/s (1 thread)"),
            ("student e5", student_wafs([e5], y, args.seeds), "")]
    for size in args.models.split(","):
        folder = fetched(size)
        if folder is None:
            print(f"{size}: not fetched (python cli.py fetch-llm --size {size}); skipped")
            continue
        found, x = feature_rows(folder, size, lines, y, args.seeds, args.extra_seeds)
        rows += found
        if args.both_blocks:
            rows.append((f"student e5 + llm_text {size}", student_wafs([e5, x], y, args.seeds), "two blocks"))
        show(rows)
        if args.layers:
            rows += layer_rows(folder, size, lines, y, args.extra_seeds)
            show(rows[-len(DEPTHS):])
        if not args.no_agent:
            rows += agent_rows(folder, size, refs, y, e5, args.seeds, args.incontext_seeds, args.k)
        gpu_projection(folder, lines, args.k)
    print()
    show(rows)
    print(f"peak RSS {rss_gb():.1f} GB")


if __name__ == "__main__":
    main()
