"""Data-parallel CE pretraining (DDP over gloo, 2 CPU processes) and resuming a killed pretraining: two
processes follow one with the same global batch, rank 0 alone writes the run, a killed run ends as an
uninterrupted one, and the combinations that cannot run are refused in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import llm_policy.pretrain as pretraining
from experiments import cli
from experiments.listing import list_runs
from llm_policy.config import DPConfig
from llm_policy.pretrain import STATE_FILE, PretrainConfig, pretrain, read_training_state
from tests.cli_processes import ENV, finish, longrec, only_run, summary
from tests.test_llm_pretrain import TINY, synthetic_log

GAUGE_WEIGHTS = ("model.decoder.key_proj.bias", "decoder.key_proj.bias")
"""A bias added to every candidate's key shifts all pointer logits alike: the softmax ignores it, its exact
gradient is 0, and Adam turns the rounding noise of its gradient into steps of size ~lr in either process."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- how a global batch is shared


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_cover_the_batch_and_weight_to_its_mean_loss(world_size):
    """DDP averages the ranks' gradients; the weighted shares make that average the whole batch's."""
    rng = np.random.default_rng(0)
    for size in range(1, 10):
        batch = torch.arange(100, 100 + size)
        losses = torch.as_tensor(rng.standard_normal(200))
        shares = [pretraining._rank_share(batch, rank, world_size) for rank in range(world_size)]
        counted = torch.cat([idx for idx, rows, _ in shares if rows > 0])
        assert torch.equal(counted, batch)  # disjoint, in order, nothing left out
        assert sum(rows for _, rows, _ in shares) == size
        averaged = sum(weight * losses[idx].mean() for idx, _, weight in shares) / world_size
        assert float(averaged) == pytest.approx(float(losses[batch].mean()), rel=1e-12)
        for idx, rows, weight in shares:  # an empty share still scores a row (the all-reduce needs every rank)
            assert len(idx) >= 1 and (rows > 0 or weight == 0.0)
        if size % world_size == 0:
            assert all(weight == 1.0 for _, _, weight in shares)


# --------------------------------------------------------------------------- 2 processes vs 1, library level

RUNS = {  # name -> (PretrainConfig, log size): uneven shares (37 = 19 + 18) and an empty one (last batch of 1 row)
    "slate": (dict(target="slate", epochs=3, batch_size=37, learning_rate=3e-3, patience=5), (30, 8)),
    "click": (dict(target="click", full_catalog=True, epochs=2, batch_size=191, learning_rate=3e-3, patience=5),
              (30, 8)),
}


def _pretrain_run(name: str, folder: Path | None) -> pretraining.PretrainResult:
    kwargs, (users, steps) = RUNS[name]
    logs, emb = synthetic_log(num_users=users, steps=steps)
    return pretrain(logs, emb, config=PretrainConfig(**kwargs), model_config=TINY, output_dir=folder, seed=0,
                    progress=False)


