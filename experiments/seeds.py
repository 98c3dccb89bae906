"""Multi-seed launching: ``longrec train ... --seeds 0-4`` (or ``seeds: [0, 1, 2, 3, 4]`` in a config).

One run per training seed, launched as a grid sweep over ``seed`` (``experiments.sweep``), so
the sweep back-ends serve it: the local process pool (``--workers N``), W&B agents
(``--backend wandb``) or Ray Tune trials (``--backend ray``, ``experiments.sweep_ray``). Every
run of one launch shares a W&B group, so W&B's "Group" view shows the mean and band across
seeds; the launch folder ``runs/seeds/<env>__<experiment>__<time>/`` holds one run folder per
seed and ends with the cross-seed table of ``longrec compare`` (``compare/compare.md``: mean ±
CI, IQM, probability of improvement, paired differences).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from experiments.config import ExperimentConfig

if TYPE_CHECKING:
    from experiments.sweep_ray import RayOptions


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> ``[0, 1, 2, 3, 4]``; ``"0,2,5"`` -> ``[0, 2, 5]``; ``"3"`` -> ``[3]``."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            seeds.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected a range (0-4), a list (0,1,2) or one seed") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seeds must be >= 0")
    return list(dict.fromkeys(seeds))


def launch_name(cfg: ExperimentConfig, when: datetime | None = None) -> str:
    """``<env>__<experiment>__<time>``: the launch folder's name and the W&B group of its runs."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.env.id.split('/')[-1]}__{cfg.name or cfg.agent}__{stamp}"


def seeds_sweep(config: str, seeds: Sequence[int], name: str, job: str = "train") -> dict[str, Any]:
    """The launch as a W&B sweep file: a grid over ``seed`` of ``longrec <job> --config <config>``."""
    return {
        "name": name,
        "program": "longrec",
        "command": ["${env}", "longrec", job, "--config", config, "${args_no_hyphens}"],
        "method": "grid",
        "metric": {"name": "eval/return", "goal": "maximize"},
        "parameters": {"seed": {"values": [int(s) for s in seeds]}},
    }


def run_seeds(cfg: ExperimentConfig, config: str, overrides: Sequence[str], seeds: Sequence[int], workers: int = 1,
              backend: str = "local", out_dir: str | Path | None = None, progress: bool = True,
              project: str = "longrec", entity: str | None = None,
              ray_options: RayOptions | None = None) -> tuple[Path, int]:
    """Train ``cfg`` once per seed; returns the launch folder and an exit code.

    ``config`` and ``overrides`` are what resolved ``cfg`` (the trials rebuild it with ``seed=<s>``,
    ``seeds=[]`` and the launch's W&B group). Local: the runs, ``results.md`` and the comparison are in the
    folder. W&B: the sweep is registered and ``workers`` agents run it here (others may join). Ray: the
    local backend's folder, the runs as Ray Tune trials (``ray_options``; default: a local Ray of ``workers`` CPUs).
    """
    from experiments import sweep as sweeps

    name = launch_name(cfg)
    folder = Path(out_dir) if out_dir else Path(cfg.logging.runs_dir) / "seeds" / name
    folder.mkdir(parents=True, exist_ok=True)
    group = cfg.logging.group or name
    extra = [*overrides, "seeds=[]", f"logging.group={group}"]
    spec_path = folder / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(seeds_sweep(config, seeds, group), sort_keys=False))
    spec = sweeps.load_sweep(spec_path)
    if backend == "wandb":
        spec = sweeps.with_command_overrides(spec, extra)
        sweep_id = sweeps.wandb_sweep_id(spec, project, entity)
        print(f"W&B sweep of {len(seeds)} seeds: {sweep_id} (group {group})")
        return folder, sweeps.run_wandb_agents(sweep_id, workers)
    if backend == "ray":
        from experiments.sweep_ray import RayOptions, run_ray_sweep

        _, results = run_ray_sweep(spec, ray_options or RayOptions(workers=workers), out_dir=folder, overrides=extra,
                                   progress=progress)
    else:
        _, results = sweeps.run_local_sweep(spec, workers=workers, out_dir=folder, overrides=extra, progress=progress)
    finished = [r for r in results if r.status == "finished"]
    for failed in (r for r in results if r.status != "finished"):
        print(f"seed {failed.params.get('seed')}: {failed.status}: {failed.error} ({failed.run_dir})")
    if finished:
        from experiments.compare import compare

        result = compare([folder], folder / "compare", by="agent")
        print(result.markdown)
        print(f"wrote {folder / 'compare'} (compare.md, compare.csv, compare_robust.csv, plots/)")
    print(f"seeds folder: {folder}  ({len(finished)}/{len(results)} runs finished)")
    return folder, 0 if len(finished) == len(results) else 1
