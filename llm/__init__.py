"""Qwen teachers as label scorers: the family registry, prompts and requests, label-likelihood scoring, and the
transformers and vLLM backends. Knows nothing of agents or runs (teacher/ builds on it).

Usage:
    from llm.families import get_family
    from llm.hf_backend import HFScorer, load_model
"""
