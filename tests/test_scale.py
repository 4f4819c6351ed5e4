"""The scale bench's code path at test size: synthesised features and agent outputs, then the real load_features,
`distill` and `submit`, each stage in its own process and under 4 GB peak memory (bench/scale.py runs 115,595)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bench.scale import bench, names_of
from clips.run import RunPaths
from features import DEFAULT_EXTRACTORS

pytestmark = pytest.mark.slow
LABELLED, POOL = 1_000, 15_000
PEAK_LIMIT_MIB = 4096


def test_every_stage_at_test_scale_fits_in_4_gb(tmp_path: Path) -> None:
    records = {record["stage"]: record for record in bench(tmp_path, LABELLED, POOL, epochs=1, echo=lambda _: None)}

    for stage, record in records.items():
        assert record["peak_mib"] < PEAK_LIMIT_MIB, (stage, record)
    assert records["load_cold"]["files"] == len(DEFAULT_EXTRACTORS) * (LABELLED + POOL)
    # warm: one consolidated file per extractor instead of 48,000 clip files
    assert records["load_warm"]["seconds"] < records["load_cold"]["seconds"]
    assert records["submit"]["predictions"] == POOL
    # every 50th clip was synthesised without any modality, so it falls back to the class prior
    assert records["submit"]["class_prior"] == sum(1 for i in range(LABELLED, LABELLED + POOL) if i % 50 == 7)
    with RunPaths(tmp_path / "run").submission.open(newline="", encoding="utf-8") as handle:
        submitted = [row["name"] for row in csv.DictReader(handle)]
    assert submitted == names_of(LABELLED, POOL)[1]
