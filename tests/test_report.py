"""The run report: a hand-made partial run (no browser needed), then the demo's report opened in headless Chromium.

The browser tests carry the `browser` marker and skip when no chromium is installed (Debian: apt-get install -y
chromium; .ci/run installs it). They build one small demo run (about 2-3 minutes on 2 cores): the demo stage writes
the report, a distill --report --seeds 2 adds an ablation, and `python cli.py report` rebuilds the page. A
screenshot of each section is saved in the test's tmp folder.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from clips.labels import LABELS
from report.browser import Browser, find_chromium
from report.build import ReportConfig, build_report
from teacher.store import AgentStore

MARKUP = '<script>window.injected = 1</script><b class="injected">bold</b> & 你好'
SECTIONS = ("corpus", "agents", "filter", "pseudo", "student", "run")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def clips_data(report: Path) -> dict:
    """window.REPORT as clips.js defines it."""
    text = (report / "clips.js").read_text(encoding="utf-8")
    literal = re.fullmatch(r"window\.REPORT = JSON\.parse\((.*)\);\n", text, re.S).group(1)
    return json.loads(json.loads(literal))


# ------------------------------------------------------------------ a partial run, no browser

@pytest.fixture
def partial_run(tmp_path: Path) -> Path:
    """A run with clip statuses, folds and two agents, but no filter, pseudo-labels, student or dataset."""
    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    labelled = [f"lab_{i}" for i in range(12)]
    pool = [f"pool_{i}" for i in range(7)] + ["<img src=x onerror=alert(1)>"]
    statuses = {n: "ok" for n in labelled + pool}
    statuses["pool_1"] = "no_audio;no_video;unreadable"
    statuses["<img src=x onerror=alert(1)>"] = "no_face"
    (run / "features" / "status.csv").write_text(
        "name,status\n" + "".join(f'"{n}",{s}\n' for n, s in statuses.items()), encoding="utf-8")
    (run / "folds.csv").write_text("name,discrete,fold\n" + "".join(
        f"{n},{LABELS[i % 6]},{i % 2}\n" for i, n in enumerate(labelled)), encoding="utf-8")
    store = AgentStore(run / "agents")
    rng = np.random.default_rng(0)
    for agent in ("audio", "text"):
        probs = rng.dirichlet(np.ones(6), size=len(labelled) + len(pool)).astype(np.float32)
        if agent == "audio":
            probs[len(labelled) + 1] = np.nan        # the unreadable clip: no audio evidence
        store.write_meta(agent, {"kind": "features", "labelled_scores": "out_of_fold"})
        store.append(agent, labelled + pool, probs)
    return run


def test_a_partial_run_gets_a_page_that_says_what_is_missing(partial_run: Path):
    summary = build_report(ReportConfig(run=partial_run))
    page = summary.index.read_text(encoding="utf-8")
    assert summary.index == partial_run / "report" / "index.html"
    assert summary.rows == 8 and summary.frames == 0
    for missing in ("pseudo/filters.json and a distill with pseudo-labels", "a student (run `distill` first)",
                    "pseudo/pseudo-labels.csv"):
        assert f"not in this run: {missing}" in page
    # untrusted names are escaped wherever the page shows them
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert '<span data-count="broken">2</span>' in page
    data = clips_data(summary.index.parent)
    # without the dataset the pool is the stored agents' non-labelled clips, sorted
    assert data["n"] == 8 and data["name"] == ["<img src=x onerror=alert(1)>"] + [f"pool_{i}" for i in range(7)]
    assert data["agents"] == ["audio", "text"]
    assert set(data["reasonText"]) == {"no pseudo-label filter ran in this run"}
    # the unreadable clip has no audio evidence: 255 marks it in the packed probabilities
    import base64

    packed = np.frombuffer(base64.b64decode(data["probs"]), dtype=np.uint8).reshape(8, 2, 6)
    assert (packed[2, 0] == 255).all() and (packed[2, 1] <= 200).all()
    assert abs(packed[0, 1].sum() / 200 - 1.0) < 0.03
    table = rows(summary.index.parent / "csv" / "clips.csv")
    assert [r["name"] for r in table] == data["name"]
    assert table[2]["audio_p_neutral"] == "" and table[2]["status"] == "no_audio;no_video;unreadable"


def test_report_config_and_a_folder_that_is_no_run(tmp_path: Path):
    with pytest.raises(ValueError, match="frames=-1.*page_rows=0"):
        ReportConfig(run=tmp_path, frames=-1, page_rows=0)
    result = CliRunner().invoke(main, ["report", "--run", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "not a run folder" in result.output


# ------------------------------------------------------------------ the demo's report in a browser

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="no chromium on PATH (Debian: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small demo run whose report the demo stage wrote, plus an ablation student, rebuilt by `cli.py report`."""
    from demo.corpus import make_demo
    from demo.plan import DemoConfig
    from demo.stage import DemoRunConfig, run_demo
    from student.distill import DistillConfig, distill
    from student.train import StudentConfig

    root = tmp_path_factory.mktemp("report-demo")
    corpus = DemoConfig(labelled=48, unlabelled=54, seconds=1.0, fps=5, size=96, broken_per_kind=1, seed=1)
    make_demo(root / "data", corpus, progress=False)
    # one pool clip's subtitle holds markup: the page must show it as text
    merge = root / "data" / "transcription-merge.csv"
    lines = merge.read_text(encoding="utf-8").splitlines()
    target = next(line.split(",")[0] for line in lines[1:] if line.startswith("samplenew3_"))
    merge.write_text("\n".join([lines[0], *[f'{target},"{MARKUP.replace(chr(34), chr(34) * 2)}"'
                                            if line.startswith(target + ",") else line for line in lines[1:]]])
                     + "\n", encoding="utf-8")
    logged: list[str] = []
    result = run_demo(DemoRunConfig(out=root, corpus=corpus, student=StudentConfig(epochs=3), progress=False),
                      log=logged.append)
    run = root / "run"
    distill(DistillConfig(data=root / "data", run=run, student=StudentConfig(epochs=2), report=True, seeds=2,
                          out=run / "student-ablation", progress=False))
    output = CliRunner().invoke(main, ["report", "--run", str(run), "--hidden-labels",
                                       str(root / "data" / "hidden-labels.csv")], catch_exceptions=False).output
    return {"root": root, "run": run, "result": result, "logged": logged, "cli": output, "target": target}


