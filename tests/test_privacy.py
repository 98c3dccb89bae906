"""User-level DP pretraining (Opacus): per-user clipping, the accountant's epsilon, the membership attack, data hygiene."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

from llm_policy.config import DPConfig, LLMNextItemConfig, SlatePolicyConfig  # noqa: E402
from llm_policy.membership import loss_threshold_attack, membership_inference, user_losses  # noqa: E402
from llm_policy.model import SlateModel  # noqa: E402
from llm_policy.pretrain import LogTensors, PretrainConfig, _batch, _loss, pretrain, split_users  # noqa: E402
from llm_policy.privacy import UserLevelDP, used_parameters  # noqa: E402
from tests.test_llm_pretrain import TINY, synthetic_log  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "ml_tiny"


def _tiny_setup(seed=0):
    logs, emb = synthetic_log(num_users=12, steps=6, seed=seed)
    data = LogTensors.from_logs(logs)
    torch.manual_seed(seed)
    model = SlateModel(TINY, emb, int(data.obs["context"].shape[1]))
    rows = np.flatnonzero(data.clicked_position.numpy() >= 0)
    by_user = [rows[data.user_id[rows] == u] for u in np.unique(data.user_id[rows])]
    config = PretrainConfig()

    def user_loss(u):
        return _loss(model, config, *_batch(data, torch.as_tensor(by_user[u]), torch.device("cpu")))

    params = used_parameters(user_loss(0), [p for p in model.parameters() if p.requires_grad])
    return model, user_loss, params, by_user


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_each_users_gradient_is_clipped_to_the_bound(one_torch_thread):
    model, user_loss, params, _ = _tiny_setup()
    bound = 1e-3  # far below the users' raw gradient norms, so every user is clipped
    dp = UserLevelDP(torch.optim.SGD(params, lr=0.0), params, DPConfig(noise_multiplier=1.0, max_grad_norm=bound),
                     num_users=12, expected_users=3, steps=10, seed=0)
    # one user: what reaches the noise is that user's clipped gradient over all their steps
    raw = _flat(torch.autograd.grad(user_loss(4), params)).norm()
    step = dp.step(user_loss, users=[4])
    clipped = _flat([p.summed_grad for p in params]).norm()
    assert step.user_grad_norms[0] == pytest.approx(float(raw), rel=1e-5) and raw > 100 * bound
    assert clipped <= bound * (1 + 1e-5) and clipped == pytest.approx(bound, rel=1e-3)
    # several users: each contributes at most the bound, whatever their raw norms
    step = dp.step(user_loss, users=[0, 5, 7])
    assert (step.user_grad_norms > bound).all()
    assert _flat([p.summed_grad for p in params]).norm() <= 3 * bound * (1 + 1e-5)
    # a user below the bound passes unchanged (the clip factor is min(1, C / norm))
    loose = UserLevelDP(torch.optim.SGD(params, lr=0.0), params, DPConfig(noise_multiplier=1.0, max_grad_norm=1e6),
                        num_users=12, expected_users=3, steps=10, seed=0)
    loose.step(user_loss, users=[4])
    assert torch.allclose(_flat([p.summed_grad for p in params]), _flat(torch.autograd.grad(user_loss(4), params)),
                          atol=1e-7)


def test_clipping_is_chunked_like_one_batch(one_torch_thread):
    """Users clipped in chunks (Opacus's gradient accumulation) sum to the same as all at once; the noise is added
    once, with std sigma * C, and divided by the expected number of users."""
    model, user_loss, params, _ = _tiny_setup()
    sums = []
    for chunk in (2, 32):
        dp = UserLevelDP(torch.optim.SGD(params, lr=0.0), params, DPConfig(noise_multiplier=0.5, max_grad_norm=0.01),
                         num_users=12, expected_users=4, steps=10, seed=3, chunk=chunk)
        dp.step(user_loss, users=[1, 2, 3, 8, 9])
        sums.append(_flat([p.summed_grad for p in params]))
        noise = _flat([p.grad for p in params]) * 4 - sums[-1]
        assert noise.std() == pytest.approx(0.5 * 0.01, rel=0.05)
    assert torch.allclose(sums[0], sums[1], atol=1e-7)


def test_users_are_poisson_sampled_at_the_planned_rate():
    model, user_loss, params, _ = _tiny_setup()
    dp = UserLevelDP(torch.optim.SGD(params, lr=0.0), params, DPConfig(epsilon=2.0), num_users=12, expected_users=3,
                     steps=40, seed=0)
    draws = [dp.sample_users() for _ in range(400)]
    assert dp.sample_rate == pytest.approx(0.25)
    assert np.mean([len(d) for d in draws]) == pytest.approx(3.0, abs=0.2)
    assert len({len(d) for d in draws}) > 3  # a random number of users per step
    assert dp.delta == pytest.approx(1 / 12)


def test_private_pretraining_reports_the_accountants_epsilon(tmp_path, one_torch_thread):
    from opacus.accountants import RDPAccountant

    from llm_policy.sb3_policy import LLMSlatePolicy

    logs, emb = synthetic_log(num_users=40, steps=8)
    cfg = PretrainConfig(epochs=3, batch_size=48, learning_rate=3e-3, patience=3, val_fraction=0.2,
                         dp=DPConfig(epsilon=2.0, max_grad_norm=0.5))
    result = pretrain(logs, emb, config=cfg, model_config=TINY, output_dir=tmp_path, seed=0, progress=False)
    m = result.metrics
    steps, sigma, q = m["dp_steps"], m["dp_noise_multiplier"], m["dp_sample_rate"]
    assert steps == m["dp_planned_steps"] == 3 * math.ceil(32 / round(m["dp_expected_users"]))
    assert m["dp_users"] == 32 and m["dp_delta"] == pytest.approx(1 / 32)  # delta = 1 / training users
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    assert m["dp_epsilon"] == pytest.approx(accountant.get_epsilon(delta=1 / 32))
    assert 1.9 < m["dp_epsilon"] <= 2.0  # the noise multiplier was picked to spend the target
    per_epoch = [row["dp_epsilon"] for row in m["history"]]
    assert per_epoch == sorted(per_epoch) and per_epoch[-1] == pytest.approx(m["dp_epsilon"])
    saved = json.loads((tmp_path / "best" / "config.json").read_text())["privacy"]
    assert saved["epsilon"] == pytest.approx(m["dp_epsilon"]) and saved["unit"] == "user"
    assert json.loads((tmp_path / "metrics.json").read_text())["dp_epsilon"] == pytest.approx(m["dp_epsilon"])
    # no layer was replaced: the saved policy loads and computes what the trained model computes
    loaded = SlateModel.from_pretrained(tmp_path / "best").eval()
    data = LogTensors.from_logs(logs)
    obs = {k: v[:16] for k, v in data.obs.items()}
    with torch.no_grad():
        assert torch.equal(result.model.eval().candidate_scores(result.model.encode(obs)),
                           loaded.candidate_scores(loaded.encode(obs)))
    assert LLMSlatePolicy.from_pretrained(tmp_path / "best").model.num_items == emb.shape[0]


def test_dp_config_errors():
    with pytest.raises(ValueError, match="not both"):
        DPConfig(epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="must be finite"):
        DPConfig(epsilon=math.inf)
    with pytest.raises(ValueError, match="must be > 0.0"):
        DPConfig(epsilon=0.0)
    with pytest.raises(ValueError, match="finetune_text_encoder='none'"):
        PretrainConfig(finetune_text_encoder="lora", dp=DPConfig(epsilon=1.0))
    assert not DPConfig().enabled and DPConfig(noise_multiplier=0.5).enabled
    assert PretrainConfig(dp={"epsilon": 3}).dp == DPConfig(epsilon=3.0)


def test_private_next_item_training_needs_one_window_per_user():
    from llm_policy.next_item import train_llm_next_item

    config = LLMNextItemConfig(objective="next_item", model=SlatePolicyConfig(causal_encoder=False))
    with pytest.raises(ValueError, match="objective='all_positions'"):
        train_llm_next_item([np.arange(5)], [np.arange(3)], np.array([4]), np.eye(6, dtype=np.float32), config,
                            dp=DPConfig(epsilon=1.0))


def test_loss_threshold_attack_auc():
    separated = loss_threshold_attack(np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0]))
    assert separated.auc == 1.0 and separated.advantage == 1.0
    reversed_ = loss_threshold_attack(np.array([1.0, 2.0]), np.array([0.1, 0.2]))
    assert reversed_.auc == 0.0
    rng = np.random.default_rng(0)
    chance = loss_threshold_attack(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(chance.auc - 0.5) < 0.02
    with pytest.raises(ValueError, match="members and non-members"):
        loss_threshold_attack(np.array([]), np.array([1.0]))


def test_membership_inference_on_an_overfitted_policy(one_torch_thread):
    """Training users' logs fit better than unseen users' after many epochs on few users: the attack sees it."""
    from sklearn.metrics import roc_auc_score

    logs, emb = synthetic_log(num_users=60, steps=10, seed=0)
    members, fresh = _users(logs, range(30)), _users(logs, range(30, 60))  # the same catalog and tastes
    cfg = PretrainConfig(epochs=25, batch_size=32, learning_rate=1e-2, patience=25, val_fraction=0.1)
    result = pretrain(members, emb, config=cfg, model_config=TINY, seed=0, progress=False)
    data = LogTensors.from_logs(members)
    train_rows, _ = split_users(data.user_id, 0.1, 0)
    attack = membership_inference(result.model, data.select(train_rows), fresh, cfg)
    _, inside = user_losses(result.model, data.select(train_rows), cfg)
    _, outside = user_losses(result.model, fresh, cfg)
    labels = np.r_[np.ones(inside.size), np.zeros(outside.size)]
    assert attack.auc == pytest.approx(roc_auc_score(labels, -np.r_[inside, outside]))
    assert (attack.members, attack.non_members) == (27, 30)
    assert attack.member_loss < attack.non_member_loss and attack.auc > 0.6


def _users(logs, users):
    """The steps of ``users`` in a synthetic log."""
    keep = np.isin(logs["user_id"], list(users))
    return {key: value[keep] if isinstance(value, np.ndarray) else value for key, value in logs.items()}


def _pretrain_movielens_cli(tmp_path, folder, *extra):
    from experiments import cli

    args = ["pretrain", "-c", "movielens", f"data.path={folder}", "text.encoder=tiny",
            "movielens.train.model.d_model=16", "movielens.train.max_epochs=2", "movielens.train.batch_size=2",
            "--runs-dir", str(tmp_path / "runs"), "--quiet", *extra]
    assert cli.main(args) == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    return run_dir


def test_movielens_pretraining_with_dp_from_the_cli(tmp_path, one_torch_thread, capsys):
    from llm_policy.sb3_policy import LLMSlatePolicy, slate_spaces

    run_dir = _pretrain_movielens_cli(tmp_path, FIXTURE, "pretrain.dp.epsilon=3", "--no-wandb")
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    assert 0 < metrics["pretrain/dp_epsilon"] <= 3.0 and metrics["pretrain/dp_users"] == 2
    assert metrics["pretrain/dp_delta"] == pytest.approx(0.5)
    assert "user-level DP: epsilon = " in capsys.readouterr().out
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["pretrain/dp_epsilon"] for row in logged if "pretrain/dp_epsilon" in row][-1] == pytest.approx(
        metrics["pretrain/dp_epsilon"])
    observation_space, action_space = slate_spaces(N=6, H=10, C=6, D=4, K=3)  # the fixture's 6 movies
    policy = LLMSlatePolicy.from_pretrained(summary["pretrained_policy"], observation_space=observation_space,
                                            action_space=action_space)
    assert policy.model.num_items == 6
    meta = json.loads((Path(summary["pretrained_policy"]) / "config.json").read_text())
    assert meta["privacy"]["epsilon"] == pytest.approx(metrics["pretrain/dp_epsilon"])


def test_dp_keys_are_read_on_both_sources_and_refused_when_unread():
    from experiments.config import ConfigError, load_config
    from experiments.jobs import check_config

    for name in ("movielens", "default", "quickstart"):
        job = "quickstart" if name == "quickstart" else "pretrain"
        text_only = ["policy.item_statistics=false"] if name == "quickstart" else []  # logged counts are not private
        check_config(job, load_config(name, ["pretrain.dp.epsilon=3", "pretrain.dp.max_grad_norm=0.5", *text_only]))
    with pytest.raises(ConfigError, match="set policy.item_statistics=false for private pretraining"):
        check_config("quickstart", load_config("quickstart", ["pretrain.dp.epsilon=3"]))
    with pytest.raises(ConfigError, match="pretrain.epochs=3"):  # the rest of the section stays unread on MovieLens
        check_config("pretrain", load_config("movielens", ["pretrain.epochs=3"]))
    with pytest.raises(ConfigError, match=r"pretrain.dp.delta=0.1 \(pretrain.dp is off"):
        check_config("pretrain", load_config("default", ["pretrain.dp.delta=0.1"]))
    with pytest.raises(ConfigError, match="pretrain.grad_clip=0.5 .with pretrain.dp"):
        check_config("pretrain", load_config("default", ["pretrain.dp.epsilon=3", "pretrain.grad_clip=0.5"]))
    with pytest.raises(ConfigError, match="movielens.train.objective='all_positions'"):
        check_config("pretrain", load_config("movielens", [
            "pretrain.dp.epsilon=3", "movielens.train.objective=next_item", "movielens.train.model.causal_encoder=false",
            "movielens.train.model.pooling=mean"]))
    with pytest.raises(ConfigError, match="needs movielens.train.windows='tail' .*got 'chunks'"):
        check_config("pretrain", load_config("movielens", ["pretrain.dp.epsilon=3", "movielens.train.windows=chunks"]))
    with pytest.raises(ConfigError, match="must be finite"):
        load_config("default", ["pretrain.dp.epsilon=.inf"])


def test_no_raw_user_id_reaches_the_run_folder(tmp_path, one_torch_thread):
    """MovieLens userIds are remapped to 0..U-1 on load; none of them is written anywhere in a run folder (W&B
    offline files included), with or without DP."""
    from envs.movielens import load_movielens

    folder = tmp_path / "ml"
    shutil.copytree(FIXTURE, folder)
    raw_ids = {}
    for name in ("ratings.csv", "tags.csv"):
        lines = (folder / name).read_text().splitlines()
        out = [lines[0]]
        for line in lines[1:]:
            user, rest = line.split(",", 1)
            raw_ids.setdefault(user, str(7_390_000 + 17 * len(raw_ids) + 3))  # distinctive ids, never a round number
            out.append(f"{raw_ids[user]},{rest}")
        (folder / name).write_text("\n".join(out) + "\n")
    data = load_movielens(folder)
    assert set(map(str, data.user_ids)) <= set(raw_ids.values())  # the raw ids stay in the loader's lookup table;
    assert data.num_users == len(data.sequences())  # from here on users are indices 0..U-1
    run_dir = _pretrain_movielens_cli(tmp_path, folder, "pretrain.dp.epsilon=3", "logging.wandb=true",
                                      "logging.mode=offline")
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files) and any(p.name == "metrics.jsonl" for p in files)
    assert any(p.suffix == ".wandb" for p in files)  # what W&B would upload is checked too
    for path in files:
        content = path.read_bytes()
        leaked = [raw for raw in raw_ids.values() if raw.encode() in content]
        assert not leaked, f"{path} holds raw MovieLens userIds {leaked}"


def test_privacy_benchmark_records_each_cell_and_resumes(tmp_path, one_torch_thread, monkeypatch):
    from tests.benchmark_scripts import load_benchmark

    privacy = load_benchmark("privacy")
    argv = ["--out", str(tmp_path), "--parts", "attack", "--epsilons", "2", "inf", "--text-encoder", "tiny",
            "--attack-users", "12", "--attack-epochs", "2"]
    rows = privacy.main(argv)["rows"]
    assert set(rows) == {"2", "inf"} and set(rows["2"]) == {"attack"}
    assert 0.0 <= rows["inf"]["attack"]["auc"] <= 1.0 and "dp_epsilon" not in rows["inf"]["attack"]
    assert 0.0 < rows["2"]["attack"]["dp_epsilon"] <= 2.0
    assert rows["2"]["attack"]["members"] == 11 and rows["2"]["attack"]["non_members"] == 12
    assert (tmp_path / "attack" / "eps_2.json").is_file() and (tmp_path / "privacy.png").is_file()
    # a finished cell is read back, never trained again; --merge-only only aggregates
    monkeypatch.setitem(privacy.RUNNERS, "attack", lambda *args: pytest.fail("a finished cell ran again"))
    assert privacy.main(argv)["rows"] == rows
    assert privacy.main(["--out", str(tmp_path), "--merge-only"])["rows"] == rows
