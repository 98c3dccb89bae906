"""``longrec explain``: attribution completeness, fingerprint numbers, surrogate fidelity, the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("captum")

from agents.baselines import PolicyAgent  # noqa: E402
from envs.registration import make_core  # noqa: E402
from experiments import cli  # noqa: E402
from experiments.explain.attribution import attribute_slate  # noqa: E402
from experiments.explain.fingerprint import ItemFacts, fingerprint, fingerprint_by_day  # noqa: E402
from experiments.explain.rollouts import GreedySlateAgent, record_lives  # noqa: E402
from experiments.explain.surrogate import (  # noqa: E402
    FEATURES,
    SurrogateFeatures,
    TextProbes,
    centre_per_state,
    fidelity,
    fit_surrogate,
)
from llm_policy.config import SlatePolicyConfig  # noqa: E402
from llm_policy.model import SlateModel  # noqa: E402
from llm_policy.sb3_policy import LLMSlatePolicy  # noqa: E402

ENV = "longrec/Video-v0"
ENV_KWARGS = {"num_items": 200}
TINY = dict(d_model=16, n_encoder_layers=1, n_encoder_heads=2, n_decoder_layers=1, n_decoder_heads=2, value_hidden=8)


def tiny_model(seed: int, **config) -> SlateModel:
    torch.manual_seed(seed)
    model = SlateModel(SlatePolicyConfig(**{**TINY, **config}), torch.randn(200, 8), context_dim=4)
    model.obs_sizes = {"N": 200, "H": 20, "C": 20, "D": 4, "K": 5}
    return model.eval()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished ce_ppo run folder on a 200-item Video-v0: an "RL" final policy and a "CE" pretrained one."""
    run = tmp_path_factory.mktemp("explain") / "Video-v0__ce_ppo__0__test"
    tiny_model(0).save_pretrained(run / "checkpoints" / "final_policy")
    tiny_model(1).save_pretrained(run / "checkpoints" / "pretrained" / "best")
    (run / "summary.json").write_text(json.dumps({
        "agent": "ce_ppo", "env": ENV, "status": "finished", "final_checkpoint": "checkpoints/final_policy",
        "pretrained_policy": str(run / "checkpoints" / "pretrained" / "best")}))
    (run / "config.yaml").write_text(f"env:\n  id: {ENV}\n  kwargs: {{num_items: 200}}\n")
    return run


def one_observation(seed: int = 0) -> dict[str, np.ndarray]:
    """A Video-v0 (200 items) observation a few slates into a life, with clicks in the history."""
    core = make_core(ENV, num_users=1, **ENV_KWARGS)
    obs = core.reset(seed=seed)
    rng = np.random.default_rng(seed)
    while not (obs["history_responses"] == 2).any() or (obs["history_responses"] == 0).sum() > 5:
        obs = core.step(rng.permutation(core.num_candidates)[None, : core.slate_size]).observation
    return {key: value[0] for key, value in obs.items()}


# --------------------------------------------------------------------------- attributions


@pytest.mark.parametrize("config", [{}, {"item_id_embeddings": True},
                                    {"item_id_embeddings": True, "text_match_dims": 4, "text_match_init": 3.0},
                                    {"item_statistics": True}],
                         ids=["text", "text+ids", "text+ids+match", "text+statistics"])