def _rank_main(rank: int, world_size: int, port: int, folder: Path) -> None:
    """One rank of ``torch.multiprocessing.spawn``: the environment torchrun would set, then every run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        for name in RUNS:
            result = _pretrain_run(name, folder / f"{name}_rank{rank}")
            torch.save({"metrics": result.metrics, "weights": result.model.state_dict(),
                        "best_dir": result.best_dir}, folder / f"{name}_result{rank}.pt")
    finally:
        pretraining.distributed.cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port(), folder), nprocs=2)
    return folder


@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_processes_follow_one_with_the_same_global_batch(name, two_ranks, tmp_path, one_torch_thread):
    ranks = [torch.load(two_ranks / f"{name}_result{rank}.pt", weights_only=False) for rank in (0, 1)]
    single = _pretrain_run(name, tmp_path / "single")
    # the ranks hold one model and agree on every metric (validation is all-reduced)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    # the loss curve of one process with the same global batch
    got, want = ranks[0]["metrics"]["history"], single.metrics["history"]
    assert [row["epoch"] for row in got] == [row["epoch"] for row in want]
    for key in ("train/loss", "val/loss"):
        np.testing.assert_allclose([row[key] for row in got], [row[key] for row in want], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose([row["val/ndcg@10"] for row in got], [row["val/ndcg@10"] for row in want], atol=1e-4)
    assert ranks[0]["metrics"]["best_epoch"] == single.metrics["best_epoch"]
    for key, value in single.model.state_dict().items():
        if key not in GAUGE_WEIGHTS:
            torch.testing.assert_close(ranks[0]["weights"][key], value, rtol=1e-3, atol=1e-4, msg=key)
    # rank 0 alone writes its output folder
    assert ranks[0]["best_dir"] is not None and ranks[1]["best_dir"] is None
    assert sorted(p.name for p in (two_ranks / f"{name}_rank0").iterdir()) == ["best", STATE_FILE, "metrics.json"]
    assert not (two_ranks / f"{name}_rank1").exists()


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_each_rank_gets_its_own_gpu_or_auto_falls_back_to_the_cpu(gpus, monkeypatch):
    """Two ranks on one machine: 'auto' is cuda:LOCAL_RANK only with a GPU per process (NCCL cannot share one,
    which crashed `longrec pretrain --nproc 2` on a 1-GPU machine), else the CPU; 'cuda' is refused then."""
    monkeypatch.setattr(pretraining.distributed, "active", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    rank_device = pretraining.distributed.rank_device
    assert rank_device("auto") == (torch.device("cuda", 1) if gpus == 2 else torch.device("cpu"))
    assert rank_device("cpu") == torch.device("cpu")
    if gpus == 2:
        assert rank_device("cuda") == torch.device("cuda", 1)
        assert rank_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    elif gpus == 1:
        with pytest.raises(ValueError, match=r"device='cuda' with 2 processes on this machine needs a GPU per "
                                             r"process .* torch sees 1; use device=auto or cpu"):
            rank_device("cuda")
    else:
        with pytest.raises(ValueError, match="torch sees no GPU"):
            rank_device("cuda")


def test_what_data_parallel_pretraining_cannot_split_is_refused():
    with pytest.raises(ValueError, match=r"user-level DP pretraining \(config.dp\) runs in one process"):
        pretraining._check_data_parallel(PretrainConfig(dp=DPConfig(epsilon=1.0)))
    with pytest.raises(ValueError, match="finetune_text_encoder='full' runs in one process"):
        pretraining._check_data_parallel(PretrainConfig(target="slate", finetune_text_encoder="full"))


# --------------------------------------------------------------------------- resuming, library level


def assert_same(got, want, where: str = "state") -> None:
    """Equal nested dicts / lists of tensors and plain values (tensors bit for bit)."""
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{where}/{i}")
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    else:
        assert got == want, where


RESUMED = PretrainConfig(target="slate", epochs=4, batch_size=37, learning_rate=3e-3, patience=5)


@pytest.mark.parametrize("crash_after", [2, 4])
def test_a_crashed_pretraining_resumes_to_the_uninterrupted_result(crash_after, tmp_path, monkeypatch,
                                                                   one_torch_thread):
    logs, emb = synthetic_log(num_users=30, steps=8)

    def run(folder: Path, **kwargs):
        return pretrain(logs, emb, config=RESUMED, model_config=TINY, output_dir=folder, seed=0, progress=False,
                        **kwargs)

    straight = run(tmp_path / "straight")
    saved = pretraining._save_training_state

    def save_then_crash(folder, epoch, *args):
        saved(folder, epoch, *args)
        if epoch == crash_after:
            raise RuntimeError("killed")

    monkeypatch.setattr(pretraining, "_save_training_state", save_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "resumed")
    monkeypatch.undo()
    assert read_training_state(tmp_path / "resumed" / STATE_FILE)["epoch"] == crash_after
    resumed = run(tmp_path / "resumed", resume=True)
    assert resumed.metrics == straight.metrics  # every number and the whole history
    assert all(torch.equal(v, straight.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())
    for name in ("best/model.safetensors", "metrics.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert_same(read_training_state(tmp_path / "resumed" / STATE_FILE),
                read_training_state(tmp_path / "straight" / STATE_FILE))
    with pytest.raises(ValueError, match=r"written by another pretraining \(seed: 0, now 1\)"):
        pretrain(logs, emb, config=RESUMED, model_config=TINY, output_dir=tmp_path / "resumed", seed=1,
                 progress=False, resume=True)


# --------------------------------------------------------------------------- the command line

PRETRAIN = ["pretrain", "torch_threads=1", "data.num_users=20", "text.encoder=tiny", "policy.d_model=16",
            "policy.n_encoder_layers=1", "policy.n_decoder_layers=1", "policy.n_encoder_heads=2",
            "policy.n_decoder_heads=2", "pretrain.epochs=5", "pretrain.patience=5", "pretrain.batch_size=16",
            "logging.wandb=false", "--quiet"]
"""CE pretraining of a tiny policy on 20 simulated users' logs: 27 batches x 5 epochs, a few seconds"""

