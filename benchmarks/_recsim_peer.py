"""Drivers for Google RecSim's interest_evolution environment (the peer system).

RecSim (Ie et al., 2019, "RecSim: A Configurable Simulation Platform for
Recommender Systems") ships ``recsim.environments.interest_evolution``; longrec's
``longrec/InterestEvolution-v0`` re-implements its dynamics batched in numpy.
This module builds and steps the *original* RecSim environment for the fidelity
and throughput benchmarks. It assembles the same parts as RecSim's
``create_environment`` (utility-model user sampler, one-hot cluster video
sampler, multinomial proportional choice model, clicked-watch-time reward) but
drives ``recsim.simulator.environment.SingleUserEnvironment`` directly instead
of the old-``gym`` wrapper, which is not needed to step the dynamics.

RecSim draws the click and the interest-update coin flips from the *global*
``np.random`` state; the drivers seed it (and restore it afterwards) so runs are
reproducible. recsim is an optional dependency (``pip install recsim-no-tf six
absl-py gym``, the ``peers`` extra); ``recsim_available()`` tells whether it is
importable.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np

POLICIES = ("random", "myopic", "quality_oracle")

# A slate policy sees (true user interests (F,), candidate features (C, F),
# candidate hidden quality (C,), slate size, rng) and returns K candidate indices.
SlatePolicy = Callable[[np.ndarray, np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


def recsim_available() -> bool:
    """Whether RecSim (and its old-gym dependency) can be imported."""
    try:
        _import_recsim()
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def _import_recsim():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # old gym prints a deprecation banner on import; keep benchmark output clean
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            from recsim import choice_model
            from recsim.environments import interest_evolution
            from recsim.simulator import environment
    return choice_model, interest_evolution, environment


@contextlib.contextmanager
def global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed the global ``np.random`` that RecSim's choice model draws from, then restore it."""
    saved_state = np.random.get_state()  # noqa: NPY002 - RecSim itself uses the global state
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved_state)  # noqa: NPY002


def random_policy(interests, features, quality, slate_size, rng):
    """K distinct candidates uniformly at random."""
    return rng.permutation(features.shape[0])[:slate_size]


def myopic_policy(interests, features, quality, slate_size, rng):
    """K candidates with the highest true affinity ``interests . features``."""
    return np.argsort(-(features @ interests), kind="stable")[:slate_size]


def quality_oracle_policy(interests, features, quality, slate_size, rng):
    """K candidates with the highest hidden document quality."""
    return np.argsort(-quality, kind="stable")[:slate_size]


POLICY_FNS: dict[str, SlatePolicy] = {
    "random": random_policy,
    "myopic": myopic_policy,
    "quality_oracle": quality_oracle_policy,
}


def make_recsim_env(num_candidates: int, slate_size: int, seed: int = 0):
    """RecSim's interest_evolution environment as ``create_environment`` builds it
    (resampled candidates every step), without the gym wrapper."""
    choice_model, ie, environment = _import_recsim()
    user_model = ie.IEvUserModel(
        slate_size,
        choice_model_ctor=choice_model.MultinomialProportionalChoiceModel,
        response_model_ctor=ie.IEvResponse,
        user_state_ctor=ie.IEvUserState,
        seed=seed,
    )
    document_sampler = ie.UtilityModelVideoSampler(doc_ctor=ie.IEvVideo, seed=seed)
    return environment.SingleUserEnvironment(
        user_model, document_sampler, num_candidates, slate_size, resample_documents=True
    )


def _candidates(env, doc_obs) -> tuple[np.ndarray, np.ndarray]:
    doc_ids = list(doc_obs)
    features = np.stack([np.asarray(doc_obs[d], dtype=np.float64) for d in doc_ids])
    docs = env.candidate_set.get_documents(doc_ids)
    quality = np.array([doc.quality for doc in docs], dtype=np.float64)
    return features, quality


def run_recsim_episodes(
    policy: str, num_candidates: int, slate_size: int, episodes: int, seed: int = 0
) -> np.ndarray:
    """Returns (total clicked watch time) of ``episodes`` RecSim episodes under ``policy``."""
    if policy not in POLICY_FNS:
        raise ValueError(f"unknown policy {policy!r}; valid: {sorted(POLICY_FNS)}")
    act = POLICY_FNS[policy]
    env = make_recsim_env(num_candidates, slate_size, seed)
    rng = np.random.default_rng(seed)
    returns = np.zeros(episodes)
    with global_numpy_seed(seed):
        for episode in range(episodes):
            _, doc_obs = env.reset()
            done = False
            while not done:
                interests = env.user_model._user_state.user_interests
                features, quality = _candidates(env, doc_obs)
                slate = act(interests, features, quality, slate_size, rng)
                _, doc_obs, responses, done = env.step(list(slate))
                returns[episode] += sum(r.watch_time for r in responses if r.clicked)
    return returns


def recsim_steps_per_second(
    num_candidates: int = 10, slate_size: int = 2, num_steps: int = 5000, seed: int = 0
) -> float:
    """Environment steps per second of RecSim (one user, random slates, resets included)."""
    env = make_recsim_env(num_candidates, slate_size, seed)
    rng = np.random.default_rng(seed)
    slates = [list(rng.permutation(num_candidates)[:slate_size]) for _ in range(256)]
    with global_numpy_seed(seed):
        env.reset()
        start = time.perf_counter()
        for step in range(num_steps):
            _, _, _, done = env.step(slates[step % 256])
            if done:
                env.reset()
        elapsed = time.perf_counter() - start
    return num_steps / elapsed
