"""LoRA on the text teacher, measured: out-of-fold WAF before and after `teacher-train --folds`, time per step, and
whether the fold adapters' pseudo-labels help the student.

Usage:
    nice -n 10 .venv/bin/python -m bench.text_lora --out bench-out/lora          # configs/teacher-text-lora-bench.yaml
    .venv/bin/python -m bench.text_lora --out bench-out/lora --pool 240 --seeds 3 --config other.yaml

Data: the demo's labelled subtitle lines (bench.text_corpus, exactly make-demo's 118) as a text-only corpus, and
`--pool` lines of the demo's unlabelled set with their hidden labels. Steps:
  1. `teacher_train` with the config's `folds` on the corpus (the run folder's fold assignment): fold k's adapter
     trains on the other folds; its held-out WAF before (adapter off) and after is fold k's, so both are out of fold.
  2. Each fold adapter scores the pool; the base model (no adapter) scores it once.
  3. The student on e5 features of the labelled lines and the pool, 5-fold on the same assignment: labelled only,
     + the fold adapters' pseudo-labels (fold k's student trains only on fold k's adapter's labels), + the base
     model's; a pseudo-label is kept when its probability is at least 0.5 (more likely than the other five
     together, fixed, not tuned). Mean +- sd over --seeds student seeds; the pool's pseudo-label accuracy too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from bench.text_corpus import demo_lines, write_text_corpus
from clips.config import load_config
from clips.folds import run_folds
from clips.labels import label_index
from features.text import E5Extractor
from student.train import StudentConfig, train_student
from teacher.finetune import TeacherTrainConfig, teacher_train
from teacher.llm_agent import LLMAgent

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "teacher-text-lora-bench.yaml"
KEEP = 0.5


def pool_scores(cfg: TeacherTrainConfig, pool, adapters: list[Path | None]) -> np.ndarray:
    """(len(adapters), pool, 6) probabilities of the pool lines under each adapter (None: the base model)."""
    clips = {ref.name: ref for ref in pool}
    out = []
    for adapter in adapters:
        options = dataclasses.replace(cfg.teacher, adapter=str(adapter) if adapter else None)
        agent = LLMAgent("bench", options, clips)
        try:
            out.append(agent.score([ref.name for ref in pool]))
        finally:
            agent.close()
    return np.stack(out)


def student_wafs(x: np.ndarray, y: np.ndarray, fold_of: np.ndarray, pseudo: np.ndarray | None, seeds: int
                 ) -> list[float]:
    """5-fold student WAF on e5 rows `x` (labelled first, then the pool), with (K, pool, 6) per-fold pseudo
    probabilities (one array per fold; the same array K times for a fold-free teacher) or none."""
    n = len(y)
    targets, weights, labelled, folds, rows = [np.eye(6, dtype=np.float32)[y]], [np.ones(n)], [np.ones(n, bool)], \
        [fold_of], [np.arange(n)]
    if pseudo is not None:
        for k, probs in enumerate(pseudo):
            kept = np.flatnonzero(probs.max(1) >= KEEP)
            targets.append(np.eye(6, dtype=np.float32)[probs[kept].argmax(1)])
            weights.append(np.ones(len(kept)))
            labelled.append(np.zeros(len(kept), bool))
            folds.append(np.full(len(kept), k))
            rows.append(n + kept)
    wafs = []
    for seed in range(seeds):
        result = train_student([x], np.ones((len(x), 1), bool), np.concatenate(targets),
                               np.concatenate(weights).astype(np.float32), np.concatenate(labelled),
                               StudentConfig(device="cpu", seed=seed, folds=int(fold_of.max()) + 1), progress=False,
                               fold_of=np.concatenate(folds), row_of=np.concatenate(rows))
        wafs.append(result.scores.waf)
    return wafs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Bench folder (corpus, run, adapters, report).")
    parser.add_argument("--config", type=Path, default=CONFIG, help="teacher-train config of the bench.")
    parser.add_argument("--pool", type=int, default=240, help="Demo pool lines pseudo-labelled.")
    parser.add_argument("--seeds", type=int, default=3, help="Student seeds (mean +- sd).")
    args = parser.parse_args()

    labelled, pool = demo_lines("labelled", 120), demo_lines("unlabelled", args.pool)
    corpus = write_text_corpus(args.out / "corpus", labelled)
    cfg = load_config(TeacherTrainConfig, args.config, {"data": corpus, "out": args.out / "teacher",
                                                        "run": args.out / "run"})
    started = time.perf_counter()
    report = teacher_train(cfg)
    train_seconds = time.perf_counter() - started
    folds = [json.loads((cfg.out / f"fold_{k}" / "report.json").read_text()) for k in range(cfg.folds)]
    steps = sum(len(f["losses"]) for f in folds)
    print(f"teacher-train --folds {cfg.folds}: {steps} optimiser steps in {train_seconds:.0f} s "
          f"({train_seconds / steps:.1f} s per step of {cfg.batch_size * cfg.grad_accum} lines, load and held-out "
          "scoring included)")
    for k, fold in enumerate(folds):
        print(f"  fold {k}: held-out WAF {fold['waf_before']:.4f} -> {fold['waf']:.4f}  loss "
              f"{fold['losses'][0]:.3f} -> {np.mean(fold['losses'][-3:]):.3f}")
    before, after = [f["waf_before"] for f in folds], [f["waf"] for f in folds]
    print(f"out-of-fold WAF over folds: base {np.mean(before):.4f} +- {np.std(before, ddof=1):.4f}, "
          f"LoRA {np.mean(after):.4f} +- {np.std(after, ddof=1):.4f} (report: {report.waf_before:.4f} -> "
          f"{report.waf:.4f})")

    started = time.perf_counter()
    adapters = [cfg.out / f"fold_{k}" / "adapter" for k in range(cfg.folds)]
    probs = pool_scores(cfg, pool, [None, *adapters])                     # (1 + K, pool, 6)
    print(f"pool scoring: {len(pool) * (1 + cfg.folds)} lines in {time.perf_counter() - started:.0f} s")
    truth = np.array([label_index(ref.label) for ref in pool])
    for name, p in (("base", probs[:1]), ("LoRA folds", probs[1:])):
        kept = p.max(-1) >= KEEP
        right = (p.argmax(-1) == truth) & kept
        print(f"  {name}: pool pseudo-labels kept {kept.mean():.3f}, accuracy of the kept "
              f"{right.sum() / max(kept.sum(), 1):.3f}")

    e5 = E5Extractor()
    x = np.stack([e5.extract(None, ref.transcript).vector for ref in [*labelled, *pool]])  # type: ignore[arg-type]
    y = np.array([label_index(ref.label) for ref in labelled])
    fold_of = run_folds(cfg.run, {r.name: r.label for r in labelled}, cfg.folds, cfg.fold_seed).of(
        [r.name for r in labelled])
    rows = [("student on e5, labelled only", student_wafs(x, y, fold_of, None, args.seeds)),
            ("+ base model pseudo-labels", student_wafs(x, y, fold_of, np.repeat(probs[:1], cfg.folds, 0),
                                                        args.seeds)),
            ("+ LoRA fold pseudo-labels", student_wafs(x, y, fold_of, probs[1:], args.seeds))]
    print(f"{'student (same folds)':<36}{'WAF':>18}")
    for name, wafs in rows:
        print(f"{name:<36}{np.mean(wafs):>10.4f} +- {np.std(wafs, ddof=1):.4f}")


if __name__ == "__main__":
    main()
