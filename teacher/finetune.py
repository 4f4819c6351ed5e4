"""`teacher-train`: LoRA fine-tuning of an LLM teacher on the labelled clips, answer-only loss, held-out WAF.

Usage:
    report = teacher_train(TeacherTrainConfig(data=Path("mer2024-dataset"), out=Path("runs/a/teacher"),
                                              teacher=LLMAgentOptions(model="Qwen/Qwen2-Audio-7B-Instruct",
                                                                      family="qwen2_audio", view="audio")))
    report = train_teacher(cfg, labelled_refs)         # the same on a list of ClipRefs (tests, custom corpora)
    teacher_train(replace(cfg, run=Path("runs/a"), folds=5))   # one adapter per fold of the run's assignment:
                                                                # out/fold_K/adapter, labelled clips scored out of fold

Writes `out/adapter` (standard peft: adapter_config.json + adapter_model.safetensors, for the hf backend and for
vLLM LoRA on Qwen2.5-VL / Omni), `out/merged` (LoRA merged into the base weights + processor files: how Qwen2-Audio,
which has no LoRA in vLLM, is served) and `out/report.json`. Each model folder carries `provenance.json`
(teacher.provenance: base model, family, a hash of the labelled clips that trained it, the fold it leaves out), so
that teacher-label knows, without trusting a config, which labelled clips a model may score out of fold. The loss
covers only the answer `<label><|im_end|>`; LoRA targets the language model only (the family's regex); QLoRA loads
the base in 4-bit (CUDA).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from clips.config import to_dict
from clips.dataset import ClipRef, load_corpus
from clips.folds import run_folds
from clips.labels import LABELS, label_index
from llm.adapters import published_layout, vllm_adapter
from llm.hf_backend import (
    HFScorer,
    answer_logprobs,
    checkpoint_dtype,
    encode_requests,
    load_model,
    load_processor,
    load_weights,
    tokenizer_of,
)
from llm.requests import Request
from llm.scoring import END_TOKEN, LabelScoring
from teacher.llm_agent import ClipRequests
from teacher.llm_options import LLMAgentOptions
from teacher.provenance import Provenance, write_provenance

log = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    """The LoRA adapter's shape."""

    # rank (keep <= vLLM's max_lora_rank when serving with LoRA)
    r: int = 16
    # scaling numerator (scale = alpha / r)
    alpha: int = 32
    dropout: float = 0.05


@dataclass
class TeacherTrainConfig:
    """Settings of `teacher-train`."""

    # dataset folder (MER2024 release layout or a generic folder)
    data: Path
    # output folder for adapter/, merged/ and report.json
    out: Path
    # the teacher: model, family, view, language, frames... (the llm agent options; adapter ignored)
    teacher: LLMAgentOptions
    # the unlabelled folder's name inside `data`; found automatically when None
    unlabelled_dir: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    # 4-bit base weights (QLoRA); needs CUDA
    qlora: bool = False
    epochs: int = 2
    learning_rate: float = 1e-4
    # clips per forward pass
    batch_size: int = 4
    # forward passes per optimiser step (effective batch = batch_size x grad_accum)
    grad_accum: int = 4
    # share of the labelled clips held out to report the teacher's WAF (stratified)
    held_out: float = 0.1
    # write out/merged (merge_and_unload + processor files; how vLLM serves Qwen2-Audio, which has no LoRA there);
    # None: yes for a single teacher, no with `folds` (K exports of the full model that only a vLLM Qwen2-Audio
    # agent reads: ask for them with `merge: true`)
    merge: bool | None = None
    seed: int = 0
    # run folder whose fold assignment (run/folds.csv) `folds` follows
    run: Path | None = None
    # train one adapter per fold of the run's assignment (out/fold_K/), each held out on its own fold, so that
    # teacher-label can score every labelled clip out of fold (AgentSpec.fold_adapters); None: one adapter
    folds: int | None = None
    # seed of the run's fold assignment
    fold_seed: int = 0
    # show progress bars
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.folds is not None and self.run is None:
            problems.append(f"folds={self.folds} needs `run` (--run): the fold assignment is the run's")
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: use a positive number")
        if not 0.0 <= self.held_out < 1.0:
            problems.append(f"held_out={self.held_out}: use a share in [0, 1)")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate={self.learning_rate}: use a positive rate")
        if self.lora.r < 1:
            problems.append(f"lora.r={self.lora.r}: use a positive rank")
        if problems:
            raise ValueError("teacher-train: " + "; ".join(problems))


@dataclass
class TeacherTrainReport:
    """What one teacher-train run produced."""

    adapter_dir: Path
    merged_dir: Path | None
    # held-out weighted F1 and accuracy (None without a held-out fold)
    waf: float | None
    accuracy: float | None
    # mean answer loss per optimiser step
    losses: list[float]
    train_clips: int
    held_clips: int
    # clips skipped because they lack the view's media
    skipped: int
    elapsed: float
    # held-out weighted F1 of the base model (the adapter switched off): what fine-tuning added
    waf_before: float | None = None