def test_the_demo_writes_the_report_and_prints_its_path(demo_run: dict):
    index = demo_run["run"] / "report" / "index.html"
    assert demo_run["result"].report == index
    assert f"report: {index}" in demo_run["logged"]
    assert f"report: {index}" in demo_run["cli"]
    assert index.is_file() and (index.parent / "clips.js").is_file()
    assert len(list((index.parent / "frames").glob("*.jpg"))) > 40
    page = index.read_text(encoding="utf-8")
    # self-contained: nothing is fetched from the network
    assert not re.search(r'(src|href)="(https?:)?//', page)


@pytest.fixture(scope="module")
def page(demo_run: dict):
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    with Browser(width=1440, height=1000) as browser:
        opened = browser.open(demo_run["run"] / "report" / "index.html")
        opened.wait_for("document.body.dataset.ready === '1'")
        yield opened


def table_rows(page, table: str = "#clip-table") -> list[dict]:
    return page.evaluate(f"""[...document.querySelectorAll('{table} tbody tr')].map(tr => ({{
        name: tr.querySelector('.cname').textContent, sub: tr.querySelector('.sub').textContent,
        combined: tr.querySelector('td.comb').textContent, conf: tr.querySelector('td.conf').textContent,
        row: Number(tr.dataset.row)}}))""")


@pytest.mark.browser
@needs_chromium
def test_every_section_is_there_without_console_errors(page, demo_run: dict, tmp_path: Path):
    assert page.errors == []
    page.evaluate("document.querySelector('nav').style.position = 'static'")
    for key in SECTIONS:
        text = page.evaluate(f"document.getElementById('{key}').innerText")
        assert len(text) > 200, key
        assert "not in this run" not in text, (key, text[:300])
        page.screenshot(f"#{key}", tmp_path / f"{key}.png")
    page.screenshot("#disagree-table", tmp_path / "disagree.png")
    assert all((tmp_path / f"{key}.png").stat().st_size > 5000 for key in SECTIONS)
    data = clips_data(demo_run["run"] / "report")
    assert len(table_rows(page)) == min(50, data["n"])
    scored = sum(d >= 0 for d in data["dis"])
    assert len(table_rows(page, "#disagree-table")) == len(data["disagree"]) == min(50, scored)
    # the disagreement view is ordered by disagreement, highest first
    shown = [data["dis"][r["row"]] for r in table_rows(page, "#disagree-table")]
    assert shown == sorted(shown, reverse=True) and shown[0] > shown[-1]
    # frames load (face crops where a face was found)
    loaded = page.evaluate("[...document.querySelectorAll('#clip-table img')].filter(i => i.naturalWidth > 0).length")
    assert loaded >= 40
    assert page.evaluate("document.querySelectorAll('#agents img').length") >= 3