FILE_AUDIT = '''
import os, sys

def _install(log):
    touched, busy = [], [False]

    def hook(event, args):
        if busy[0] or event not in ("open", "os.rename", "os.mkdir", "os.remove", "os.truncate", "os.listdir",
                                    "os.scandir"):
            return
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        else:
            path, writing = args[1] if event == "os.rename" else args[0], event not in ("os.listdir", "os.scandir")
        if isinstance(path, (str, bytes, os.PathLike)):
            touched.append(("w " if writing else "r ") + os.path.abspath(os.fsdecode(path)))

    def dump():
        busy[0] = True
        with open(f"{log}.{os.environ['RANK']}", "w") as handle:
            handle.write("\\n".join(touched))

    import atexit
    atexit.register(dump)
    sys.addaudithook(hook)

if os.environ.get("LONGREC_FILE_AUDIT") and "RANK" in os.environ:
    _install(os.environ["LONGREC_FILE_AUDIT"])
'''
"""``sitecustomize``: each rank of a torchrun launch records every file it opens, writes, lists or moves
(a Python audit hook), as lines ``w PATH`` (writes) and ``r PATH`` (reads)."""


def launch(*args: str, runs_dir: Path | None = None, audit: Path | None = None) -> subprocess.Popen:
    """``longrec ARGS`` in a child process; with ``audit``, every process of the launch records the files it opens."""
    env = dict(ENV)
    if audit is not None:  # every process of the launch imports this sitecustomize first
        (audit / "site").mkdir()
        (audit / "site" / "sitecustomize.py").write_text(FILE_AUDIT)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(audit / "site"), env.get("PYTHONPATH")]))
        env["LONGREC_FILE_AUDIT"] = str(audit / "files")
    return longrec(*args, runs_dir=runs_dir, env=env)


def curve(run: Path) -> list[dict]:
    """The pretraining rows of ``metrics.jsonl`` without their wall-clock time."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def best_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "pretrained" / "best" / "model.safetensors"))


def kill_after_first_epoch(process: subprocess.Popen, runs_dir: Path, pid_of_run=None) -> Path:
    """SIGKILL once the run has saved its first epoch's training state (``pid_of_run``: which process, from the
    run folder; default the one started)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        states = list(runs_dir.glob(f"*/checkpoints/pretrained/{STATE_FILE}"))
        if states:
            run = states[0].parents[2]
            os.kill(pid_of_run(run) if pid_of_run else process.pid, signal.SIGKILL)
            return run
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    raise AssertionError("the run never saved an epoch")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    runs_dir = tmp_path_factory.mktemp("one")
    code, err = finish(longrec(*PRETRAIN, runs_dir=runs_dir))
    assert code == 0, err
    return only_run(runs_dir)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, Path]:
    """``longrec pretrain --nproc 2``, each rank's file accesses recorded; (run folder, audit folder)."""
    runs_dir, audit = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("audit")
    code, err = finish(launch(*PRETRAIN, "--nproc", "2", runs_dir=runs_dir, audit=audit))
    assert code == 0, err
    return only_run(runs_dir), audit


@pytest.mark.expensive
def test_longrec_pretrain_nproc_2_matches_one_process_and_rank_0_alone_uses_the_run_folder(one_process,
                                                                                             two_processes):
    run, audit = two_processes
    assert summary(run)["status"] == "finished" and summary(run)["job_type"] == "pretrain"
    one, two = curve(one_process), curve(run)
    assert len(one) == len(two) == 5 and [sorted(row) for row in one] == [sorted(row) for row in two]
    for key in ("pretrain/train/loss", "pretrain/val/loss"):
        np.testing.assert_allclose([row[key] for row in two], [row[key] for row in one], rtol=1e-5, err_msg=key)
    assert summary(run)["metrics"]["pretrain/best_epoch"] == summary(one_process)["metrics"]["pretrain/best_epoch"]
    expected = best_weights(one_process)
    for key, value in best_weights(run).items():
        if key not in GAUGE_WEIGHTS:
            torch.testing.assert_close(value, expected[key], rtol=1e-3, atol=1e-4, msg=key)
    # the same files as one process's run; rank 1 wrote none of them, and never even read the run folder
    # (so on several machines, only rank 0's needs it)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == sorted(
        p.relative_to(one_process).as_posix() for p in one_process.rglob("*") if p.is_file())
    touched = {rank: {(line[0], os.path.realpath(line[2:])) for line in (audit / f"files.{rank}").read_text()
                      .splitlines()} for rank in (0, 1)}
    assert {("w", str((run / name).resolve())) for name in ("summary.json", "metrics.jsonl")} <= touched[0]
    assert [path for _, path in touched[1] if Path(path).is_relative_to(run.resolve().parent)] == []


