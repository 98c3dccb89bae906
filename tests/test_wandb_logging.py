"""W&B logging: offline by default, config/group/tags recorded, failures become warnings (no network)."""

from __future__ import annotations

import json
import warnings

import pytest

from experiments.config import load_config
from experiments.run import Run, read_metrics
from experiments.wandb_logging import is_logged_in, resolve_mode, run_group


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, everything W&B writes under tmp_path, no reachable server."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    return tmp_path


def test_mode_is_offline_unless_logged_in_or_asked(wandb_env, monkeypatch):
    assert not is_logged_in()
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert is_logged_in() and resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("online") == "offline"  # the environment variable wins
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"


def test_netrc_login_is_detected(wandb_env, monkeypatch):
    netrc = wandb_env / "netrc"
    netrc.write_text("machine 127.0.0.1\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert is_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    assert not is_logged_in()  # an entry for another host does not count


@pytest.mark.parametrize("wandb_mode", ["offline", None])  # set explicitly, or the default without a login
def test_offline_run_directory_holds_config_group_metrics_table_image_artifact(wandb_env, monkeypatch, wandb_mode):
    if wandb_mode:
        monkeypatch.setenv("WANDB_MODE", wandb_mode)
    cfg = load_config("smoke", ["logging.wandb=true", f"logging.runs_dir={wandb_env / 'runs'}",
                                "ppo.learning_rate=0.000123", "agent=ce_ppo", "name=", "logging.tags=[nightly]"])
    assert run_group(cfg) == "Video-v0__ce_ppo"
    with Run.create(cfg, job_type="train") as run:
        assert run.wandb is not None and run.wandb.active and run.wandb.mode == "offline"
        run.log({"charts/episodic_return": 1.5}, step=10)
        run.log_table("eval/agents", [{"agent": "random", "return": 1.0}, {"agent": "oracle", "return": 3.0}])
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        fig.savefig(run.plots_dir / "curve.png")
        plt.close(fig)
        run.log_plot("plots/curve", run.plots_dir / "curve.png")
        checkpoint = run.checkpoints_dir / "final.zip"
        checkpoint.write_bytes(b"weights")
        run.log_checkpoint(checkpoint)
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "the W&B run lives inside the run folder"
    records = next(offline[0].glob("run-*.wandb")).read_bytes()
    for needle in (b"ppo.learning_rate", b"0.000123", b"Video-v0__ce_ppo", b"nightly",
                   b"charts/episodic_return", b"eval/agents", b"plots/curve"):
        assert needle in records, needle
    summary = json.loads(run.summary_path.read_text())
    # the run id, by which a resumed run (`longrec train --resume`) continues the same W&B run
    assert summary["wandb"] == {"mode": "offline", "url": None, "id": offline[0].name.split("-")[-1]}
    assert summary["status"] == "finished"
    assert not (wandb_env / "wandb-dir").exists() or not any((wandb_env / "wandb-dir").rglob("*.wandb"))


def test_wandb_failure_is_a_warning_never_a_lost_run(wandb_env, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise ConnectionError("no route to api.wandb.ai")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg = load_config("smoke", ["logging.wandb=true", f"logging.runs_dir={wandb_env / 'runs'}"])
    with pytest.warns(RuntimeWarning, match="W&B init failed .*ConnectionError.*local run folder is complete"):
        run = Run.create(cfg)
    with run:
        run.log({"loss": 0.5}, step=1)
        run.update_summary(metrics={"eval/return": 2.0})
    assert [r["loss"] for r in read_metrics(run.path)] == [0.5]
    summary = json.loads(run.summary_path.read_text())
    assert summary["status"] == "finished" and summary["metrics"] == {"eval/return": 2.0}
    assert "ConnectionError" in summary["wandb"]["error"]


def test_failure_mid_run_turns_wandb_off_once(wandb_env):
    cfg = load_config("smoke", ["logging.wandb=true", f"logging.runs_dir={wandb_env / 'runs'}"])
    with Run.create(cfg) as run:
        def broken_log(*args, **kwargs):
            raise OSError("disk full")

        run.wandb.run.log = broken_log
        with pytest.warns(RuntimeWarning, match="W&B log failed"):
            run.log({"x": 1.0}, step=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning: W&B is off now
            run.log({"x": 2.0}, step=2)
    assert [r["x"] for r in read_metrics(run.path)] == [1.0, 2.0]


def test_wandb_false_writes_no_wandb_folder(wandb_env):
    cfg = load_config("smoke", ["logging.wandb=false", f"logging.runs_dir={wandb_env / 'runs'}"])
    with Run.create(cfg) as run:
        run.log({"x": 1.0}, step=1)
    assert run.wandb is None and not (run.path / "wandb").exists()
