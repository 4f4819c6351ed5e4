"""The demo corpus's subtitle lines without its media: the text benches' data.

Usage:
    labelled = demo_lines("labelled", 120)          # ClipRefs (path None) with label and transcript, as make-demo
    pool = demo_lines("unlabelled", 240)            # the pool's lines; label holds the hidden label
    write_text_corpus(Path("bench-out/corpus"), labelled)   # label-disdim.csv + label-transcription.csv

The lines, labels and names are exactly those `make-demo --labelled N --unlabelled M` writes (same plan and text
generators, seed 0); clips the demo breaks on purpose keep their transcript unless it is the broken part
(empty_transcript clips get none). Without media the clips carry status no_media, which a text view ignores.
"""

from __future__ import annotations

import csv
from pathlib import Path

from clips.dataset import ClipRef
from demo.plan import LABEL_CSV, TRANSCRIPTION_CSV, DemoConfig, clip_rngs, plan_split
from demo.text import transcript_line


def demo_lines(split: str, total: int, seed: int = 0) -> list[ClipRef]:
    """The demo's clips of `split` ("labelled" or "unlabelled") with their lines; empty-transcript clips left out."""
    sizes = {"labelled": total, "unlabelled": max(total, 12)}
    cfg = DemoConfig(labelled=sizes["labelled"] if split == "labelled" else 120,
                     unlabelled=sizes["unlabelled"] if split == "unlabelled" else 1080, seed=seed)
    refs = []
    for plan in plan_split(Path("."), split, total, cfg):  # type: ignore[arg-type]
        _, text_rng, _, _ = clip_rngs(seed, plan.split, plan.index)
        line, _ = transcript_line(plan.label, text_rng)
        if plan.broken == "empty_transcript":
            continue
        refs.append(ClipRef(name=plan.name, path=None, label=plan.label, transcript=line))
    return refs


def write_text_corpus(root: Path, labelled: list[ClipRef]) -> Path:
    """A MER2024-layout folder with only the label and transcript CSVs of `labelled`; returns `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LABEL_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "discrete"])
        writer.writerows([ref.name, ref.label] for ref in labelled)
    with open(root / TRANSCRIPTION_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "chinese"])
        writer.writerows([ref.name, ref.transcript] for ref in labelled)
    return root
