"""The pool-clip table: one row per pool clip with each agent's probabilities, the combined label, and why the
filter kept or dropped it.

Usage:
    table = clip_table(run)                 # run: report.gather.RunData
    table.columns["conf"], table.reasons    # (pool,) arrays and one sentence per clip
    write_table_csv(table, run, path)       # every row, for the clips the page does not show

The combined label is the run's filter combination (pseudo.select.combine_agents with the run's filter settings,
the agents' mean temperatures and out-of-fold WAFs from filters.json) of each agent's stored pool probabilities
(the fold models' mean). Whether a clip was kept is read from pseudo-labels.csv (student fold k's selection
under the agents' fold-k models); the reason for a drop names the first step it fails on the fold-mean
probabilities: evidence, agreement, the class's applied threshold (median over the folds, from report.json), or
the per-class quota and caps.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import numpy as np

from clips.config import from_dict
from clips.io import atomic_write_text
from clips.labels import LABELS, NUM_LABELS
from pseudo.calibration import apply_priors
from pseudo.filters import agreement_mask, evidence_mask
from pseudo.select import FilterConfig, combine_agents, min_agents
from report.gather import RunData

log = logging.getLogger(__name__)


@dataclass
class ClipTable:
    """Per pool clip (rows in run.pool order): the numbers the page's table shows and sorts by."""

    names: list[str]
    # (agents, pool, 6) each agent's stored probabilities; NaN: no evidence
    probs: np.ndarray
    # (pool,) combined label index (-1: no agent has evidence), confidence, margin (top1 - top2)
    label: np.ndarray
    conf: np.ndarray
    margin: np.ndarray
    # (pool,) mean pairwise total-variation distance between the agents with evidence (0: identical; NaN: < 2)
    disagreement: np.ndarray
    # (pool,) True where the agents with evidence do not share one top label
    split: np.ndarray
    # (pool,) student folds that kept the clip, and the label they kept it as (-1: not kept)
    kept_folds: np.ndarray
    kept_label: np.ndarray
    # one sentence per clip: why it was kept or dropped
    reasons: list[str]
    # how the combination was set up, for the page
    how: str


def _filter_config(run: RunData) -> tuple[FilterConfig | None, str]:
    student = run.pseudo_student()
    stored = ((student.report.get("config") or {}).get("filter") if student else None)
    if stored is None:
        return None, "no distill with pseudo-labels in this run: the filter's default settings"
    try:
        return from_dict(FilterConfig, dict(stored), where=f"{student.folder.name}/report.json config.filter"), \
            f"the filter settings of {student.folder.name}/report.json"
    except (ValueError, TypeError) as err:
        log.warning("report: %s; the default filter settings are used", err)
        return None, f"the filter's default settings ({err})"


