"""Build time, size and browser open time of the run report, at the demo's size and at the full MER-SEMI pool.

Usage:
    .venv/bin/python -m bench.report                              # 1,080 and 115,595 pool clips side by side
    .venv/bin/python -m bench.report --pools 115595 --root /tmp/r  # one size, keep the files
No media is decoded: each run is written directly in the files the report reads (status.csv, folds.csv, the agent
store with one LLM-like agent that stores label mass, pseudo-labels.csv, filters.json, a student's report.json and
oof.safetensors, a transcript per clip); the pool files are empty, so no key frame is cut (the demo's report
measures those: 1,076 key frames of 160-pixel clips in about 30 s of its 33 s on the shared 2 cores). Then the
real `build_report` runs, and headless Chromium (report.browser) opens the page from the file system: open time is
from navigation to the end of the page's script (clips.js parsed, the first page of rows drawn), then a sort by
confidence and a label filter are timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from clips.labels import LABELS, NUM_LABELS

AGENTS = ("audio", "visual", "text")
SUBTITLE = "我跟你讲，这件事明天再说，知道吗？"


def synthesise(root: Path, labelled: int, pool: int, seed: int = 0) -> Path:
    """Write a corpus and a run folder holding every file the report reads; returns the run folder."""
    from safetensors.numpy import save_file

    from clips.io import atomic_write_text
    from teacher.store import AgentStore

    rng = np.random.default_rng(seed)
    data, run = root / "data", root / "run"
    lab = [f"sample_{i:08d}" for i in range(labelled)]
    names = [f"samplenew3_{i:08d}" for i in range(pool)]
    y = rng.integers(0, NUM_LABELS, labelled)
    atomic_write_text(data / "label-disdim.csv", "name,discrete\n" + "".join(
        f"{n},{LABELS[c]}\n" for n, c in zip(lab, y, strict=True)))
    atomic_write_text(data / "transcription-merge.csv", "name,chinese\n" + "".join(
        f"{n},{SUBTITLE[: 8 + i % 10]}{i}\n" for i, n in enumerate(lab + names)))
    (data / "video-unlabeled").mkdir(parents=True, exist_ok=True)
    for name in names:
        (data / "video-unlabeled" / f"{name}.mp4").touch()
    flags = ("ok",) * 40 + ("no_face", "no_audio", "empty_transcript", "no_audio;no_video;unreadable")
    atomic_write_text(run / "features" / "status.csv", "name,status\n" + "".join(
        f"{n},{flags[i % len(flags)]}\n" for i, n in enumerate(lab + names)))
    fold_of = np.arange(labelled) % 5
    atomic_write_text(run / "folds.csv", "name,discrete,fold\n" + "".join(
        f"{n},{LABELS[c]},{k}\n" for n, c, k in zip(lab, y, fold_of, strict=True)))

    store = AgentStore(run / "agents")
    pool_probs = []
    for a, agent in enumerate(AGENTS):
        store.write_meta(agent, {"kind": "llm" if agent == "text" else "features", "labelled_scores": "out_of_fold"})
        probs = rng.dirichlet(np.full(NUM_LABELS, 0.4), labelled + pool).astype(np.float32)
        probs[:labelled] = 0.5 * probs[:labelled] + 0.5 * np.eye(NUM_LABELS, dtype=np.float32)[y]
        if agent == "visual":
            probs[labelled::9] = np.nan                    # clips without a face
        mass = rng.beta(8, 2, labelled + pool).astype(np.float32) if agent == "text" else None
        for begin in range(0, labelled + pool, 4096):
            part = slice(begin, begin + 4096)
            store.append(agent, (lab + names)[part], probs[part], mass=None if mass is None else mass[part])
        pool_probs.append(probs[labelled:])

    combined = np.nanmean(np.stack(pool_probs), axis=0)                  # (pool, 6)
    conf, label = combined.max(axis=1), combined.argmax(axis=1)
    rows, kept_per_fold = [], []
    for k in range(5):
        kept = np.flatnonzero(conf > np.quantile(conf, 0.9) - 0.01 * k)
        kept_per_fold.append({c: int((label[kept] == i).sum()) for i, c in enumerate(LABELS)})
        rows += [f"{k},{names[i]},{LABELS[label[i]]},{conf[i]:.4f},{conf[i]:.4f}," + ",".join(["0"] * 6) + "\n"
                 for i in kept]
    atomic_write_text(run / "pseudo" / "pseudo-labels.csv",
                      "fold,name,discrete,confidence,weight," + ",".join(f"p_{c}" for c in LABELS) + "\n"
                      + "".join(rows))
    point = {"kept": 1000, "coverage": 0.2, "precision": 0.8, "precision_low": 0.77, "precision_high": 0.83,
             "per_class": {c: {"kept": 150, "precision": 0.8, "precision_low": 0.7, "precision_high": 0.9,
                               "coverage": 0.2} for c in LABELS}}
    curve = [{**point, "value": v, "coverage": 0.1 * (i + 1), "precision": 0.9 - 0.05 * i} for i, v in
             enumerate((0.9, 0.8, 0.7, 0.6))]
    atomic_write_text(run / "pseudo" / "filters.json", json.dumps({
        "note": "synthetic", "calibration": {a: {"temperature": 1.2, "oof_waf": 0.5, "ece_before": 0.1,
                                                  "ece_after_cross_fitted": 0.05} for a in AGENTS},
        "chosen": point, "fixed_baseline": point, "fixed_precision_at_chosen_coverage": 0.75,
        "curves": {"fixed": curve, "class_topk": curve}}))
    student = run / "student"
    kept_mean = {c: int(np.mean([f[c] for f in kept_per_fold])) for c in LABELS}
    atomic_write_text(student / "report.json", json.dumps({
        "waf": 0.5, "accuracy": 0.5, "per_class_f1": {c: 0.5 for c in LABELS}, "kept": kept_mean,
        "labelled": labelled, "kept_per_fold": kept_per_fold, "hidden_waf": None,
        "applied_thresholds": [[float(np.quantile(conf, 0.9))] * 6 for _ in range(5)],
        "filter_on_held_out": point, "folds": [], "extractors": [],
        "config": {"data": str(data), "run": str(run), "use_pseudo": True, "filter": {}}}))
    oof = rng.dirichlet(np.ones(NUM_LABELS), labelled).astype(np.float32)
    save_file({"oof_probs": oof}, str(student / "oof.safetensors"))
    return run


def measure(root: Path, labelled: int, pool: int) -> dict:
    """Synthesise, build the report, open it in Chromium; returns the figures."""
    from report.browser import Browser, find_chromium
    from report.build import ReportConfig, build_report

    started = time.perf_counter()
    run = synthesise(root, labelled, pool)
    figures: dict = {"pool": pool, "synthesise_s": time.perf_counter() - started}
    summary = build_report(ReportConfig(run=run))
    figures.update(build_s=summary.seconds, page_mb=summary.page_bytes / 1e6, folder_mb=summary.bytes / 1e6,
                   **{f"{k}_s": v for k, v in summary.timings.items()})
    if find_chromium() is None:
        figures["open_s"] = float("nan")
        return figures
    with Browser(width=1440, height=1000) as browser:
        began = time.perf_counter()
        page = browser.open(summary.index, timeout=120)
        page.wait_for("document.body.dataset.ready === '1'", timeout=120)
        figures["open_wall_s"] = time.perf_counter() - began
        # from the start of navigation to the end of the page's script, as the page's own clock saw it
        figures["open_s"] = page.evaluate("window.REPORT_READY_MS") / 1000
        figures["script_s"] = page.evaluate("window.REPORT_SCRIPT_MS") / 1000
        figures["errors"] = len(page.errors)
        for name, action in (("sort_s", lambda: page.click("#clip-table th[data-key=conf]")),
                             ("filter_s", lambda: page.select("#f-label", "2"))):
            page.evaluate("window.__t = performance.now()")
            action()
            figures[name] = page.evaluate("performance.now() - window.__t") / 1000
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[1_080, 115_595])
    parser.add_argument("--labelled", type=int, default=5_030)
    parser.add_argument("--root", type=Path, help="Working folder (default: a temporary one, removed after).")
    args = parser.parse_args()
    results = []
    for pool in args.pools:
        labelled = min(args.labelled, max(120, pool // 9))
        if args.root:
            results.append(measure(args.root / f"pool-{pool}", labelled, pool))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                results.append(measure(Path(tmp), labelled, pool))
    keys = ["pool", "build_s", "read_s", "table_s", "csv_s", "frames_s", "sections_s", "write_s", "page_mb",
            "folder_mb", "open_s", "open_wall_s", "script_s", "sort_s", "filter_s", "errors"]
    print(f"{'':<14}" + "".join(f"{r['pool']:>14,}" for r in results))
    for key in keys[1:]:
        print(f"{key:<14}" + "".join(f"{r.get(key, float('nan')):>14.3f}" for r in results))


if __name__ == "__main__":
    main()
