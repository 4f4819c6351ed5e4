"""The report's sections as HTML: corpus, agents, filter, pseudo-labels, student, run.

Usage:
    html = corpus_section(run, out)         # run: report.gather.RunData, out: the report folder (figures, CSVs)

Every piece of text from the run (clip names, subtitles, statuses, config values) goes through `esc`; a section
whose source the run lacks says "not in this run" and why.
"""

from __future__ import annotations

import csv
import html
import importlib.metadata
import io
import json
import os
import platform
from pathlib import Path

import numpy as np

from clips.dataset import read_label_csv
from clips.io import atomic_write_text, load_npz
from clips.labels import LABELS
from clips.scoring import score
from clips.status import STATUSES, parse_status
from pseudo.measure import calibrated_held_out, fold_calibrations
from report import plots
from report.gather import RunData, StudentData, finite
from report.table import ClipTable

# what each status flag means, for people reading the corpus table (clips.status.STATUSES order)
MEANING = {
    "ok": "every modality decoded and extracted",
    "no_audio": "no audio stream, or it decodes to nothing",
    "no_video": "no video stream (audio-only file)",
    "no_face": "video present but no face found on any sampled frame",
    "empty_transcript": "transcript missing, empty or garbage",
    "unreadable": "the file cannot be opened or decoded at all",
    "no_media": "the name has no media file",
    "truncated": "decoding stopped early on an error; what decoded is kept",
    "asr_transcript": "no usable transcript; the text features read Whisper's transcript of the audio",
}
# statuses that are a fallback rather than a fault: such clips are not listed as broken
NOT_BROKEN = {"ok", "asr_transcript"}
# broken clips listed on the page (the rest are in csv/broken.csv)
LISTED_BROKEN = 300


def esc(value) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def absent(text: str) -> str:
    return f'<p class="absent">not in this run: {esc(text)}</p>'


