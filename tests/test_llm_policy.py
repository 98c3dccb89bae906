"""Slate decoder invariants, SB3 LLMSlatePolicy on longrec/Video-v0, save/load round trips."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
from llm_policy.config import SlatePolicyConfig
from llm_policy.model import SlateModel
from llm_policy.sb3_policy import LLMSlatePolicy

N, H, C, K, D, B, E = 40, 6, 10, 4, 3, 16, 12
TINY = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_encoder_heads=2, n_decoder_heads=2, value_hidden=16)


def fake_obs(batch=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, N + 1, (batch, H), generator=g)
    resp = torch.randint(1, 3, (batch, H), generator=g)
    hist[:, :2] = N  # left padding
    resp[:, :2] = 0
    cand = torch.stack([torch.randperm(N, generator=g)[:C] for _ in range(batch)])
    return {
        "history_item_ids": hist,
        "history_responses": resp,
        "history_consumption": torch.rand(batch, H, generator=g) * (resp == 2),
        "candidate_item_ids": cand,
        "context": torch.rand(batch, D, generator=g),
    }


def obs_space():
    return spaces.Dict(
        {
            "history_item_ids": spaces.Box(0, N, (H,), np.int64),
            "history_responses": spaces.Box(0, 2, (H,), np.int64),
            "history_consumption": spaces.Box(0, 1, (H,), np.float32),
            "candidate_item_ids": spaces.Box(0, N - 1, (C,), np.int64),
            "context": spaces.Box(0, 1, (D,), np.float32),
        }
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    emb = torch.randn(N, E, generator=torch.Generator().manual_seed(1))
    return SlateModel(TINY, emb, D).eval()


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampled_slates_are_valid_and_logprobs_match_teacher_forcing(model, use_cache):
    obs = fake_obs(64)
    allowed = torch.rand(64, C, generator=torch.Generator().manual_seed(3)) > 0.3
    allowed[:, :K] = True  # at least K allowed per row
    with torch.no_grad():
        state = model.encode(obs, candidate_mask=allowed)
        for seed in range(5):
            out = model.generate(state, K, generator=torch.Generator().manual_seed(seed), use_cache=use_cache)
            slate = out.slate
            assert slate.shape == (64, K)
            assert all(len(set(row)) == K for row in slate.tolist()), "duplicate candidate in a slate"
            assert bool(allowed.gather(1, slate).all()), "masked candidate sampled"
            tf = model.score_slate(state, slate)
            torch.testing.assert_close(out.log_prob, tf.log_prob, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.log_probs, tf.log_probs, atol=1e-5, rtol=0)
            assert bool((out.entropy >= 0).all()) and bool((tf.entropy >= 0).all())
            assert bool((out.log_probs <= 0).all())
        greedy = model.generate(state, K, greedy=True)
        assert bool(allowed.gather(1, greedy.slate).all())


def test_same_seed_same_slates_and_probabilities_normalise(model):
    obs = fake_obs(8)
    with torch.no_grad():
        state = model.encode(obs)
        a = model.generate(state, K, generator=torch.Generator().manual_seed(7)).slate
        b = model.generate(state, K, generator=torch.Generator().manual_seed(7)).slate
        c = model.generate(state, K, generator=torch.Generator().manual_seed(8)).slate
        assert torch.equal(a, b) and not torch.equal(a, c)
        # K=2 slates over C candidates: probabilities of all C*(C-1) ordered pairs sum to 1
        pairs = torch.tensor([(i, j) for i in range(C) for j in range(C) if i != j])
        one = {k: v[:1].expand(len(pairs), *v.shape[1:]) for k, v in obs.items()}
        st = model.encode(one)
        total = model.score_slate(st, pairs).log_prob.exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_full_catalog_scoring_and_masking(model):
    obs = fake_obs(4)
    seen = torch.zeros(4, N, dtype=torch.bool)
    seen[:, :30] = True
    with torch.no_grad():
        state = model.encode(obs, full_catalog=True, candidate_mask=~seen)
        out = model.generate(state, K, generator=torch.Generator().manual_seed(0))
        assert out.slate.min() >= 30  # only unseen catalog items
        scores = model.candidate_scores(state)
    assert scores.shape == (4, N)
    assert bool((scores[:, :30] < -1e30).all())


def test_errors_name_the_problem(model):
    with torch.no_grad():
        state = model.encode(fake_obs(2))
        with pytest.raises(ValueError, match="slate size K=20"):
            model.generate(state, 20)
        bad = fake_obs(2)
        bad["candidate_item_ids"][0, 0] = N
        with pytest.raises(ValueError, match="candidate_item_ids must lie"):
            model.encode(bad)
    with pytest.raises(ValueError, match="encoder must be one of"):
        SlatePolicyConfig(encoder="gpt")
    with pytest.raises(ValueError, match="unknown SlatePolicyConfig keys"):
        SlatePolicyConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="item embeddings cover 5 items"):
        LLMSlatePolicy(obs_space(), spaces.MultiDiscrete([C] * K), lambda _: 1e-3, item_embeddings=torch.zeros(5, 4))


def test_policy_distribution_and_save_pretrained_round_trip(tmp_path):
    emb = torch.randn(N, E, generator=torch.Generator().manual_seed(2))
    policy = LLMSlatePolicy(obs_space(), spaces.MultiDiscrete([C] * K), lambda _: 1e-3,
                            item_embeddings=emb, model_config=TINY, seed=3).eval()
    obs = fake_obs(8)
    with torch.no_grad():
        actions, values, log_prob = policy(obs)
        v2, lp2, ent = policy.evaluate_actions(obs, actions.float())  # rollout buffer stores floats
        torch.testing.assert_close(lp2, log_prob, atol=1e-5, rtol=0)
        torch.testing.assert_close(v2, values)
        assert bool((ent >= 0).all())
        dist = policy.get_distribution(obs)
        torch.testing.assert_close(dist.log_prob(actions), log_prob, atol=1e-5, rtol=0)
        assert dist.entropy().shape == (8,)
        greedy = policy._predict(obs, deterministic=True)
    policy.save_pretrained(tmp_path / "pol")
    loaded = LLMSlatePolicy.from_pretrained(tmp_path / "pol", observation_space=obs_space(),
                                            action_space=spaces.MultiDiscrete([C] * K)).eval()
    # without spaces: rebuilt from the observation sizes recorded in the folder
    rebuilt = LLMSlatePolicy.from_pretrained(tmp_path / "pol").eval()
    assert rebuilt.observation_space == obs_space() and rebuilt.action_space == spaces.MultiDiscrete([C] * K)
    with torch.no_grad():
        assert torch.equal(rebuilt._predict(obs, deterministic=True), greedy)
        assert torch.equal(loaded._predict(obs, deterministic=True), greedy)
        torch.testing.assert_close(loaded.predict_values(obs), values)
        _, lp3, _ = loaded.evaluate_actions(obs, actions)
        torch.testing.assert_close(lp3, log_prob, atol=1e-6, rtol=0)


def test_pretrained_encoder_mode_reuses_hf_layers(tmp_path):
    from llm_policy.tiny import make_tiny_bert

    path = make_tiny_bert(tmp_path / "bert", ["a b c"], hidden_size=24, num_attention_heads=2)
    cfg = SlatePolicyConfig(d_model=16, encoder="pretrained", encoder_name_or_path=str(path), n_decoder_heads=2,
                            n_decoder_layers=1, train_pretrained_encoder=False)
    model = SlateModel(cfg, torch.randn(N, E), D).eval()
    assert model.encoder.dim == 24
    assert not any(p.requires_grad for p in model.encoder.transformer.parameters())
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(path, local_files_only=True)
    torch.testing.assert_close(model.encoder.transformer.encoder.layer[0].attention.self.query.weight,
                               ref.encoder.layer[0].attention.self.query.weight)
    obs = fake_obs(4)
    model.save_pretrained(tmp_path / "saved")
    loaded = SlateModel.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        s1, s2 = model.encode(obs), loaded.encode(obs)
        torch.testing.assert_close(s1.pooled, s2.pooled)
        slate = model.generate(s1, K, greedy=True).slate
        torch.testing.assert_close(model.score_slate(s1, slate).log_prob, loaded.score_slate(s2, slate).log_prob)


@pytest.fixture(scope="module")
def video_ppo():
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    venv = envs.make_sb3_vec("longrec/Video-v0", num_envs=8)
    venv.seed(0)
    n_items = envs.get_core(venv).catalog.num_items
    emb = torch.randn(n_items, E, generator=torch.Generator().manual_seed(0))
    model = PPO(LLMSlatePolicy, venv, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu",
                policy_kwargs=dict(item_embeddings=emb, model_config=TINY))
    return venv, model


def test_ppo_update_reaches_every_part_of_the_policy_and_keeps_slates_distinct(video_ppo):
    venv, model = video_ppo
    before = {k: p.detach().clone() for k, p in model.policy.named_parameters() if p.requires_grad}
    model.learn(512)
    assert model.num_timesteps >= 512
    changed = [k for k, p in model.policy.named_parameters() if p.requires_grad and not torch.equal(before[k], p)]
    assert len(changed) > 0.8 * len(before)
    assert any(k.startswith("model.decoder.gpt") for k in changed)
    assert any(k.startswith("model.value_head") for k in changed)
    obs = venv.reset()
    actions, _ = model.predict(obs)
    assert actions.shape == (8, venv.action_space.shape[0])
    assert all(len(set(r)) == len(r) for r in actions.tolist())


def test_sb3_save_load_round_trip(video_ppo, tmp_path):
    from stable_baselines3 import PPO

    venv, model = video_ppo
    obs = venv.reset()
    a1, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "ppo.zip")
    loaded = PPO.load(tmp_path / "ppo.zip", device="cpu")
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    t, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        torch.testing.assert_close(model.policy.predict_values(t), loaded.policy.predict_values(t))
    # policy-only save/load (BasePolicy.save/load)
    model.policy.save(tmp_path / "policy.pt")
    pol = LLMSlatePolicy.load(tmp_path / "policy.pt", device="cpu")
    np.testing.assert_array_equal(pol.predict(obs, deterministic=True)[0], a1)
    # same seed -> same sampled slates through SB3's predict
    torch.manual_seed(5)
    s1, _ = model.predict(obs)
    torch.manual_seed(5)
    s2, _ = loaded.predict(obs)
    np.testing.assert_array_equal(s1, s2)


def test_ppo_on_plain_gymnasium_env():
    from stable_baselines3 import PPO

    env = gym.make("longrec/Video-v0")
    n_items = envs.get_core(env).catalog.num_items
    model = PPO(LLMSlatePolicy, env, n_steps=32, batch_size=32, n_epochs=1, seed=1, device="cpu",
                policy_kwargs=dict(item_embeddings=torch.randn(n_items, E), model_config=TINY, seed=1))
    model.learn(64)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs)
    assert action.shape == env.action_space.shape and len(set(action.tolist())) == len(action)
    assert env.action_space.contains(action)


def _ppo_rollout(policy_seed):
    """One SB3 rollout (4 envs x 8 steps) of a fresh tiny PPO: the policy and its rollout buffer."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    venv = envs.make_sb3_vec("longrec/Video-v0", num_envs=4)
    venv.seed(0)
    emb = torch.randn(envs.get_core(venv).catalog.num_items, E, generator=torch.Generator().manual_seed(0))
    model = PPO(LLMSlatePolicy, venv, n_steps=8, batch_size=16, seed=0, device="cpu",
                policy_kwargs=dict(item_embeddings=emb, model_config=TINY, seed=policy_seed))
    _, callback = model._setup_learn(32)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    buffer = model.rollout_buffer
    obs = obs_as_tensor({k: v.reshape(-1, *v.shape[2:]) for k, v in buffer.observations.items()}, "cpu")
    actions = torch.as_tensor(buffer.actions.reshape(-1, buffer.actions.shape[-1]))
    return model.policy, buffer, obs, actions