def test_attributions_sum_to_the_logit_change_from_the_baseline(config, one_torch_thread):
    model = tiny_model(2, **config)
    if model.item_id_embedding is not None:  # zero-initialised: give the id vectors something to attribute
        torch.nn.init.normal_(model.item_id_embedding.weight, std=0.5)
    obs = one_observation()
    tensors = {key: torch.as_tensor(value)[None] for key, value in obs.items()}
    with torch.no_grad():
        state = model.encode(tensors)
        slate = model.generate(state, 5, greedy=True).slate
        logits = model.score_slate(state, slate).logits[0].gather(1, slate[0][:, None]).squeeze(1).numpy()
    att = attribute_slate(model, obs, slate[0].numpy())
    change = att.logits - att.baseline_logits
    np.testing.assert_allclose(att.logits, logits, atol=1e-5)  # the attributed function is the model's logit
    np.testing.assert_allclose(att.total, change, atol=1e-3 * max(1.0, np.abs(change).max()))  # completeness
    np.testing.assert_allclose(att.total, change - att.delta, atol=1e-6)
    assert att.relative_delta <= 0.01 and np.abs(change).min() > 0
    np.testing.assert_allclose(att.history.sum(1), att.groups["history items: text"] + att.groups["history consumption"]
                               + att.groups.get("history items: id vector", 0.0)
                               + att.groups.get("history items: logged statistics", 0.0), atol=1e-9)
    # the last 3 item features are the logged statistics: their share is reported apart from the text's
    assert ("chosen item: logged statistics" in att.groups) == bool(config.get("item_statistics"))
    if config.get("item_statistics"):
        assert np.abs(att.groups["chosen item: logged statistics"]).max() > 0
    assert att.groups["earlier slate items"][0] == 0.0  # slot 1 has no earlier items
    assert "other candidates" not in att.groups  # a slot's logit reads only its own item's key
    if config.get("text_match_dims"):
        assert np.abs(att.groups["chosen item: text match"]).max() > 0


# --------------------------------------------------------------------------- lives


def test_greedy_agent_plays_the_policy_agents_slates(run_folder, one_torch_thread):
    path = run_folder / "checkpoints" / "final_policy"
    core = make_core(ENV, num_users=6, **ENV_KWARGS)
    obs = core.reset(seed=3)
    ours = GreedySlateAgent(SlateModel.from_pretrained(path), core.slate_size)
    theirs = PolicyAgent(LLMSlatePolicy.from_pretrained(path), deterministic=True)
    for _ in range(4):
        slates = ours.act(obs)
        np.testing.assert_array_equal(slates, theirs.act(obs))
        assert ours.last_scores.shape == (6, core.num_candidates)
        obs = core.step(slates).observation