def teacher_train(cfg: TeacherTrainConfig) -> TeacherTrainReport:
    """Fine-tune the teacher on every labelled clip of `cfg.data`; returns the report (also in out/report.json).

    With cfg.folds, one adapter per fold of the run's assignment (out/fold_K/, out/folds.json); the report's WAF is
    then the mean of the folds' held-out WAFs (and
    `waf_before` the mean of the base model's).
    """
    corpus = load_corpus(cfg.data, cfg.unlabelled_dir)
    if cfg.folds is None:
        return train_teacher(cfg, corpus.labelled)
    assignment = run_folds(cfg.run, {r.name: r.label for r in corpus.labelled}, cfg.folds, cfg.fold_seed)
    fold_of = assignment.of([r.name for r in corpus.labelled])
    reports = []
    for k in range(cfg.folds):
        train = [r for r, f in zip(corpus.labelled, fold_of, strict=True) if f != k]
        held = [r for r, f in zip(corpus.labelled, fold_of, strict=True) if f == k]
        fold_cfg = replace(cfg, out=Path(cfg.out) / f"fold_{k}", merge=bool(cfg.merge))
        reports.append(train_teacher(fold_cfg, train, held, fold=(k, cfg.folds, cfg.fold_seed)))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "folds.json").write_text(json.dumps({"folds": cfg.folds, "seed": cfg.fold_seed}), "utf-8")
    wafs = [r.waf for r in reports if r.waf is not None]
    before = [r.waf_before for r in reports if r.waf_before is not None]
    return replace(reports[-1], adapter_dir=Path(cfg.out), waf=float(np.mean(wafs)) if wafs else None,
                   waf_before=float(np.mean(before)) if before else None,
                   losses=[loss for r in reports for loss in r.losses],
                   train_clips=sum(r.train_clips for r in reports) // cfg.folds,
                   held_clips=sum(r.held_clips for r in reports), elapsed=sum(r.elapsed for r in reports))


def split_held_out(refs: list[ClipRef], share: float, seed: int) -> tuple[list[ClipRef], list[ClipRef]]:
    """(train, held) with `share` of the clips held out, stratified by label when every class has 2+ clips."""
    if share == 0 or len(refs) < 2:
        return list(refs), []
    labels = [r.label for r in refs]
    counts = np.unique(labels, return_counts=True)[1]
    held_n = max(1, round(share * len(refs)))
    stratify = labels if counts.min() >= 2 and held_n >= len(counts) else None
    train, held = train_test_split(refs, test_size=held_n, random_state=seed, stratify=stratify)
    return list(train), list(held)


def _answer_loss(model, processor, family, plan: LabelScoring, batch: list[tuple[Request, int]]):
    """Mean negative log-likelihood of the answer tokens `<word><|im_end|>` (the prompt carries no loss)."""
    requests = [r for r, _ in batch]
    suffixes = [plan.prefix + plan.answers[y] + END_TOKEN for _, y in batch]
    inputs = encode_requests(processor, family, requests, suffixes).to(next(model.parameters()).device)
    logp, mask = answer_logprobs(model, inputs, [plan.answer_ids[y] for _, y in batch])
    return -logp.sum() / mask.sum()


def _requests(maker: ClipRequests, refs: list[ClipRef]) -> tuple[list[tuple[Request, int]], int]:
    """(request, label index) of each clip that has the view's media, and the count skipped (clips decoded by
    the worker processes, through the shared media cache when the teacher options name one)."""
    out = [(request, label_index(ref.label)) for ref, request in zip(refs, maker.requests(refs), strict=True)
           if request is not None]
    return out, len(refs) - len(out)


def _held_out_waf(scorer: HFScorer, held: list[tuple[Request, int]]) -> tuple[float, float]:
    """(weighted F1, accuracy) of the scorer's argmax on held-out (request, label index) pairs."""
    truth = [y for _, y in held]
    pred = scorer.score([r for r, _ in held]).argmax(1)
    return (float(f1_score(truth, pred, average="weighted", labels=range(len(LABELS)), zero_division=0)),
            float(accuracy_score(truth, pred)))


def _load_trainable(cfg: TeacherTrainConfig, family):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    options = cfg.teacher
    model, processor = load_model(options.model, family, device=options.device,
                                  quantization="4bit" if cfg.qlora else "none")
    if cfg.qlora:
        model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=family.lora_targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), processor


