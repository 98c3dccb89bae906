"""``longrec explain``: what a trained slate policy does, and what RL changed, as one HTML report.

Four views of one or two LLM slate policies (by default a run's RL policy and its CE-pretrained
start) on the same fresh simulated users, one module each:

* :mod:`~experiments.explain.attribution` -- per recommendation: Integrated Gradients (Sundararajan
  et al. 2017, via Captum) of each slate slot's pointer logit to the user's history items and to the
  chosen item's feature groups;
* :mod:`~experiments.explain.timeline` -- per user life: the simulator's hidden state (satisfaction,
  fatigue, interests, sessions, churn) under the policy, each click marked by the clicked item's
  hidden quality and clickbait appeal ("why this user left");
* :mod:`~experiments.explain.fingerprint` -- per policy: clickbait shown and clicked, hidden quality,
  topic diversity and coverage, repeats, overall and by day of the users' lives;
* :mod:`~experiments.explain.surrogate` -- a readable surrogate: the policy distilled into a linear
  model (and a depth-3 tree) over named visible features, with its fidelity and its own long-term
  return.

Reading the simulator's hidden state is fine here: this is analysis, never a policy input (the
surrogate's features are visible ones only). :func:`explain` runs everything;
:mod:`~experiments.explain.rollouts` records the lives, :mod:`~experiments.explain.report` writes
the HTML.
"""

from experiments.explain.pipeline import ExplainConfig, ExplainResult, config_from_args, explain

__all__ = ["ExplainConfig", "ExplainResult", "config_from_args", "explain"]