def test_recorded_lives_match_the_evaluation_protocol(run_folder, one_torch_thread):
    model = SlateModel.from_pretrained(run_folder / "checkpoints" / "final_policy")
    core = make_core(ENV, num_users=3, **ENV_KWARGS)
    trace = record_lives(model, core, seed=5, label="rl")
    for user in range(3):
        rows = trace.rows_of(user)
        np.testing.assert_array_equal(trace.step[rows], np.arange(len(rows)))
        assert trace.reward[rows].sum() == pytest.approx(trace.lives.values["return"][user])
        assert len(rows) == trace.lives.values["length"][user]
        last = rows[-1]
        assert trace.churned[last] or trace.truncated[last]
        assert trace.hidden["satisfaction"][last] == pytest.approx(trace.lives.values["final_satisfaction"][user])
    assert np.all(np.diff(trace.day[trace.rows_of(0)]) >= 0)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_of_hand_built_slates():
    # items 0..5: topics 0 0 1 1 2 2; clickbait: items 0 and 2
    items = ItemFacts(topic=np.array([0, 0, 1, 1, 2, 2]), quality=np.array([-1.0, 1.0, -2.0, 2.0, 0.0, 0.5]),
                      appeal=np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.4]),
                      clickbait=np.array([True, False, True, False, False, False]), num_topics=3)
    user = np.array([0, 0, 1, 0])
    day = np.array([0, 0, 0, 1])
    shown = np.array([[0, 2], [0, 1], [4, 5], [3, 0]])  # user 0 sees item 0 three times
    clicked = np.array([0, -1, 4, 3])
    got = fingerprint(user, shown, clicked, items)
    assert got["clickbait_shown"] == pytest.approx(4 / 8)  # 0, 2, 0, 0
    assert got["clickbait_clicked"] == pytest.approx(1 / 3)  # clicks 0, 4, 3
    assert got["quality_shown"] == pytest.approx((-1 - 2 - 1 + 1 + 0 + 0.5 + 2 - 1) / 8)
    assert got["quality_clicked"] == pytest.approx((-1 + 0 + 2) / 3)
    assert got["ctr"] == pytest.approx(3 / 4)
    assert got["diversity"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)  # distinct topics / K per slate
    assert got["topic_coverage"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # user 0: topics 0, 1; user 1: topic 2
    assert got["item_coverage"] == pytest.approx(6 / 6)
    assert got["repeat_rate"] == pytest.approx(2 / 8)  # item 0 again in rows 1 and 3
    by_day = fingerprint_by_day(user, day, shown, clicked, items)
    assert sorted(by_day) == [0, 1]
    assert by_day[1]["repeat_rate"] == pytest.approx(1 / 2)  # item 0 of day 1 was shown on day 0
    assert by_day[1]["clickbait_shown"] == pytest.approx(1 / 2) and by_day[0]["users"] == 2


# --------------------------------------------------------------------------- surrogate


def test_fidelity_of_identical_monotone_and_reversed_rankings():
    scores = np.random.default_rng(0).standard_normal((50, 20))
    assert fidelity(scores, scores) == {"top1_agreement": 1.0, "spearman": pytest.approx(1.0), "states": 50.0}
    assert fidelity(np.exp(3 * scores), scores)["spearman"] == pytest.approx(1.0)  # ranks only
    reversed_ = fidelity(-scores, scores)
    assert reversed_["top1_agreement"] == 0.0 and reversed_["spearman"] == pytest.approx(-1.0)
    half = scores.copy()
    half[:25] = -half[:25]
    assert fidelity(half, scores)["top1_agreement"] == pytest.approx(0.5)


def _probes_and_features() -> tuple[SurrogateFeatures, dict[str, np.ndarray]]:
    core = make_core(ENV, num_users=32, **ENV_KWARGS)
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((200, 8))
    rows = []
    obs = core.reset(seed=0)
    for _ in range(12):
        slates = np.argsort(rng.random((32, core.num_candidates)), axis=1)[:, : core.slate_size]
        rows.append(obs)
        result = core.step(slates)
        obs = result.observation
    logged = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    shown = logged["candidate_item_ids"][:, :5]
    clicked = np.where(rng.random(len(shown)) < 0.5, shown[:, 0], -1)
    probes = TextProbes.from_slates(embeddings, shown, clicked, rng.random(len(shown)))
    cat = core.catalog
    return SurrogateFeatures(cat.topic, cat.num_topics, cat.popularity, embeddings, probes), logged


def test_surrogate_features_of_a_hand_built_history():
    features, _ = _probes_and_features()
    topic = features.topic[:-1]
    a, b = (int(i) for i in np.flatnonzero(topic == topic[0])[:2])  # two items of one topic
    c = int(np.flatnonzero(topic != topic[0])[0])  # an item of another topic
    n = features.num_items
    obs = {"history_item_ids": np.array([[n, a, c, a]]), "history_responses": np.array([[0, 2, 1, 1]]),
           "candidate_item_ids": np.array([[b, c]])}
    x = features(obs)[0]
    names = list(FEATURES)
    np.testing.assert_allclose(x[:, names.index("topic_click_share")], [1.0, 0.0])  # the one click: a's topic
    np.testing.assert_allclose(x[:, names.index("topic_shown_share")], [2 / 3, 1 / 3])
    np.testing.assert_allclose(x[:, names.index("topic_click_recency")], [2 / 4, 0.0])  # clicked at slot 2 of 4
    np.testing.assert_allclose(x[:, names.index("seen_recently")], [0.0, 1.0])
    np.testing.assert_allclose(x[:, names.index("popularity")], features.popularity[[b, c]])


def test_surrogate_recovers_a_policy_that_is_linear_in_its_features():
    features, logged = _probes_and_features()
    weights = np.array([2.0, -1.0, 0.0, 0.5, 1.5, -0.5, 1.0, -2.0])
    policy_scores = features(logged) @ weights + np.random.default_rng(1).standard_normal((len(logged["context"]), 1))
    surrogate = fit_surrogate(features, logged, policy_scores)
    got = fidelity(surrogate.scores(logged), policy_scores)
    assert got["top1_agreement"] > 0.95 and got["spearman"] > 0.99
    # standardised coefficients = weights x feature sd / score sd
    x = centre_per_state(features(logged))
    expected = weights * x.reshape(-1, len(weights)).std(0) / centre_per_state(policy_scores).std()
    np.testing.assert_allclose(surrogate.coef, expected, atol=0.02)
    strongest = list(FEATURES)[int(np.argmax(np.abs(expected)))]
    assert surrogate.rules().startswith(f"|--- {strongest} (sd)")  # the tree splits on it first


# --------------------------------------------------------------------------- the command


def test_explain_a_run_folder_writes_the_report(run_folder, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "report"
    code = cli.main(["explain", str(run_folder), "--users", "4", "--seed", "2", "--out", str(out), "--wandb", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "explained ce_ppo vs ce_pretrained in " in captured.out and str(out / "report.html") in captured.out
    page = (out / "report.html").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    for name in ("fingerprint.png", "fingerprint_by_day.png", "life_user0.png", "attribution_state0.png",
                 "surrogate_coefficients.png"):
        assert name in figures and f"figures/{name}" in page
    numbers = json.loads((out / "explain.json").read_text())
    assert list(numbers["fingerprint"]) == ["ce_pretrained", "ce_ppo"]
    assert set(numbers["surrogate"]["policies"]) == {"ce_pretrained", "ce_ppo"}
    for state in numbers["attributions"]:
        for panel in state["panels"].values():
            assert panel["relative_delta"] <= 0.01
    assert 0.0 <= numbers["fingerprint"]["ce_ppo"]["clickbait_shown"] <= 1.0
    assert list((out / "wandb").glob("offline-run-*"))  # the figures also went to an (offline) W&B run


def test_help_names_the_options_and_examples(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["explain", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage: longrec explain")
    for needle in ("RUN_FOLDER", "--policy", "--env", "--compare", "--users", "--seed", "--out", "--wandb", "examples:"):
        assert needle in out


def test_a_policy_folder_resolves_with_its_env_and_comparison(run_folder):
    from experiments.explain import config_from_args

    policy = run_folder / "checkpoints" / "final_policy"
    pretrained = run_folder / "checkpoints" / "pretrained" / "best"
    config = config_from_args(policy=str(policy), env=ENV, env_kwargs=ENV_KWARGS, compare=str(pretrained), users=3)
    assert (config.label, config.compare_label, config.compare) == ("final_policy", "pretrained/best", str(pretrained))
    assert config.env_kwargs == ENV_KWARGS and config.visible_logs is None
    assert Path(config.out_dir).parent == Path("runs") and not Path(config.out_dir).exists()
    # a run folder as --compare means its final policy: here the policy itself, so no comparison
    alone = config_from_args(policy=str(policy), env=ENV, env_kwargs=ENV_KWARGS, compare=str(run_folder))
    assert alone.compare is None and alone.compare_label is None
    from_run = config_from_args(run_folder=str(run_folder))
    assert (from_run.label, from_run.compare_label, from_run.compare) == ("ce_ppo", "ce_pretrained", str(pretrained))
    assert from_run.out_dir == str(run_folder / "explain") and from_run.env_kwargs == ENV_KWARGS


def _policy_folder(run: Path) -> str:
    return str(run / "checkpoints" / "final_policy")


BAD = {
    "no run folder": (lambda run, tmp: [str(tmp / "nosuch")], "RUN_FOLDER"),
    "policy as run folder": (lambda run, tmp: [_policy_folder(run)], "use --policy PATH --env ID"),
    "zero users": (lambda run, tmp: [str(run), "--users", "0"], "--users 0: give at least 1 user"),
    "policy without env": (lambda run, tmp: ["--policy", _policy_folder(run)], "--policy needs --env"),
    "unknown env": (lambda run, tmp: ["--policy", _policy_folder(run), "--env", "longrec/Vidio-v0"],
                    "unknown environment 'longrec/Vidio-v0'"),
    "policy misfits env": (lambda run, tmp: ["--policy", _policy_folder(run), "--env", ENV],
                           "does not fit the environment: N=200 (env: 2000)"),
    "both": (lambda run, tmp: [str(run), "--policy", _policy_folder(run)], "not both"),
    "nothing": (lambda run, tmp: [], "nothing to explain"),
    "missing compare": (lambda run, tmp: [str(run), "--compare", str(tmp / "nosuch")], "--compare"),
    "bad env kwarg": (lambda run, tmp: ["--policy", _policy_folder(run), "--env", ENV, "--env-kwarg", "num_itemz=200"],
                      "unknown environment option 'num_itemz'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, run_folder, tmp_path, capsys):
    make_args, expected = BAD[case]
    out = tmp_path / "out"
    assert cli.main(["explain", *make_args(run_folder, tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("longrec explain: error: ") and expected in line, line
    assert not out.exists()