@pytest.mark.expensive
def test_a_killed_pretraining_resumes_to_the_uninterrupted_result(one_process, tmp_path):
    process = longrec(*PRETRAIN, runs_dir=tmp_path)
    run = kill_after_first_epoch(process, tmp_path)
    assert finish(process)[0] == -signal.SIGKILL
    epoch = read_training_state(run / "checkpoints" / "pretrained" / STATE_FILE)["epoch"]
    assert 1 <= epoch < 5, "killed after the last epoch: make the run longer"
    assert summary(run)["status"] == "running" and list_runs([tmp_path])[0]["status"] == "died"
    logs = (run / "logs.npz").stat().st_mtime_ns

    code, err = finish(longrec("pretrain", "--resume", str(run), "--quiet"))
    assert code == 0, err
    resumed = summary(run)
    assert resumed["status"] == "finished" and resumed["resumes"][0]["from_epoch"] == epoch
    assert resumed["resumes"][0]["from_status"] == "died"
    # the numbers, the curve and the policy of the uninterrupted run; the logs were not generated again
    assert resumed["metrics"] == summary(one_process)["metrics"]
    assert curve(run) == curve(one_process)
    assert (run / "checkpoints" / "pretrained" / "best" / "model.safetensors").read_bytes() == (
        one_process / "checkpoints" / "pretrained" / "best" / "model.safetensors").read_bytes()
    assert (run / "logs.npz").stat().st_mtime_ns == logs


@pytest.mark.expensive
def test_a_killed_two_process_pretraining_resumes_in_two_processes(two_processes, tmp_path):
    """SIGKILL of rank 0 (the run's pid): torchrun stops rank 1, and ``--resume --nproc 2`` ends exactly as the
    uninterrupted two-process run."""
    straight, _ = two_processes
    process = longrec(*PRETRAIN, "--nproc", "2", runs_dir=tmp_path)
    run = kill_after_first_epoch(process, tmp_path, pid_of_run=lambda run: summary(run)["pid"])
    code, _ = finish(process)
    assert code != 0 and summary(run)["status"] == "running"
    epoch = read_training_state(run / "checkpoints" / "pretrained" / STATE_FILE)["epoch"]
    assert 1 <= epoch < 5

    code, err = finish(longrec("pretrain", "--resume", str(run), "--nproc", "2", "--quiet"))
    assert code == 0, err
    resumed = summary(run)
    assert resumed["status"] == "finished" and resumed["resumes"][0]["from_epoch"] == epoch
    # exactly: the state holds each rank's random state, and a 2-rank all-reduce sum does not depend on order
    assert resumed["metrics"] == summary(straight)["metrics"]
    assert curve(run) == curve(straight)
    assert best_weights(run).keys() == best_weights(straight).keys()
    assert all(torch.equal(value, best_weights(straight)[key]) for key, value in best_weights(run).items())


# --------------------------------------------------------------------------- refused in one line


def fake_run(folder: Path, job_type: str, overrides: list[str], **summary_values) -> Path:
    from experiments.config import load_config, save_config

    folder.mkdir(parents=True)
    save_config(load_config("default", overrides), folder / "config.yaml")
    (folder / "summary.json").write_text(json.dumps({"agent": "ce_ppo_kl", "job_type": job_type, **summary_values}))
    return folder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("train --nproc", "--nproc 2 applies to `longrec pretrain` only: pretrain with `longrec pretrain --nproc 2"),
        ("nproc 0", "--nproc must be >= 1; got 0"),
        ("movielens", "MovieLens next-item pretraining (data.source=movielens) runs in one process: drop --nproc"),
        ("dp", "user-level DP pretraining (pretrain.dp) runs in one process, not 2"),
        ("torchrun train", "torchrun runs `longrec pretrain` only"),
        ("resume a train run", "a `longrec train` run continues with `longrec train --resume"),
        ("resume a finished pretraining", "the run has finished; its policy is"),
        ("resume MovieLens", "MovieLens pretraining (data.source=movielens) keeps no training state"),
        ("resume DP", "user-level DP pretraining (pretrain.dp) does not resume"),
    ],
)
def test_what_cannot_run_fails_in_one_line_before_any_folder(case, expected, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    folder = tmp_path / "run"
    args = {
        "train --nproc": ["train", "--nproc", "2"],
        "nproc 0": ["pretrain", "--nproc", "0"],
        "movielens": ["pretrain", "--nproc", "2", "-c", "movielens"],
        "dp": ["pretrain", "--nproc", "2", "pretrain.dp.epsilon=3"],
        "torchrun train": ["train"],
    }.get(case, ["pretrain", "--resume", str(folder), "--nproc", "2"])
    if "--resume" not in args:
        args += ["--runs-dir", str(runs)]
    if case == "torchrun train":
        monkeypatch.setenv("WORLD_SIZE", "2")
    elif case == "resume a train run":
        fake_run(folder, "train", [], status="interrupted")
    elif case == "resume a finished pretraining":
        fake_run(folder, "pretrain", [], status="finished")
    elif case == "resume MovieLens":
        fake_run(folder, "pretrain", ["data.source=movielens"], status="failed")
    elif case == "resume DP":
        fake_run(folder, "pretrain", ["pretrain.dp.epsilon=3"], status="failed")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert cli.main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"longrec {args[0]}: error: ") and expected in line, line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before and not runs.exists()
