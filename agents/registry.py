"""The agents longrec knows, in one table: what each needs to train and whether it is privileged.

Every list of agent names (config validation, the CLI, the benchmarks, evaluation,
tables and plots) is read from :data:`AGENT_INFO`; adding an agent is one row here
plus its construction in ``agents.baselines.make_baseline`` (or a trainer).

A *privileged* agent reads the simulator's hidden state or its true model
(quality, interest, satisfaction, true utilities): a reference or an oracle, never
a deployable recommender. Tables and plots mark it with :data:`PRIVILEGED_MARK`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PRIVILEGED_MARK = "†"
"""appended to a privileged agent's name in tables and plots"""


@dataclass(frozen=True)
class AgentInfo:
    """One row of the agent table."""

    name: str
    """the name used by ``agent=``, ``eval.baselines`` and ``--agents``"""
    trainer: Literal["none", "ppo", "slateq"]
    """how it is trained: nothing to train, PPO (``agents.ppo``) or SlateQ (``agents.slateq``)"""
    from_pretrained: bool
    """starts from the cross-entropy-pretrained LLM policy"""
    privileged: bool
    """reads hidden state or the true model (a reference, marked in tables and plots)"""
    description: str
    """one line for ``--help`` and the README"""

    @property
    def checkpoint(self) -> Literal["llm_policy", "sb3_zip", "slateq"] | None:
        """What a trained or pretrained policy of this agent is saved as: an LLM policy folder
        (``save_pretrained``), an SB3 ``.zip``, a SlateQ ``.pt``; None for agents with nothing to load."""
        if self.trainer == "slateq":
            return "slateq"
        if self.name == "ppo_mlp":
            return "sb3_zip"
        return "llm_policy" if self.from_pretrained or self.trainer == "ppo" else None


AGENT_INFO: dict[str, AgentInfo] = {row.name: row for row in (
    AgentInfo("random", "none", False, False, "uniformly random slates"),
    AgentInfo("popularity", "none", False, False, "most popular candidates (visible catalog popularity)"),
    AgentInfo("myopic", "none", False, True, "maximises the immediate click probability under the true model"),
    AgentInfo("pctr_greedy", "none", True, False, "the CE-pretrained LLM policy used greedily (no RL)"),
    AgentInfo("completion_greedy", "none", True, False,
              "the candidates of highest logged completion rate (the CE start's item statistics; no model, no RL)"),
    AgentInfo("slateq", "slateq", False, True,
              "SlateQ (Ie et al. 2019) over item-id features; reads the true choice model (utilities)"),
    AgentInfo("ppo_mlp", "ppo", False, False, "PPO with an item-id MLP policy (no language model)"),
    AgentInfo("ppo_scratch", "ppo", False, False, "PPO with the LLM policy from random initialisation"),
    AgentInfo("ce_ppo", "ppo", True, False, "PPO fine-tuning of the CE-pretrained LLM policy"),
    AgentInfo("ce_ppo_kl", "ppo", True, False, "CE -> PPO with a KL penalty to the pretrained policy"),
    AgentInfo("logger", "none", False, False, "the production logger: pCTR ranking by a click model on visible features"),
    AgentInfo("watch_greedy", "none", False, True, "maximises this step's expected reward under the true model"),
    AgentInfo("oracle", "none", False, True, "hidden-state oracle (upper reference)"),
)}

AGENTS: tuple[str, ...] = tuple(AGENT_INFO)
"""every agent name, in table order"""
FIXED_AGENTS: tuple[str, ...] = tuple(n for n, a in AGENT_INFO.items() if a.trainer == "none" and not a.from_pretrained)
"""agents with nothing to train and nothing to load: ``train`` evaluates them directly"""
PRETRAINED_AGENTS: tuple[str, ...] = tuple(n for n, a in AGENT_INFO.items() if a.from_pretrained)
"""agents that start from the cross-entropy-pretrained LLM policy"""
LEARNING_AGENTS: tuple[str, ...] = tuple(n for n, a in AGENT_INFO.items() if a.trainer != "none")
"""agents trained on reward (PPO or SlateQ)"""
PRIVILEGED_AGENTS: tuple[str, ...] = tuple(n for n, a in AGENT_INFO.items() if a.privileged)
"""agents that read hidden state or the true model"""


def agent_info(name: str) -> AgentInfo:
    """The row of ``name``; a ValueError naming the valid agents otherwise."""
    try:
        return AGENT_INFO[name]
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; valid: {', '.join(AGENTS)}") from None


def display_name(name: str) -> str:
    """``name`` with :data:`PRIVILEGED_MARK` appended when the agent is privileged; a label such as
    ``"oracle (seed=1)"`` (an agent and what set its runs apart) is marked after the agent's name."""
    agent, sep, rest = name.partition(" (")
    info = AGENT_INFO.get(agent)
    return f"{agent}{PRIVILEGED_MARK}{sep}{rest}" if info is not None and info.privileged else name