def train_teacher(cfg: TeacherTrainConfig, labelled: list[ClipRef], held_out_refs: list[ClipRef] | None = None,
                  fold: tuple[int, int, int] | None = None) -> TeacherTrainReport:
    """LoRA-train the teacher on `labelled` clips, report held-out WAF, save adapter (+ merged export), each with
    its provenance record.

    `held_out_refs` report the WAF (default: a cfg.held_out share split off `labelled`); `fold` = (k, folds,
    fold_seed) when `labelled` is the run's labelled clips outside fold k. Raises ValueError when no clip has the
    view's media.
    """
    start = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_refs, held_refs = split_held_out(labelled, cfg.held_out, cfg.seed) if held_out_refs is None \
        else (labelled, held_out_refs)

    # phase 1: model + LoRA, and the requests (decoded once: a teacher run holds the labelled clips' media)
    family = cfg.teacher.family_record()
    model, processor = _load_trainable(cfg, family)
    plan = cfg.teacher.scoring_plan(tokenizer_of(processor))
    maker = ClipRequests(cfg.teacher, processor)
    train, skipped = _requests(maker, train_refs)
    held, held_skipped = _requests(maker, held_refs)
    if not train:
        raise ValueError(f"teacher-train: none of the {len(train_refs)} training clips has {cfg.teacher.view} media; "
                         "check the view or the dataset")
    log.info("teacher-train: %d train clips, %d held out, %d skipped without %s media", len(train), len(held),
             skipped + held_skipped, cfg.teacher.view)

    # phase 2: answer-only loss, gradient accumulation
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    batches_per_epoch = -(-len(train) // cfg.batch_size)
    bar = tqdm(total=cfg.epochs * batches_per_epoch, desc="teacher-train", unit="batch", disable=not cfg.progress)
    losses: list[float] = []
    step_losses: list[float] = []
    model.train()
    for _ in range(cfg.epochs):
        order = random.sample(train, len(train))
        for b, begin in enumerate(range(0, len(order), cfg.batch_size)):
            loss = _answer_loss(model, processor, family, plan, order[begin:begin + cfg.batch_size])
            (loss / cfg.grad_accum).backward()
            step_losses.append(loss.item())
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == batches_per_epoch:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(np.mean(step_losses)))
                step_losses = []
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()

    # phase 3: held-out WAF with the same scorer the agent uses, with and without the adapter
    waf = accuracy = waf_before = None
    if held:
        scorer = HFScorer(model, processor, family, plan, cfg.teacher.batch_size)
        waf, accuracy = _held_out_waf(scorer, held)
        with model.disable_adapter():
            waf_before = _held_out_waf(scorer, held)[0]
        log.info("teacher-train: held-out WAF %.4f (base model %.4f), accuracy %.4f on %d clips", waf, waf_before,
                 accuracy, len(held))

    # phase 4: adapter, merged export, each with what trained it; report
    out = Path(cfg.out)
    k, folds, fold_seed = fold if fold is not None else (None, None, None)
    record = Provenance.of_training(cfg.teacher.model, cfg.teacher.family, [r.name for r in train_refs], k, folds,
                                    fold_seed, cfg.seed)
    adapter_dir = out / "adapter"
    model.save_pretrained(adapter_dir)
    write_provenance(adapter_dir, record)
    if family.vllm_adapter_prefix:  # the keys vLLM's loader maps (Omni: under thinker.)
        vllm_adapter(adapter_dir, out / "adapter-vllm", family)
        write_provenance(out / "adapter-vllm", dataclasses.replace(record, product="adapter-vllm"))
    merged_dir = None
    if cfg.merge is None or cfg.merge:
        merged_dir = export_merged(cfg.teacher.model, adapter_dir, out / "merged", family, processor)
        write_provenance(merged_dir, dataclasses.replace(record, product="merged"))
    report = TeacherTrainReport(adapter_dir=adapter_dir, merged_dir=merged_dir, waf=waf, accuracy=accuracy,
                                losses=losses, train_clips=len(train), held_clips=len(held),
                                skipped=skipped + held_skipped, elapsed=time.perf_counter() - start,
                                waf_before=waf_before)
    (out / "report.json").write_text(json.dumps({**{k: str(v) if isinstance(v, Path) else v
                                                    for k, v in report.__dict__.items()},
                                                 "config": to_dict(cfg)}, indent=2), encoding="utf-8")
    return report


def export_merged(base: str | Path, adapter_dir: Path, out: Path, family, processor=None, device: str = "cpu") -> Path:
    """Base weights (full precision, even after QLoRA) + adapter merged, saved with the processor to `out`.

    The merge is computed in float32 and saved in the base checkpoint's own dtype (bf16 for the Qwen releases:
    a 7B export is then 15 GB, not 30). The keys are written in the published checkpoint's layout, the one vLLM
    loads (llm.adapters.published_layout). `processor` defaults to the base checkpoint's. Returns `out`.
    """
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_weights(base, family, device=device), str(adapter_dir)).merge_and_unload()
    merged = merged.to(checkpoint_dtype(base))
    merged.save_pretrained(out)
    published_layout(out, family.name)
    (processor or load_processor(base)).save_pretrained(out)
    return out