def _calibration(run: RunData) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(agents,) mean temperatures, out-of-fold WAFs and (agents, 6) mean prior weights from filters.json, in
    run.agents order; None if absent (the priors also when distill corrected none)."""
    summary = (run.filters or {}).get("calibration") or {}
    if not run.agents or any(a.name not in summary for a in run.agents):
        return None, None, None
    temperatures = np.array([summary[a.name].get("temperature", 1.0) for a in run.agents], dtype=np.float32)
    priors = [summary[a.name].get("prior_weights") for a in run.agents]
    key = "oof_waf_prior" if all(p is not None for p in priors) else "oof_waf"
    scores = np.array([summary[a.name].get(key, 0.0) for a in run.agents], dtype=np.float32)
    return temperatures, scores, (np.array(priors, dtype=np.float32) if key == "oof_waf_prior" else None)


def _median_thresholds(run: RunData) -> np.ndarray | None:
    """(6,) per-class thresholds the filter applied on the pool, median over the folds (report.json)."""
    student = run.pseudo_student()
    applied = student.report.get("applied_thresholds") if student else None
    if not applied:
        return None
    return np.median(np.array(applied, dtype=np.float64), axis=0)


def clip_table(run: RunData) -> ClipTable:
    """The table rows of every pool clip of `run`."""
    n = len(run.pool)
    cfg, origin = _filter_config(run)
    settings = cfg or FilterConfig()
    probs = (np.stack([a.pool for a in run.agents]) if run.agents
             else np.full((0, n, NUM_LABELS), np.nan, np.float32))              # (agents, pool, 6)
    has = evidence_mask(probs)                                                  # (agents, pool)
    count = has.sum(axis=0)
    temperatures, scores, priors = _calibration(run)
    if len(probs):
        if settings.weighting == "waf" and scores is None:
            settings = FilterConfig(**{**settings.__dict__, "weighting": "equal"})
        if settings.prior:
            probs = apply_priors(probs, priors)
        combined = combine_agents(probs, settings, temperatures, scores)        # (pool, 6)
    else:
        combined = np.full((n, NUM_LABELS), 1.0 / NUM_LABELS, np.float32)
    ordered = np.sort(combined, axis=1)
    label = np.where(count > 0, combined.argmax(axis=1), -1)
    conf = np.where(count > 0, ordered[:, -1], np.nan)
    margin = np.where(count > 0, ordered[:, -1] - ordered[:, -2], np.nan)
    how = (f"{settings.combine} of {len(run.agents)} agent(s), weighting {settings.weighting}, "
           + ("prior weights and " if priors is not None and settings.prior else "")
           + ("temperatures from filters.json" if temperatures is not None and settings.calibrate else "uncalibrated")
           + f" ({origin})")

    disagreement = np.full(n, np.nan)
    split = np.zeros(n, dtype=bool)
    if len(probs) > 1:
        tops = np.where(has, np.nan_to_num(probs).argmax(axis=2), -1)          # (agents, pool)
        pairs, total = np.zeros(n), np.zeros(n)
        for a in range(len(probs)):
            for b in range(a + 1, len(probs)):
                both = has[a] & has[b]
                tv = 0.5 * np.abs(np.nan_to_num(probs[a]) - np.nan_to_num(probs[b])).sum(axis=1)
                total += np.where(both, tv, 0.0)
                pairs += both
                split |= both & (tops[a] != tops[b])
        disagreement = np.where(pairs > 0, total / np.maximum(pairs, 1), np.nan)

    kept_folds = np.zeros(n, dtype=np.int64)
    kept_label = np.full(n, -1, dtype=np.int64)
    kept_conf: dict[int, list[tuple[int, float]]] = {}
    position = {name: i for i, name in enumerate(run.pool)}
    for row in run.pseudo_rows or []:
        i = position.get(row["name"])
        if i is None:
            continue
        kept_folds[i] += 1
        kept_label[i] = LABELS.index(row["discrete"])
        kept_conf.setdefault(i, []).append((int(row["fold"]), float(row["confidence"])))

    reasons = _reasons(run, probs, has, count, combined, label, conf, settings, cfg is not None, kept_folds,
                       kept_label, kept_conf)
    return ClipTable(names=list(run.pool), probs=probs, label=label, conf=conf, margin=margin,
                     disagreement=disagreement, split=split, kept_folds=kept_folds, kept_label=kept_label,
                     reasons=reasons, how=how)


def _reasons(run: RunData, probs: np.ndarray, has: np.ndarray, count: np.ndarray, combined: np.ndarray,
             label: np.ndarray, conf: np.ndarray, cfg: FilterConfig, filtered: bool, kept_folds: np.ndarray,
             kept_label: np.ndarray, kept_conf: dict[int, list[tuple[int, float]]]) -> list[str]:
    """Why each pool clip was kept or dropped, in one sentence."""
    n = len(label)
    if not filtered or run.pseudo_rows is None:
        return ["no pseudo-label filter ran in this run"] * n
    folds = max(run.folds, 1)
    thresholds = _median_thresholds(run)
    needed = min_agents(probs, cfg) if len(probs) else cfg.min_agents
    agree = (agreement_mask(probs, np.maximum(label, 0), cfg.agree_top_k, cfg.agree_rule) if len(probs)
             else np.zeros(n, dtype=bool))
    names = [a.name for a in run.agents]
    reasons = []
    kept_in = {i: "fold " + ", ".join(str(k) for k, _ in sorted(v)) for i, v in kept_conf.items()}
    for i in range(n):
        # sentences without the clip's own numbers (those are in its columns): 115,595 clips share a few
        # thousand sentences, and the page stores each once
        if kept_folds[i]:
            which = "" if kept_folds[i] == folds else f" ({kept_in[i]})"
            reasons.append(f"kept as {LABELS[kept_label[i]]} by {kept_folds[i]} of {folds} student folds{which}")
        elif count[i] < needed:
            without = [names[a] for a in range(len(names)) if not has[a, i]]
            reasons.append(f"dropped: {int(count[i])} agent(s) with evidence, the filter needs {needed} "
                           f"(no evidence from {', '.join(without) or 'any agent'})")
        elif not agree[i]:
            says = ", ".join(f"{names[a]} {LABELS[int(np.nan_to_num(probs[a, i]).argmax())]}"
                             for a in range(len(names)) if has[a, i])
            reasons.append(f"dropped: the agents disagree on {LABELS[label[i]]} ({says}; agree_rule "
                           f"{cfg.agree_rule}, top {cfg.agree_top_k})")
        elif thresholds is not None and not np.isfinite(thresholds[label[i]]):
            reasons.append(f"dropped: the filter kept no {LABELS[label[i]]} clip in any fold")
        elif thresholds is not None and conf[i] < thresholds[label[i]]:
            reasons.append(f"dropped: confidence below the {LABELS[label[i]]} threshold "
                           f"{thresholds[label[i]]:.3f} (median of the folds' applied thresholds)")
        else:
            reasons.append(f"dropped: passes the gate as {LABELS[label[i]]} on the agents' fold-mean "
                           "probabilities, but no fold's own models kept it (quota, cap or fold threshold)")
    return reasons


def write_table_csv(table: ClipTable, run: RunData, path) -> None:
    """Every pool clip's row: name, subtitle, status, each agent's probabilities, combined label, confidence,
    margin, disagreement, folds kept, kept label and the reason (and the hidden label when given)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    agents = [a.name for a in run.agents]
    hidden = run.hidden is not None
    writer.writerow(["name", "subtitle", "status", *[f"{a}_p_{label}" for a in agents for label in LABELS],
                     "combined", "confidence", "margin", "disagreement", "kept_folds", "kept_label", "why",
                     *(["hidden_label"] if hidden else [])])

    def number(value: float) -> str:
        return "" if np.isnan(value) else f"{value:.4f}"

    for i, name in enumerate(table.names):
        writer.writerow([
            name, run.transcripts.get(name, ""), run.statuses.get(name, ""),
            *[number(v) for a in range(len(agents)) for v in table.probs[a, i]],
            LABELS[table.label[i]] if table.label[i] >= 0 else "", number(table.conf[i]), number(table.margin[i]),
            number(table.disagreement[i]), int(table.kept_folds[i]),
            LABELS[table.kept_label[i]] if table.kept_label[i] >= 0 else "", table.reasons[i],
            *([run.hidden.get(name, "")] if hidden else [])])
    atomic_write_text(path, buffer.getvalue())