def number(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if finite(value) else "–"


def interval(point: dict | None) -> str:
    if not point or not finite(point.get("precision")):
        return "–"
    return (f"{point['precision']:.3f} [{number(point.get('precision_low'))}, "
            f"{number(point.get('precision_high'))}]")


def section(key: str, title: str, body: str, notes: list[str] | None = None) -> str:
    extra = "".join(f'<p class="note">{esc(n)}</p>' for n in notes or [])
    return f'<section class="part" id="{key}"><h2>{esc(title)}</h2>{body}{extra}</section>\n'


def table_html(head: list[str], rows: list[list[str]], cls: str = "", numeric_from: int = 1) -> str:
    """A table of already-escaped cells; columns from `numeric_from` on are right-aligned."""
    ths = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{h}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>'


def figure(src: str, caption: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="{esc(src)}" alt="{esc(caption)}"{size}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- corpus

def _extractor_errors(run: RunData, names: list[str]) -> dict[str, list[str]]:
    """name -> ["extractor: error message"] from the feature cache files of `names` (the broken clips listed)."""
    errors: dict[str, list[str]] = {}
    folders = [p for p in sorted((run.run / "features").glob("*")) if (p / "meta.json").is_file()]
    for name in names:
        for folder in folders:
            path = folder / f"{name}.npz"
            if not path.is_file():
                continue
            try:
                message = str(load_npz(path).get("error", ""))
            except (OSError, ValueError):
                message = "cache file unreadable"
            if message:
                errors.setdefault(name, []).append(f"{folder.name.rsplit('-', 1)[0]}: {message}")
    return errors


def why_broken(status: str) -> str:
    """The meaning of a clip's status flags (an unreadable file's missing audio and video go without saying)."""
    flags = parse_status(status)
    if "unreadable" in flags:
        flags = tuple(f for f in flags if f not in ("no_audio", "no_video"))
    return "; ".join(MEANING[f] for f in flags)


def corpus_section(run: RunData, out: Path) -> str:
    """Clips by status, labelled and pool, and the broken clips with why."""
    if not run.statuses:
        return section("corpus", "Corpus", absent("features/status.csv (run `features` first)"),
                       run.notes.get("corpus"))
    labelled = set(run.labelled)
    counts = {flag: [0, 0] for flag in STATUSES}
    for name, text in run.statuses.items():
        flags = parse_status(text) or ("ok",)
        for flag in flags:
            counts[flag][0 if name in labelled else 1] += 1
    rows = [[f'<span data-status="{flag}">{esc(flag)}</span>', esc(MEANING[flag]), str(c[0]), str(c[1]),
             f'<span data-count="status-{flag}">{c[0] + c[1]}</span>']
            for flag, c in counts.items() if c[0] + c[1] or flag == "ok"]
    broken = sorted((n for n, t in run.statuses.items() if not set(parse_status(t) or ("ok",)) <= NOT_BROKEN),
                    key=lambda n: (n not in labelled, n))
    listed = broken[:LISTED_BROKEN]
    errors = _extractor_errors(run, listed)
    write_csv(out / "csv" / "broken.csv", ["name", "set", "status", "why"],
              [[n, "labelled" if n in labelled else "pool", run.statuses[n],
                why_broken(run.statuses[n])] for n in broken])
    body = (f'<p class="lead"><span data-count="clips">{len(run.statuses)}</span> clips in features/status.csv: '
            f"{len(labelled & set(run.statuses))} labelled, {len(set(run.statuses) - labelled)} pool. "
            "A clip with several flags counts under each.</p>"
            + table_html(["status", "meaning", "labelled", "pool", "clips"], rows, numeric_from=2))
    if broken:
        broken_rows = [[f'<span class="cname">{esc(n)}</span>', "labelled" if n in labelled else "pool",
                        esc(run.statuses[n]),
                        esc(why_broken(run.statuses[n]))
                        + "".join(f'<div class="note">{esc(e)}</div>' for e in errors.get(n, []))]
                       for n in listed]
        more = (f'<p class="note">{len(broken) - len(listed)} more in <a href="csv/broken.csv">csv/broken.csv</a>'
                "</p>" if len(broken) > len(listed) else "")
        body += (f'<h3>Broken clips (<span data-count="broken">{len(broken)}</span>)</h3>'
                 '<p class="lead">Each still gets a prediction: its missing modalities are zero vectors with a mask, '
                 'and a clip with none falls back to the class prior. All of them in '
                 '<a href="csv/broken.csv">csv/broken.csv</a>.</p>'
                 + table_html(["clip", "set", "status", "why"], broken_rows, cls="broken", numeric_from=9) + more)
    else:
        body += '<p class="lead">No broken clip: <span data-count="broken">0</span>.</p>'
    return section("corpus", "Corpus", body, run.notes.get("corpus"))


# ---------------------------------------------------------------- agents

def agents_section(run: RunData, out: Path) -> str:
    """Per agent: out-of-fold WAF and per-class F1, reliability before and after calibration, label mass; pairwise
    agreement."""
    if not run.agents:
        return section("agents", "Agents", absent("agents/ (run `teacher-label` first)"), run.notes.get("agents"))
    calibration = (run.filters or {}).get("calibration") or {}
    labels = run.labels
    have_folds = len(labels) and run.folds > 1
    stacked = np.stack([a.labelled for a in run.agents])                        # (agents, labelled, 6)
    # the calibration distill applied: with the label prior unless filters.json says it corrected none
    prior = not calibration or any(v.get("prior_weights") is not None for v in calibration.values())
    after = (calibrated_held_out(stacked, run.fold_of, fold_calibrations(stacked, labels, run.fold_of, prior=prior))
             if have_folds else None)
    rows, figures, csv_rows = [], [], []
    for a, agent in enumerate(run.agents):
        has = ~np.isnan(agent.labelled).any(axis=1)
        stored = calibration.get(agent.name, {})
        scores = score(labels[has], agent.labelled[has].argmax(axis=1)) if has.any() else None
        waf = stored.get("oof_waf", scores.waf if scores else float("nan"))
        f1 = scores.per_class_f1 if scores else {}
        kind = agent.meta.get("kind", "?")
        how = agent.meta.get("labelled_scores", "?")
        rows.append([esc(agent.name), esc(f"{kind} ({agent.meta.get('modality') or agent.meta.get('view') or '-'})"),
                     esc(how), f'<span data-count="agent-waf-{esc(agent.name)}">{number(waf)}</span>',
                     number(stored.get("oof_waf_prior")),
                     *[number(f1.get(label)) for label in LABELS], str(int(has.sum())),
                     number(stored.get("ece_before")), number(stored.get("ece_after_cross_fitted")),
                     number(stored.get("temperature"), 2)])
        csv_rows.append([agent.name, kind, how, waf, stored.get("oof_waf_prior", ""),
                         *[f1.get(label, "") for label in LABELS], int(has.sum())])
        if after is not None and has.any():
            path = out / "img" / f"reliability-{a}.png"
            plots.reliability_png(agent.labelled, after[a], labels, path, title=f"{agent.name}: labelled clips")
            figures.append(figure(f"img/{path.name}", f"{agent.name}: reliability before and after calibration",
                                  width=380))
        if agent.mass is not None:
            path = out / "img" / f"mass-{a}.png"
            plots.mass_png(agent.mass, path, title=f"{agent.name}: label mass, all clips")
            figures.append(figure(f"img/{path.name}", f"{agent.name}: label-mass histogram", width=380))
    write_csv(out / "csv" / "agents.csv", ["agent", "kind", "labelled_scores", "oof_waf", "oof_waf_prior",
                                           *[f"f1_{label}" for label in LABELS], "labelled_with_evidence"], csv_rows)
    no_mass = [a.name for a in run.agents if a.mass is None]
    body = ('<p class="lead">Scores on the labelled clips, each scored by a model that never saw its label (out of '
            'fold); WAF from filters.json where distill wrote it; "after prior": its label prior corrected with '
            'weights fitted on the other folds, as the filter sees it. ECE: expected calibration error before and '
            'after the cross-fitted calibration (prior, then temperature).</p>'
            + table_html(["agent", "kind", "labelled scores", "OOF WAF", "after prior",
                          *[f"F1 {label}" for label in LABELS], "clips", "ECE before", "ECE after", "T"], rows,
                         numeric_from=3)
            + '<div class="figs">' + "".join(figures) + "</div>")
    if not figures:
        body += absent("reliability diagrams (no labelled clips with folds)")
    if no_mass:
        body += f'<p class="note">No label-mass histogram for {esc(", ".join(no_mass))}: feature agents store no ' \
                "label mass (LLM agents do).</p>"
    body += "<h3>How often each pair of agents agrees</h3>" + _agreement(run)
    return section("agents", "Agents", body, run.notes.get("agents"))


def _agreement(run: RunData) -> str:
    """Share of clips where two agents give the same top label (among clips where both have evidence)."""
    names = [a.name for a in run.agents]
    everything = [np.concatenate([a.labelled, a.pool]) for a in run.agents]
    has = [~np.isnan(p).any(axis=1) for p in everything]
    tops = [np.nan_to_num(p).argmax(axis=1) for p in everything]
    rows = []
    for a, name in enumerate(names):
        cells = []
        for b in range(len(names)):
            both = has[a] & has[b]
            if a == b:
                cells.append(f'<span class="note">{has[a].mean():.0%} with evidence</span>')
            elif both.any():
                cells.append(f"{(tops[a][both] == tops[b][both]).mean():.3f} <span class=note>({int(both.sum())})"
                             "</span>")
            else:
                cells.append("–")
        rows.append([esc(name), *cells])
    return ('<p class="lead">Same top label, over every clip (labelled and pool) both agents have evidence for; the '
            "number of such clips in brackets.</p>"
            + table_html(["", *[esc(n) for n in names]], rows, cls="agree"))


# ---------------------------------------------------------------- filter

def filter_section(run: RunData, out: Path) -> str:
    """Precision against coverage with 95% intervals, applied thresholds, kept per class against the prior."""
    student = run.pseudo_student()
    if run.filters is None or student is None:
        return section("filter", "Filter", absent("pseudo/filters.json and a distill with pseudo-labels "
                                                  "(run `distill` without --no-pseudo)"))
    report = student.report
    chosen = run.filters.get("chosen") or report.get("filter_on_held_out") or {}
    baseline = run.filters.get("fixed_baseline")
    plots.precision_coverage_png(run.filters.get("curves") or {}, {"chosen filter": chosen,
                                                                   "fixed 0.95 baseline": baseline},
                                 out / "img" / "precision-coverage.png")
    points = [["chosen filter", str(chosen.get("kept", "–")), interval(chosen), number(chosen.get("coverage"))]]
    if baseline:
        points.append(["fixed 0.95 (baseline)", str(baseline.get("kept", "–")), interval(baseline),
                       number(baseline.get("coverage"))])
    body = (f'<p class="lead">{esc(run.filters.get("note", ""))}</p><div class="figs">'
            + figure("img/precision-coverage.png", "precision against coverage on the held-out labelled clips "
                     "(bars: 95% Wilson intervals)") + "<div>"
            + table_html(["filter", "kept (held out)", "precision [95% CI]", "coverage"], points)
            + f'<p class="note">the fixed threshold\'s precision at the chosen coverage: '
              f'{number(run.filters.get("fixed_precision_at_chosen_coverage"))}</p></div></div>')
    applied = report.get("applied_thresholds")
    if applied:
        rows = [[f"fold {k}", *[number(v) if finite(v) else "none kept" for v in fold]]
                for k, fold in enumerate(applied)]
        body += ('<h3>Thresholds the filter applied on the pool</h3><p class="lead">Per student fold: the lowest '
                 "combined confidence it kept per class (report.json applied_thresholds).</p>"
                 + table_html(["", *LABELS], rows, cls="thresholds"))
    body += _kept_per_class(run, report, chosen, out)
    return section("filter", "Filter", body, [f"from {student.folder.name}/report.json and pseudo/filters.json"])


def _kept_per_class(run: RunData, report: dict, chosen: dict, out: Path) -> str:
    kept = report.get("kept") or {}
    per_fold = report.get("kept_per_fold") or []
    prior_counts = np.bincount(run.labels, minlength=len(LABELS)) if len(run.labels) else np.zeros(len(LABELS))
    prior = {label: float(prior_counts[c] / max(prior_counts.sum(), 1)) for c, label in enumerate(LABELS)}
    per_class = chosen.get("per_class") or {}
    total = max(sum(kept.values()), 1)
    rows = []
    for label in LABELS:
        rows.append([f'<span class="chip l{LABELS.index(label)}">{label}</span>',
                     f'<span data-count="kept-{label}">{kept.get(label, 0)}</span>',
                     " / ".join(str(f.get(label, 0)) for f in per_fold) or "–",
                     f"{kept.get(label, 0) / total:.1%}", f"{prior[label]:.1%}", interval(per_class.get(label))])
    rows.append(["<b>all</b>", f'<b data-count="kept-total">{sum(kept.values())}</b>',
                 " / ".join(str(sum(f.values())) for f in per_fold) or "–", "", "", interval(chosen)])
    plots.kept_prior_png(kept, prior, out / "img" / "kept-prior.png")
    return ('<h3>Pseudo-labels kept per class against the labelled prior</h3><div class="figs"><div>'
            '<p class="lead">kept: mean over the student folds (report.json kept); per fold: kept_per_fold; '
            "precision: the same filter on the held-out labelled clips of that class.</p>"
            + table_html(["class", "kept (mean)", "per fold", "share kept", "labelled prior",
                          "held-out precision [95% CI]"], rows, cls="kept-table")
            + "</div>" + figure("img/kept-prior.png", "share of kept pseudo-labels against the labelled prior")
            + "</div>")


# ---------------------------------------------------------------- pseudo-labels

def pseudo_section(run: RunData, table: ClipTable, disagree_rows: int) -> str:
    """The sortable, filterable pool table and the clips the agents disagree on most (rows drawn by report.js)."""
    if not run.pool:
        return section("pseudo", "Pseudo-labels", absent("pool clips (no unlabelled clips found)"),
                       run.notes.get("pseudo"))
    rows = run.pseudo_rows
    if rows is None:
        counts = absent("pseudo/pseudo-labels.csv (distill with pseudo-labels has not run); the table shows the "
                        "agents' scores only")
    else:
        per_fold = {str(k): 0 for k in range(run.folds)}  # a fold whose decision kept nothing shows 0
        for row in rows:
            per_fold[row["fold"]] = per_fold.get(row["fold"], 0) + 1
        counts = (f'<p class="lead"><a href="../pseudo/pseudo-labels.csv">pseudo-labels.csv</a> holds '
                  f'<b data-count="pseudo-rows">{len(rows)}</b> rows (each student fold\'s selection: '
                  + ", ".join(f"fold {k}: <span data-count=\"pseudo-fold-{esc(k)}\">{v}</span>"
                              for k, v in sorted(per_fold.items(), key=lambda kv: int(kv[0])))
                  + f') over <b data-count="pseudo-clips">{len({r["name"] for r in rows})}</b> distinct pool '
                  "clips.</p>")
    legend = "".join(f'<span class="chip l{c}">{label}</span>' for c, label in enumerate(LABELS))
    hidden_head = "<th>hidden label</th>" if run.hidden is not None else ""
    head = ('<thead><tr><th>frame</th><th data-key="name">clip and subtitle</th><th>agents</th>'
            '<th>combined</th><th data-key="conf" class="num">confidence</th><th data-key="margin" class="num">'
            'margin</th><th data-key="dis" class="num">disagreement</th><th data-key="kept">kept</th><th>why</th>'
            + hidden_head + "</tr></thead><tbody></tbody>")
    options = "".join(f'<option value="{c}">{label}</option>' for c, label in enumerate(LABELS))
    body = (counts
            + f'<p class="lead">One row per pool clip ({len(run.pool):,}). Combined: {esc(table.how)}. '
              "Margin: top minus second combined probability. Disagreement: mean total-variation distance between "
              f'the agents\' distributions. Every row in <a href="csv/clips.csv">csv/clips.csv</a>.</p>'
              f'<p class="legend">{legend}</p>'
            + '<div class="controls"><label>combined label <select id="f-label"><option value="">all</option>'
            + options + '</select></label><label>kept <select id="f-kept"><option value="">all</option>'
              '<option value="kept">kept by a fold</option><option value="dropped">dropped</option></select></label>'
              '<label>agents <select id="f-split"><option value="">all</option><option value="split">disagree on the '
              'top label</option><option value="agree">agree</option></select></label><label>search '
              '<input id="f-text" type="search" placeholder="name or subtitle"></label></div>'
              '<div class="pager"><button id="prev">◀ previous</button><span id="page-of"></span>'
              '<button id="next">next ▶</button><span id="clip-count" class="needs-data"></span></div>'
            + f'<div class="scroll"><table class="clips" id="clip-table">{head}</table></div>'
            + '<h3 id="disagree">The clips the agents disagree on most</h3>'
              + (f'<p class="lead">The {disagree_rows} pool clips with the highest disagreement between the agents\' '
                 "distributions.</p>" if disagree_rows else absent("disagreement (fewer than 2 agents)"))
            + f'<div class="scroll"><table class="clips" id="disagree-table">{head.replace(" data-key=", " data-k=")}'
              "</table></div>")
    return section("pseudo", "Pseudo-labels", body, run.notes.get("pseudo"))


# ---------------------------------------------------------------- student

def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if finite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} ({len(values)} seeds)"


def _hidden_scores(run: RunData, student: StudentData):
    """The student's submission scored on the hidden labels (None without both)."""
    if run.hidden is None or student.submission is None:
        return None
    predicted = read_label_csv(student.submission)
    names = [n for n in run.pool if n in run.hidden and n in predicted]
    if not names:
        return None
    return score(np.array([LABELS.index(run.hidden[n]) for n in names]),
                 np.array([LABELS.index(predicted[n]) for n in names]))


def student_section(run: RunData) -> str:
    """Each student's 5-fold WAF (and hidden-pool WAF), per-class F1, clickable confusion matrices, the ablation."""
    if not run.students:
        return section("student", "Student", absent("a student (run `distill` first)"), run.notes.get("student"))
    rows, f1_rows, matrices = [], [], []
    hidden_any = False
    for s, student in enumerate(run.students):
        report = student.report
        hidden = report.get("hidden_waf")
        hidden_source = "report.json"
        scored = _hidden_scores(run, student) if hidden is None else None
        if scored is not None:
            hidden, hidden_source = scored.waf, student.submission.name
        hidden_any |= hidden is not None
        kept = sum((report.get("kept") or {}).values())
        rows.append([f'<a href="../{esc(student.name)}/report.json">{esc(student.name)}</a>',
                     "yes" if student.uses_pseudo else "no", f'<span data-count="student-kept-{s}">{kept}</span>',
                     f'<span data-count="student-waf-{s}">{number(report.get("waf"), 4)}</span>',
                     number(report.get("accuracy"), 4),
                     f"{number(hidden, 4)} <span class=note>({esc(hidden_source)})</span>" if hidden is not None
                     else "–"])
        f1 = report.get("per_class_f1") or {}
        f1_rows.append([esc(student.name), *[number(f1.get(label)) for label in LABELS]])
        if student.oof is not None and len(run.labels):
            matrices.append(_confusion(run, student, s))
    body = ('<p class="lead">5-fold WAF: out of fold on the labelled clips, each fold scored by a model that never '
            "trained or chose its epoch on it. Hidden WAF: on the pool's hidden labels, when given.</p>"
            + table_html(["student", "pseudo-labels", "kept (mean over folds)", "5-fold WAF", "accuracy",
                          "hidden-pool WAF"], rows, numeric_from=2))
    if not hidden_any:
        body += absent("hidden-pool WAF (no hidden labels given: distill --hidden-labels, or report --hidden-labels)")
    body += "<h3>Per-class F1 (out of fold)</h3>" + table_html(["student", *LABELS], f1_rows)
    body += "".join(matrices) or absent("confusion matrices (no oof.safetensors beside a student)")
    body += "<h3>Ablation</h3>" + _ablation(run)
    return section("student", "Student", body, run.notes.get("student"))


def _confusion(run: RunData, student: StudentData, s: int) -> str:
    predicted = student.oof.argmax(axis=1)
    counts = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    np.add.at(counts, (run.labels, predicted), 1)
    rows_total = counts.sum(axis=1, keepdims=True)
    rows = []
    for t, label in enumerate(LABELS):
        cells = []
        for p in range(len(LABELS)):
            share = counts[t, p] / max(rows_total[t, 0], 1)
            colour = f"rgba(47,111,223,{share:.2f})"
            ink = "#fff" if share > 0.5 else "inherit"
            cells.append(f'<td style="background:{colour}"><a href="#" class="cm-cell" style="color:{ink}" '
                         f'data-student="{s}" data-true="{t}" data-pred="{p}">{counts[t, p]}</a></td>')
        rows.append(f'<tr><th class="rowh">{label}</th>{"".join(cells)}</tr>')
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{label}</th>" for label in LABELS) + "</tr>"
    return (f'<h3>Confusion matrix: {esc(student.name)} (out of fold, {len(run.labels)} labelled clips)</h3>'
            '<div class="cm-box"><table class="cm">' + head + "".join(rows) + "</table>"
            f'<div class="cm-clips" id="cm-clips-{s}"><p class="note">Click a cell to list its clips.</p></div></div>')


def _ablation(run: RunData) -> str:
    with_ablation = [s for s in run.students if s.ablation]
    if not with_ablation:
        return absent("the ablation (distill --report [--seeds N] writes ablation.md and ablation.json)")
    parts = []
    for student in with_ablation:
        rows = []
        for r in student.ablation.get("rows", []):
            precision = {"precision": r.get("precision"), "precision_low": r.get("precision_low"),
                         "precision_high": r.get("precision_high")}
            rows.append([esc(r.get("variant", "")), str(r.get("kept", "")), interval(precision),
                         number(r.get("coverage")), _mean_sd(r.get("wafs") or []),
                         _mean_sd(r.get("hidden_wafs") or [])])
        parts.append(f'<p class="lead">{esc(student.name)}/ablation.json: mean ± sd over the student seeds.</p>'
                     + table_html(["student", "pseudo-labels", "held-out precision [95% CI]", "held-out coverage",
                                   "5-fold WAF", "hidden WAF"], rows, cls="ablation"))
    return "".join(parts)


# ---------------------------------------------------------------- run

def _versions(run: RunData) -> dict[str, str]:
    versions: dict[str, str] = {"python (report)": platform.python_version()}
    for package in ("mer-semi", "numpy", "torch", "scikit-learn", "transformers"):
        try:
            versions[f"{package} (report)"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    for meta_path in sorted((run.run / "features").glob("*/meta.json")):
        stored = json.loads(meta_path.read_text(encoding="utf-8")).get("versions") or {}
        for package, version in stored.items():
            versions.setdefault(f"{package} (features)", str(version))
        break
    return versions


def run_section(run: RunData, out: Path) -> str:
    """The run's configs and versions, and links to the files behind every table (relative to the report folder
    `out`, wherever it is)."""
    configs = []
    for student in run.students:
        config = student.report.get("config")
        if config:
            configs.append(f"<details><summary>{esc(student.name)}/report.json config</summary>"
                           f"<pre>{esc(json.dumps(config, indent=2, ensure_ascii=False))}</pre></details>")
    for agent in run.agents:
        configs.append(f"<details><summary>agents/{esc(agent.name)}/meta.json</summary>"
                       f"<pre>{esc(json.dumps(agent.meta, indent=2, ensure_ascii=False))}</pre></details>")
    folds_json = run.run / "folds.json"
    if folds_json.is_file():
        configs.append(f"<details><summary>folds.json</summary><pre>{esc(folds_json.read_text())}</pre></details>")
    versions = table_html(["package", "version"], [[esc(k), esc(v)] for k, v in _versions(run).items()])
    # the report's own CSVs, then the run's files that exist, each linked relative to the report folder
    present = [("csv/clips.csv", "every pool clip's row of the table"), ("csv/broken.csv", "the broken clips"),
               ("csv/agents.csv", "the agents' scores")]
    files = [("features/status.csv", "per-clip status"), ("folds.csv", "the run's fold assignment"),
             ("pseudo/pseudo-labels.csv", "kept pseudo-labels"), ("pseudo/filters.json", "the filter measurements")]
    files += [(f"{s.name}/report.json", f"{s.name}: scores and config") for s in run.students]
    files += [(f"{s.name}/ablation.md", f"{s.name}: ablation") for s in run.students if s.ablation]
    files += [(s.submission.name, f"{s.name}: submission") for s in run.students if s.submission]
    present += [(os.path.relpath(run.run / rel, out), what) for rel, what in files if (run.run / rel).exists()]
    body = ('<h3>Files behind the tables</h3><ul class="links">'
            + "".join(f'<li><a href="{esc(h)}">{esc(h)}</a>: {esc(w)}</li>' for h, w in present) + "</ul>"
            + f"<h3>Configs</h3>{''.join(configs) or absent('configs (no stage recorded one)')}"
            + f"<h3>Versions</h3>{versions}")
    return section("run", "Run", body)


def header(run: RunData) -> str:
    """The title bar: the run, the dataset, headline numbers."""
    student = run.pseudo_student() or (run.students[-1] if run.students else None)
    kept = sum((student.report.get("kept") or {}).values()) if student and student.uses_pseudo else None
    cards = [("labelled clips", f"{len(run.labelled):,}"), ("pool clips", f"{len(run.pool):,}"),
             ("agents", str(len(run.agents))),
             ("pseudo-labels kept", f"{kept:,}" if kept is not None else "–")]
    for s in run.students:
        cards.append((f"{s.name} 5-fold WAF", number(s.report.get("waf"), 4)))
    data = f" · data {esc(run.data)}" if run.data else ""
    return ('<header class="top"><h1>Run report</h1>'
            f'<div class="sub">{esc(run.run.resolve())}{data}</div><div class="cards">'
            + "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
                      for k, v in cards) + "</div></header>")

