"""Bad input that depends on files and environments fails in one line, exit code 2, before any run folder.

Each case below used to fail late (after a run folder was made, often after pretraining) with a
traceback, or not at all (``eval agent=ppo_mlp --checkpoint <an LLM policy>`` printed the LLM policy's
numbers under ``ppo_mlp``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from experiments import cli
from experiments.preflight import checkpoint_kind, resolve_checkpoint
from llm_policy.config import SlatePolicyConfig
from llm_policy.model import SlateModel

SMALL = ["-c", "smoke_eval", "env.kwargs.num_items=200"]
"""an evaluation config on a 200-item Video-v0 catalog"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A saved LLM policy for 200 items, a corrupt one, a fake SB3 zip, truncated and foreign files, a bad
    MovieLens folder, a YAML file with a syntax error, a finished run folder of agent ce_ppo."""
    root = tmp_path_factory.mktemp("preflight")
    config = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_encoder_heads=2, n_decoder_layers=1,
                               n_decoder_heads=2, value_hidden=8)
    torch.manual_seed(0)
    model = SlateModel(config, torch.randn(200, 8), context_dim=4)
    model.obs_sizes = {"N": 200, "H": 20, "C": 20, "D": 4, "K": 5}  # as pretraining records them
    policy = model.save_pretrained(root / "policy")
    corrupt = root / "corrupt_policy"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((policy / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"garbage, not a safetensors header")
    with zipfile.ZipFile(root / "model.zip", "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", b"")
    (root / "truncated.npz").write_bytes(b"PK\x03\x04truncated")
    torch.save({"format": "something-else"}, root / "foreign.pt")
    movielens = root / "ml_no_title"
    movielens.mkdir()
    (movielens / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    (movielens / "movies.csv").write_text("movieId,genres\n1,Drama\n")
    (root / "bad.yaml").write_text("agent: random\nenv: {id: longrec/Video-v0\n")
    (root / "a_file").write_text("not a folder")
    run = root / "run_ce_ppo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"agent": "ce_ppo", "status": "finished",
                                                  "final_checkpoint": "checkpoints/final_policy"}))
    SlateModel.from_pretrained(policy).save_pretrained(run / "checkpoints" / "final_policy")
    return {"root": root, "policy": policy, "corrupt": corrupt, "zip": root / "model.zip", "run": run,
            "truncated": root / "truncated.npz", "foreign": root / "foreign.pt", "movielens": movielens,
            "yaml": root / "bad.yaml", "a_file": root / "a_file"}


CASES = {
    "yaml syntax": (lambda f: ["train", "-c", str(f["yaml"])], "is not valid YAML: expected ',' or '}'"),
    "env kwarg value": (lambda f: ["eval", *SMALL, "agent=random", "env.kwargs.num_candidates=-3"],
                        "config key 'env.kwargs' does not build longrec/Video-v0: session.num_candidates=-3 must be >= 1"),
    "env kwarg name": (lambda f: ["eval", *SMALL, "agent=random", "env.kwargs.num_candiates=5"],
                       "unknown environment option 'num_candiates'; valid options:"),
    "behaviour": (lambda f: ["pretrain", "data.behaviour=clickbait"], "config key 'data.behaviour' must be one of"),
    "missing logs": (lambda f: ["pretrain", f"data.path={f['root'] / 'nosuch.npz'}"], "nosuch.npz' does not exist"),
    "truncated logs": (lambda f: ["pretrain", f"data.path={f['truncated']}"], "truncated.npz' is not a readable .npz"),
    "movielens column": (lambda f: ["pretrain", "-c", "movielens", f"data.path={f['movielens']}"],
                         "movies.csv lacks column(s) ['title']"),
    "missing init_from": (lambda f: ["train", "agent=ce_ppo", f"init_from={f['root'] / 'nosuch'}"],
                          "config key 'init_from': "),
    "corrupt init_from": (lambda f: ["train", "agent=ce_ppo", f"init_from={f['corrupt']}"],
                          "corrupt_policy' is corrupt (Error while deserializing header"),
    "text encoder": (lambda f: ["train", "agent=ppo_scratch", f"text.encoder={f['root'] / 'no_model'}"],
                     "config key 'text.encoder': "),
    "runs dir is a file": (lambda f: ["eval", *SMALL, "agent=random", "--runs-dir", str(f["a_file"])],
                           "config key 'logging.runs_dir' (--runs-dir) must be a folder"),
    "missing checkpoint": (lambda f: ["eval", *SMALL, "agent=ce_ppo", "--checkpoint", str(f["root"] / "nosuch")],
                           "nosuch' does not exist"),
    "truncated checkpoint": (lambda f: ["eval", *SMALL, "agent=ce_ppo", "--checkpoint", str(f["truncated"])],
                             "is not a checkpoint"),
    "foreign .pt": (lambda f: ["eval", *SMALL, "agent=slateq", "--checkpoint", str(f["foreign"])],
                    "foreign.pt' is a file of no longrec kind (format 'something-else')"),
    "LLM policy as ppo_mlp": (lambda f: ["eval", *SMALL, "agent=ppo_mlp", "--checkpoint", str(f["policy"])],
                              "is an LLM policy folder (config.json + model.safetensors, from save_pretrained or "
                              "pretraining), but agent ppo_mlp loads an SB3 PPO .zip"),
    "zip as ce_ppo": (lambda f: ["eval", *SMALL, "agent=ce_ppo", "--checkpoint", str(f["zip"])],
                      "is an SB3 PPO .zip (agent ppo_mlp), but agent ce_ppo loads an LLM policy folder"),
    "run folder of another agent": (lambda f: ["eval", *SMALL, "agent=ce_ppo_kl", "--checkpoint", str(f["run"])],
                                    "trained agent ce_ppo, not ce_ppo_kl; evaluate it with agent=ce_ppo"),
    "policy does not fit the env": (lambda f: ["eval", *SMALL, "agent=ce_ppo", "env.kwargs.num_items=300",
                                               "--checkpoint", str(f["policy"])],
                                    "does not fit the environment: N=200 (env: 300)"),
    "init_from does not fit": (lambda f: ["train", "agent=ce_ppo", f"init_from={f['policy']}"],
                               "does not fit the environment: N=200 (env: 2000)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_no_run_folder(case, files, tmp_path, capsys):
    make_args, expected = CASES[case]
    args = make_args(files)
    if "--runs-dir" not in args:
        args = [*args, "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # (a third-party import may warn first)
    assert line.startswith(f"longrec {args[0]}: error: ") and expected in line, line
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_resolves_to_its_final_policy(files):
    """``eval --checkpoint RUN_FOLDER`` evaluates the run's final policy (its pretrained one for pctr_greedy)."""
    assert checkpoint_kind(files["run"]) == "run"
    assert resolve_checkpoint(files["run"], "ce_ppo", {"N": 200, "D": 4, "K": 5}) == str(
        files["run"] / "checkpoints" / "final_policy")
    assert checkpoint_kind(files["policy"]) == "llm_policy" and checkpoint_kind(files["zip"]) == "sb3_zip"


def test_a_fitting_checkpoint_passes_and_evaluates(files, tmp_path, capsys):
    code = cli.main(["eval", *SMALL, "agent=ce_ppo", "--checkpoint", str(files["run"]), "eval.baselines=[]",
                     "eval.num_users=4", "--runs-dir", str(tmp_path), "--quiet", "--no-wandb"])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = list(tmp_path.iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