@pytest.mark.parametrize("policy_seed", [None, 3])
def test_ppo_rollout_log_probs_score_the_sampled_slates_and_repeat_exactly(policy_seed, one_torch_thread):
    policy, buffer, obs, actions = _ppo_rollout(policy_seed)
    _, again, _, _ = _ppo_rollout(policy_seed)
    for name in ("actions", "log_probs", "values"):
        np.testing.assert_array_equal(getattr(buffer, name), getattr(again, name), err_msg=name)
    with torch.no_grad():
        values, log_prob, _ = policy.evaluate_actions(obs, actions)  # the rollout buffer stores float actions
        rescored = policy.get_distribution(obs).log_prob(actions)
    np.testing.assert_allclose(log_prob.numpy(), buffer.log_probs.reshape(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(rescored, log_prob)
    np.testing.assert_allclose(values.numpy().reshape(-1), buffer.values.reshape(-1), atol=1e-6, rtol=1e-6)


def test_distribution_log_prob_always_scores_the_given_slates():
    from llm_policy.distribution import SlateDistribution

    emb = torch.randn(N, E, generator=torch.Generator().manual_seed(2))
    model = SlateModel(TINY, emb, D).eval()
    dist = SlateDistribution(K)
    with torch.no_grad():
        state = model.encode(fake_obs(8))
        slates, sampled = dist.log_prob_from_params(model, state, torch.Generator().manual_seed(0))
        reference = model.generate(state, K, generator=torch.Generator().manual_seed(0))
        assert torch.equal(slates, reference.slate) and torch.equal(sampled, reference.log_prob)
        other = slates.roll(1, dims=1)  # same items, another order: another probability
        torch.testing.assert_close(dist.log_prob(other), model.score_slate(state, other).log_prob, atol=0, rtol=0)
        torch.testing.assert_close(dist.log_prob(slates), model.score_slate(state, slates).log_prob, atol=0, rtol=0)


@pytest.mark.parametrize("argument", [{"net_arch": [64]}, {"ortho_init": True}, {"activation_fn": torch.nn.ReLU}])
def test_policy_refuses_mlp_head_arguments(argument):
    with pytest.raises(ValueError, match="no MLP head"):
        LLMSlatePolicy(obs_space(), spaces.MultiDiscrete([C] * K), lambda _: 1e-3,
                       item_embeddings=torch.zeros(N, E), **argument)
    with pytest.raises(ValueError, match="use_sde"):
        LLMSlatePolicy(obs_space(), spaces.MultiDiscrete([C] * K), lambda _: 1e-3,
                       item_embeddings=torch.zeros(N, E), use_sde=True)


def test_pretrained_encoder_with_lora_trains_adapters_and_round_trips(tmp_path):
    pytest.importorskip("peft")
    from llm_policy.tiny import make_tiny_bert

    path = make_tiny_bert(tmp_path / "bert", ["a b c"], hidden_size=24, num_attention_heads=2)
    cfg = SlatePolicyConfig(d_model=16, encoder="pretrained", encoder_name_or_path=str(path), n_decoder_heads=2,
                            n_decoder_layers=1, encoder_lora_rank=2)
    model = SlateModel(cfg, torch.randn(N, E), D)
    trainable = [n for n, p in model.encoder.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    obs = fake_obs(8)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    state = model.encode(obs)
    (-model.score_slate(state, torch.arange(K).expand(8, K)).log_prob.mean()).backward()
    opt.step()
    assert any(not torch.equal(lora_before[n], p) for n, p in model.named_parameters() if "lora_B" in n)
    model.eval().save_pretrained(tmp_path / "saved")
    loaded = SlateModel.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(obs).pooled, loaded.encode(obs).pooled)
    with pytest.raises(ValueError, match="needs encoder='pretrained'"):
        SlatePolicyConfig(encoder_lora_rank=4)


def test_causal_encoder_ignores_later_tokens_and_round_trips(tmp_path):
    from llm_policy.state_encoder import running_mean_pool

    torch.manual_seed(0)
    n, h = 20, 10
    config = SlatePolicyConfig(d_model=32, n_encoder_layers=2, n_decoder_layers=1, causal_encoder=True, max_history=16)
    model = SlateModel(config, torch.randn(n, 8), 3).eval()
    hist = torch.randint(0, n, (3, h))
    hist[0, :4] = n  # left padding
    valid = hist != n
    obs = {"history_item_ids": hist, "history_responses": valid.long() * 2, "history_consumption": valid.float(),
           "context": torch.randn(3, 3)}
    later = hist.clone()
    later[:, 7:] = (hist[:, 7:] + 1) % n
    with torch.no_grad():
        enc = model.encode(obs, full_catalog=True)
        enc2 = model.encode({**obs, "history_item_ids": later}, full_catalog=True)
        per_prefix = model.encode(obs, full_catalog=True, all_positions=True).pooled
    # token t = context (0) or history slot t - 1: tokens 0..7 only see slots < 7
    torch.testing.assert_close(enc.states[:, :8], enc2.states[:, :8], atol=0, rtol=0)
    assert (enc.states[:, 8:] - enc2.states[:, 8:]).abs().max() > 1e-3
    torch.testing.assert_close(per_prefix[:, -1], enc.pooled)  # last prefix = mean pooling
    torch.testing.assert_close(per_prefix, running_mean_pool(enc.states, enc.mask))
    torch.testing.assert_close(per_prefix[0, 3], enc.states[0, 0])  # only the context token is valid so far
    model.save_pretrained(tmp_path / "m")
    loaded = SlateModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.causal_encoder and loaded.encoder.transformer.config.is_decoder
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(obs, full_catalog=True).states, enc.states)
    default = SlateModel(SlatePolicyConfig(d_model=32, max_history=16), torch.randn(n, 8), 3)
    assert not default.encoder.transformer.config.is_decoder
    with pytest.raises(ValueError, match="causal_encoder"):
        default.encode(obs, full_catalog=True, all_positions=True)


def test_last_pooling_reads_the_last_valid_token_and_matches_per_prefix_states():
    torch.manual_seed(0)
    n, h = 20, 6
    config = SlatePolicyConfig(d_model=16, n_encoder_heads=2, n_decoder_heads=2, n_decoder_layers=1, causal_encoder=True,
                               pooling="last", max_history=8)
    model = SlateModel(config, torch.randn(n, 8), 2).eval()
    hist = torch.randint(0, n, (3, h))
    hist[0, :2] = n  # left padding: the last valid token is still the last slot
    hist[2, :] = n  # no history: the context token is the state
    valid = hist != n
    obs = {"history_item_ids": hist, "history_responses": valid.long() * 2, "history_consumption": valid.float(),
           "context": torch.randn(3, 2)}
    with torch.no_grad():
        enc = model.encode(obs, full_catalog=True)
        per_prefix = model.encode(obs, full_catalog=True, all_positions=True).pooled
    torch.testing.assert_close(enc.pooled[:2], enc.states[:2, -1])
    torch.testing.assert_close(enc.pooled[2], enc.states[2, 0])
    torch.testing.assert_close(per_prefix, enc.states)
    with pytest.raises(ValueError, match="pooling"):
        SlatePolicyConfig(pooling="max")


def test_pointer_scale_multiplies_the_logits():
    torch.manual_seed(0)
    items = torch.randn(12, 8)
    obs = {"history_item_ids": torch.randint(0, 12, (2, 4)), "history_responses": torch.full((2, 4), 2),
           "history_consumption": torch.ones(2, 4), "context": torch.zeros(2, 2)}
    scaled_dot = SlateModel(SlatePolicyConfig(d_model=16, n_decoder_layers=1), items, 2).eval()
    unit = SlateModel(SlatePolicyConfig(d_model=16, n_decoder_layers=1, pointer_scale=1.0), items, 2).eval()
    unit.load_state_dict(scaled_dot.state_dict())
    with torch.no_grad():
        a = scaled_dot.candidate_scores(scaled_dot.encode(obs, full_catalog=True))
        b = unit.candidate_scores(unit.encode(obs, full_catalog=True))
    torch.testing.assert_close(b, a * 4.0)  # 1 vs 1/sqrt(16)
    with pytest.raises(ValueError, match="pointer_scale"):
        SlatePolicyConfig(pointer_scale=0.0)


def test_restrict_item_ids_scores_inactive_items_by_features_alone(tmp_path):
    torch.manual_seed(0)
    n = 10
    features = torch.randn(n, 8)
    model = SlateModel(SlatePolicyConfig(d_model=16, n_decoder_layers=1, item_id_embeddings=True), features, 2)
    torch.nn.init.normal_(model.item_id_embedding.weight)
    active = np.arange(n) % 2 == 0
    model.restrict_item_ids(active)
    reprs = model.item_repr(None)
    torch.testing.assert_close(reprs[~active], features[~active])
    assert (reprs[active] - features[active]).abs().min() > 0
    reprs.sum().backward()
    grad_rows = model.item_id_embedding.weight.grad.abs().sum(dim=1)
    assert torch.all(grad_rows[:n][~active] == 0) and torch.all(grad_rows[:n][active] > 0)
    loaded = SlateModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    torch.testing.assert_close(loaded.item_repr(None), model.item_repr(None).detach())
    with pytest.raises(ValueError, match="shape"):
        model.restrict_item_ids(np.ones(n + 1, dtype=bool))
    with pytest.raises(ValueError, match="item_id_embeddings"):
        SlateModel(SlatePolicyConfig(d_model=16), features, 2).restrict_item_ids(active)


def test_item_id_dropout_drops_id_vectors_in_training_only():
    torch.manual_seed(0)
    n = 400
    features = torch.randn(n, 8)
    config = SlatePolicyConfig(d_model=16, n_decoder_layers=1, item_id_embeddings=True, item_id_dropout=0.5)
    model = SlateModel(config, features, 2)
    torch.nn.init.normal_(model.item_id_embedding.weight)
    dropped = (model.train().item_repr(None) == features).all(dim=1).float().mean()
    assert 0.4 < dropped < 0.6
    torch.testing.assert_close(model.eval().item_repr(None), features + model.item_id_embedding.weight[:n])
    with pytest.raises(ValueError, match="item_id_dropout"):
        SlatePolicyConfig(item_id_dropout=1.0)


def test_text_match_adds_w_times_the_cosine_with_the_last_clicked_item(tmp_path):
    torch.manual_seed(0)
    n, m = 12, 5
    features = torch.randn(n, 8)
    config = SlatePolicyConfig(d_model=16, n_decoder_layers=1, text_match_dims=m, text_match_init=3.0)
    with_match = SlateModel(config, features, 2).eval()
    with torch.no_grad():  # no id vectors here: every candidate is scored by its features and gets the offset
        with_match.text_match_offset.fill_(0.5)
    without = SlateModel(SlatePolicyConfig(d_model=16, n_decoder_layers=1), features, 2).eval()
    without.load_state_dict({k: v for k, v in with_match.state_dict().items() if not k.startswith("text_match")})
    hist = torch.tensor([[n, 3, 7, 2], [n, n, 5, 9], [n, n, n, n]])
    responses = torch.tensor([[0, 2, 2, 1], [0, 0, 2, 2], [0, 0, 0, 0]])  # user 0's last item was skipped
    obs = {"history_item_ids": hist, "history_responses": responses, "history_consumption": (responses == 2).float(),
           "candidate_item_ids": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]), "context": torch.zeros(3, 2)}
    with torch.no_grad():
        gap = with_match.candidate_scores(with_match.encode(obs)) - without.candidate_scores(without.encode(obs))
        catalog = with_match.candidate_scores(with_match.encode(obs, full_catalog=True))
    unit = torch.nn.functional.normalize(features[:, :m], dim=1)
    expected = 3.0 * torch.stack([unit[obs["candidate_item_ids"][0]] @ unit[7], unit[obs["candidate_item_ids"][1]] @ unit[9]])
    torch.testing.assert_close(gap[:2], expected + 0.5, atol=1e-5, rtol=1e-5)  # last *clicked* item: 7, then 9
    torch.testing.assert_close(gap[2], torch.full((4,), 0.5), atol=1e-5, rtol=1e-5)  # no clicked item: no cosine
    torch.testing.assert_close(catalog.gather(1, obs["candidate_item_ids"]), gap + without.candidate_scores(without.encode(obs)))
    loaded = SlateModel.from_pretrained(with_match.save_pretrained(tmp_path / "m")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.candidate_scores(loaded.encode(obs)), with_match.candidate_scores(with_match.encode(obs)))
    with pytest.raises(ValueError, match="text_match_dims=9 exceeds"):
        SlateModel(SlatePolicyConfig(d_model=16, text_match_dims=9), features, 2)
    with pytest.raises(ValueError, match="text_match_dims"):
        SlatePolicyConfig(text_match_dims=-1)
