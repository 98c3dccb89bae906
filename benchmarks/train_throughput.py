"""Training throughput: env-steps/s of PPO with ``LLMSlatePolicy`` vs SB3 PPO with an MLP policy.

Both train on the same environment with the same PPO settings (users in
parallel, rollout length, minibatch, epochs) in one process, one after the
other; the ratio LLM / MLP is the cost of the language-model policy (target
>= 0.25 on CPU). Steps/s includes rollouts and updates (SB3's ``learn``).
A warm-up of one rollout + update per policy is not timed. JSON last.

    python benchmarks/train_throughput.py --env longrec/Video-v0 --steps 8192
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--steps", type=int, default=8192, help="timed env steps per policy")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base"), help="LLM policy size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text-encoder", default="minilm",
                        help="the LLM policy's item text encoder: minilm (bundled), tiny (random), or a model folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from agents.ppo import LLM_SIZES, PPOConfig, build_ppo
    from envs.registration import make_core
    from llm_policy.text_encoder import resolve_text_encoder

    work_dir = tempfile.mkdtemp(prefix="train_throughput_")
    text_encoder = resolve_text_encoder(args.text_encoder, work_dir, lambda: make_core(args.env, 1).catalog.texts[:200])

    config = PPOConfig(n_steps=args.n_steps, batch_size=512, n_epochs=4)
    setups = {
        "mlp": dict(policy="mlp"),
        "llm": dict(policy="llm", model_config=LLM_SIZES[args.model], text_encoder=text_encoder),
    }
    rollout = args.num_envs * args.n_steps
    timed = max(rollout, args.steps // rollout * rollout)
    result: dict[str, float | str | int] = {"env": args.env, "num_envs": args.num_envs, "n_steps": args.n_steps,
                                            "llm_model": args.model, "text_encoder": args.text_encoder, "device": args.device,
                                            "threads": args.threads, "timed_steps": timed}
    for name, setup in setups.items():
        model = build_ppo(config, env_id=args.env, num_envs=args.num_envs, device=args.device, seed=0, **setup)
        model.learn(total_timesteps=rollout)  # warm-up: first rollout and update
        start = time.perf_counter()
        model.learn(total_timesteps=timed, reset_num_timesteps=False)
        seconds = time.perf_counter() - start
        result[f"{name}_sps"] = timed / seconds
        params = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
        result[f"{name}_trainable_params"] = params
        print(f"{name}: {timed} steps in {seconds:.1f}s = {timed / seconds:.0f} env-steps/s ({params:,} params)",
              flush=True)
    result["ratio_llm_over_mlp"] = result["llm_sps"] / result["mlp_sps"]
    print(f"LLM / MLP throughput ratio = {result['ratio_llm_over_mlp']:.2f} (target >= 0.25)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