@pytest.mark.browser
@needs_chromium
def test_sorting_by_confidence_reorders_the_rows(page):
    before = [r["name"] for r in table_rows(page)]
    page.click("#clip-table th[data-key=conf]")
    after = table_rows(page)
    confs = [float(r["conf"]) for r in after]
    assert confs == sorted(confs, reverse=True) and [r["name"] for r in after] != before
    page.click("#clip-table th[data-key=conf]")
    confs = [float(r["conf"]) for r in table_rows(page)]
    assert confs == sorted(confs)
    assert page.errors == []


@pytest.mark.browser
@needs_chromium
def test_a_label_filter_shows_only_that_label(page, demo_run: dict):
    table = rows(demo_run["run"] / "report" / "csv" / "clips.csv")
    label = max(LABELS, key=lambda lab: sum(r["combined"] == lab for r in table))
    expected = sum(r["combined"] == label for r in table)
    page.select("#f-label", str(LABELS.index(label)))
    shown = table_rows(page)
    assert {r["combined"] for r in shown} == {label} and len(shown) == min(expected, 50)
    assert page.evaluate("document.getElementById('clip-count').textContent").endswith(
        f"of {expected} clips (filtered from {len(table)})")
    page.select("#f-label", "")
    page.select("#f-kept", "kept")
    kept = {r["name"] for r in rows(demo_run["run"] / "pseudo" / "pseudo-labels.csv")}
    assert page.evaluate("document.getElementById('clip-count').textContent").endswith(
        f"of {len(kept)} clips (filtered from {len(table)})")
    assert {r["name"] for r in table_rows(page)} <= kept
    page.select("#f-kept", "")
    assert page.errors == []


@pytest.mark.browser
@needs_chromium
def test_counts_on_the_page_equal_report_json_and_the_csv(page, demo_run: dict):
    run = demo_run["run"]
    report = json.loads((run / "student-ablation" / "report.json").read_text())
    pseudo = rows(run / "pseudo" / "pseudo-labels.csv")

    def count(key: str) -> str:
        return page.evaluate(f"document.querySelector('[data-count=\"{key}\"]').textContent")

    # the filter section shows the latest distill with pseudo-labels, which wrote pseudo-labels.csv
    assert "from student-ablation/report.json" in page.evaluate("document.getElementById('filter').innerText")
    for label in LABELS:
        assert int(count(f"kept-{label}")) == report["kept"][label]
    assert int(count("kept-total")) == sum(report["kept"].values())
    assert int(count("pseudo-rows")) == len(pseudo)
    assert int(count("pseudo-clips")) == len({r["name"] for r in pseudo})
    for k, fold_counts in enumerate(report["kept_per_fold"]):
        assert int(count(f"pseudo-fold-{k}")) == sum(fold_counts.values()) == sum(r["fold"] == str(k) for r in pseudo)
    students = page.evaluate("[...document.querySelectorAll('#student table')[0].querySelectorAll('tbody tr')]"
                             ".map(tr => tr.cells[0].textContent)")
    assert students == ["student-ablation", "student-labelled", "student-pseudo"]
    for s, name in enumerate(students):
        stored = json.loads((run / name / "report.json").read_text())
        assert count(f"student-waf-{s}") == f"{stored['waf']:.4f}"
        assert int(count(f"student-kept-{s}")) == sum(stored["kept"].values())
    statuses = rows(run / "features" / "status.csv")
    assert int(count("clips")) == len(statuses)
    assert int(count("status-ok")) == sum(r["status"] == "ok" for r in statuses)
    # the ablation: one row per variant, mean +- sd over the 2 seeds
    ablation = json.loads((run / "student-ablation" / "ablation.json").read_text())
    cells = page.evaluate("[...document.querySelectorAll('#student table.ablation tbody tr')]"
                          ".map(tr => [tr.cells[0].textContent, tr.cells[4].textContent])")
    assert [c[0] for c in cells] == [r["variant"] for r in ablation["rows"]]
    for (_, waf), row in zip(cells, ablation["rows"], strict=True):
        assert waf == f"{np.mean(row['wafs']):.4f} ± {np.std(row['wafs'], ddof=1):.4f} (2 seeds)"


@pytest.mark.browser
@needs_chromium
def test_a_confusion_cell_lists_its_clips(page, demo_run: dict):
    count = page.evaluate("Number(document.querySelector('a.cm-cell[data-student=\"1\"][data-true=\"0\"]"
                          "[data-pred=\"0\"]').textContent)")
    page.click('a.cm-cell[data-student="1"][data-true="0"][data-pred="0"]')
    listed = page.evaluate("document.querySelectorAll('#cm-clips-1 table.cm-list tr').length - 1")
    assert count > 0 and listed == count
    assert page.evaluate("document.querySelector('#cm-clips-1 .cm-head').textContent").startswith(
        f"{count} labelled clip(s): true neutral, predicted neutral")
    assert page.errors == []


