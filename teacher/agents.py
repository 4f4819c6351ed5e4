"""Building teacher agents: the builder of each agent kind, chosen by the spec's `kind`.

Usage:
    from teacher.agents import build_agent
    agent = build_agent(AgentSpec(name="audio", kind="features", modality="audio"), context)
    probs = agent.score(names)          # (n, 6); NaN rows where the agent has no evidence

The kinds (teacher.feature_agent, teacher.llm_agent) import only teacher.spec, never each other or this module.
"""

from __future__ import annotations

from collections.abc import Callable

from teacher.feature_agent import build_feature_agent
from teacher.spec import Agent, AgentContext, AgentSpec


def _build_llm_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    if spec.options.get("incontext_k"):
        from teacher.incontext import build_incontext_agent  # the llm agent with cross-fitted examples

        return build_incontext_agent(spec, context)
    from teacher.llm_agent import build_llm_agent  # torch and transformers load only when an llm agent is used

    return build_llm_agent(spec, context)


AGENT_BUILDERS: dict[str, Callable[[AgentSpec, AgentContext], Agent]] = {
    "features": build_feature_agent,
    "llm": _build_llm_agent,
}


def build_agent(spec: AgentSpec, context: AgentContext) -> Agent:
    """The agent for `spec`, chosen by its kind."""
    return AGENT_BUILDERS[spec.kind](spec, context)