@pytest.mark.browser
@needs_chromium
def test_a_subtitle_holding_markup_is_shown_as_text(page, demo_run: dict):
    page.evaluate("(() => { const box = document.getElementById('f-text'); box.value = "
                  f"{json.dumps(demo_run['target'])}; box.dispatchEvent(new Event('input')); }})()")
    shown = table_rows(page)
    assert [r["name"] for r in shown] == [demo_run["target"]]
    assert shown[0]["sub"] == MARKUP
    assert page.evaluate("typeof window.injected") == "undefined"
    assert page.evaluate("document.querySelectorAll('b.injected').length") == 0
    assert page.errors == []


def test_why_each_pool_clip_was_kept_or_dropped(tmp_path: Path):
    """Hand-set agent probabilities through each step of the filter; the reasons name the step each clip fails."""
    run = tmp_path / "run"
    labelled = [f"lab_{i}" for i in range(10)]
    (run / "features").mkdir(parents=True)
    (run / "folds.csv").write_text("name,discrete,fold\n" + "".join(
        f"{n},{LABELS[i % 6]},{i % 2}\n" for i, n in enumerate(labelled)), encoding="utf-8")

    def dist(**p: float) -> list[float]:
        rest = (1.0 - sum(p.values())) / (6 - len(p))
        return [p.get(label, rest) for label in LABELS]

    pool = {  # name: (audio, text)
        "c_kept": (dist(happy=0.9), dist(happy=0.9)),
        "c_one_agent": ([np.nan] * 6, dist(sad=0.9)),
        "c_disagree": (dist(sad=0.9, neutral=0.06), dist(happy=0.9, neutral=0.06)),
        "c_low": (dist(neutral=0.5), dist(neutral=0.5)),
        "c_no_class": (dist(surprise=0.9), dist(surprise=0.9)),
        "c_quota": (dist(angry=0.95), dist(angry=0.95)),
    }
    store = AgentStore(run / "agents")
    uniform = np.full((len(labelled), 6), 1 / 6, np.float32)
    for a, agent in enumerate(("audio", "text")):
        store.write_meta(agent, {"kind": "features", "labelled_scores": "out_of_fold"})
        store.append(agent, labelled + list(pool), np.concatenate([uniform, np.array([v[a] for v in pool.values()],
                                                                                    np.float32)]))
    (run / "pseudo").mkdir()
    (run / "pseudo" / "pseudo-labels.csv").write_text(
        "fold,name,discrete,confidence\n0,c_kept,happy,0.99\n1,c_kept,happy,0.98\n", encoding="utf-8")
    (run / "pseudo" / "filters.json").write_text(json.dumps({"calibration": {
        a: {"temperature": 1.0, "oof_waf": 0.5} for a in ("audio", "text")}}), encoding="utf-8")
    thresholds = [0.9, 0.5, 0.6, 0.6, 0.6, float("inf")]
    (run / "student").mkdir()
    (run / "student" / "report.json").write_text(json.dumps({
        "waf": 0.4, "kept": {label: 0 for label in LABELS}, "kept_per_fold": [{"happy": 1}, {"happy": 1}],
        "applied_thresholds": [thresholds, thresholds], "config": {"use_pseudo": True, "filter": {}}}))

    from report.gather import read_run
    from report.table import clip_table

    table = clip_table(read_run(run))
    why = dict(zip(table.names, table.reasons, strict=True))
    assert why["c_kept"] == "kept as happy by 2 of 2 student folds"
    assert why["c_one_agent"] == "dropped: 1 agent(s) with evidence, the filter needs 2 (no evidence from audio)"
    assert why["c_disagree"].startswith("dropped: the agents disagree on happy (audio sad, text happy;")
    assert why["c_low"] == ("dropped: confidence below the neutral threshold 0.900 (median of the folds' applied "
                            "thresholds)")
    assert why["c_no_class"] == "dropped: the filter kept no surprise clip in any fold"
    assert why["c_quota"].startswith("dropped: passes the gate as angry")
    i = table.names.index("c_kept")
    assert table.kept_folds[i] == 2 and LABELS[table.kept_label[i]] == "happy"
    # product of experts of two happy-0.9 agents: 0.81 / (0.81 + 5 * 0.0004)
    assert table.conf[i] == pytest.approx(0.81 / (0.81 + 5 * 0.02 ** 2), abs=1e-5)
    assert table.disagreement[i] == pytest.approx(0.0, abs=1e-6)
    assert bool(table.split[table.names.index("c_disagree")]) and not table.split[i]
