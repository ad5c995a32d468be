"""GRPO step: taosr vs TRL's GRPOTrainer, side by side on the same CPU setup.

Same tiny model (built once by taosr's factory and loaded by both from the same folder), same
synthetic prompts, same G, completion length, prompts per step, sampling temperature, learning
rate, clip range and loss aggregation (token mean / TRL "dapo"), same outcome reward function.
Each framework runs in its own subprocess so peak memory (max RSS) is its own.

    python benchmarks/grpo_vs_trl.py [--steps 6] [--warmup 2] [--prompts 4] [--G 8] [--max-new 64]

Prints seconds per step, rollout tokens/s and peak RSS for both, and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def build_model(workdir: str, preset: str, n_train: int) -> str:
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer, save_export

    dm = RelevanceDataModule(synth=SynthConfig(n_train=n_train, n_val=8, n_test=8), data_dir=os.path.join(workdir, "data"))
    dm.setup("fit")
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=preset, cache_dir=os.path.join(workdir, "models")),
                                          corpus=dm.corpus)
    return save_export(model, tok, os.path.join(workdir, "policy"))


def prompts(workdir: str, n_train: int, tok, k: int):
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig

    dm = RelevanceDataModule(synth=SynthConfig(n_train=n_train, n_val=8, n_test=8), data_dir=os.path.join(workdir, "data"))
    dm.setup("fit")
    dm.attach_tokenizer(tok)
    return dm, dm.splits["train"][:k]


def run_taosr(a) -> dict:
    import lightning.pytorch as pl
    import torch

    from taosr.callbacks.reward import RewardModelCallback
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.eval.generation import GenerationSpec
    from taosr.methods.grpo import GRPOModule
    from taosr.models.factory import ModelSpec

    torch.manual_seed(0)
    dm = RelevanceDataModule(view="rl", synth=SynthConfig(n_train=a.n_train, n_val=8, n_test=8),
                             data_dir=os.path.join(a.workdir, "data"), batch_size=a.prompts, val=None, test=None)
    module = GRPOModule(model=ModelSpec(name_or_path=a.model), lr=a.lr, scheduler="constant", micro_batch_size=a.prompts * a.G,
                        eps_low=0.2, eps_high=0.2, beta=0.0, loss_agg="token_mean", dynamic_sampling=False, export_dir=None)
    times, toks = [], []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.t0)
            r = batch["rollout"]
            toks.append((float(r.completion_mask.sum()), r.timings["rollout"]))

    # the Timer goes first so its clock includes rollout and reward callbacks
    cbs = [Timer(), RolloutCallback(num_generations=a.G, generation=GenerationSpec(do_sample=True, temperature=1.0,
                                                                                 max_new_tokens=a.max_new)),
           RewardModelCallback()]
    trainer = pl.Trainer(max_steps=a.warmup + a.steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=cbs)
    trainer.fit(module, dm)
    t = times[a.warmup:]
    tk = toks[a.warmup:]
    return {"s_per_step": sum(t) / len(t), "rollout_tok_s": sum(x for x, _ in tk) / sum(y for _, y in tk),
            "completion_tokens": sum(x for x, _ in tk) / len(tk)}


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from taosr.prompts import policy_prompt
    from taosr.reasoning.format import parse_reasoning

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    dm, rows = prompts(a.workdir, a.n_train, tok, a.prompts * (a.warmup + a.steps))
    ds = Dataset.from_list([{"prompt": tok.bos_token + policy_prompt(ex), "gold": ex.label} for ex in rows])

    def outcome_reward(completions, gold, **kw):
        out = []
        for c, g in zip(completions, gold):
            p = parse_reasoning(c)
            out.append(1.0 * (p.label == g) + 0.2 * (not p.format_error))
        return out

    times, toks, gen = [], [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            gen.append(0.0)

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    raw_generate = model.generate

    def timed_generate(*args, **kwargs):  # TRL's rollout (no vLLM) calls the model's generate
        t0 = time.perf_counter()
        out = raw_generate(*args, **kwargs)
        if gen:
            gen[-1] += time.perf_counter() - t0
        return out

    model.generate = timed_generate

    cfg = GRPOConfig(output_dir=os.path.join(a.workdir, "trl"), per_device_train_batch_size=a.prompts * a.G,
                     gradient_accumulation_steps=1, num_generations=a.G, max_completion_length=a.max_new,
                     temperature=1.0, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
                     epsilon=0.2, beta=0.0, loss_type="dapo", max_steps=a.warmup + a.steps, logging_steps=1,
                     report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=0, shuffle_dataset=False,
                     dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=outcome_reward, args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    hist = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    t = times[a.warmup:]
    mean_len = sum(h["completions/mean_length"] for h in hist[a.warmup:]) / max(1, len(hist[a.warmup:]))
    gen_s = sum(gen[a.warmup:len(times)])
    return {"s_per_step": sum(t) / len(t), "completion_tokens": mean_len * a.prompts * a.G,
            "rollout_tok_s": mean_len * a.prompts * a.G * len(t) / gen_s if gen_s else float("nan")}


def child(a) -> None:
    res = run_taosr(a) if a.which == "taosr" else run_trl(a)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--which", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.which:
        return child(a)
    workdir = tempfile.mkdtemp(prefix="taosr-bench-")
    model = build_model(workdir, a.preset, a.n_train)
    results = {}
    for which in ("taosr", "trl"):
        cmd = [sys.executable, __file__, "--which", which, "--model", model, "--workdir", workdir] + \
              [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("which", "model", "workdir")]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(out.stdout[-3000:], out.stderr[-3000:])
            raise SystemExit(f"{which} run failed")
        results[which] = json.loads(line[-1][7:])
    ours, trl = results["taosr"], results["trl"]
    print(f"\nGRPO step on CPU ({os.cpu_count()} cores): preset={a.preset}, {a.prompts} prompts x G={a.G}, "
          f"max {a.max_new} new tokens, {a.steps} timed steps after {a.warmup} warm-up\n")
    print("| framework | s / step | completion tokens / step | tokens / s (whole step) | rollout tokens / s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for name, r in (("taosr", ours), ("TRL GRPOTrainer", trl)):
        print(f"| {name} | {r['s_per_step']:.2f} | {r['completion_tokens']:.0f} | "
              f"{r['completion_tokens'] / r['s_per_step']:.0f} | {r['rollout_tok_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    print(f"\nspeed-up (TRL s/step / taosr s/step): {trl['s_per_step'] / ours['s_per_step']:.2f}x; "
          f"rollout tokens/s ratio (taosr / TRL): {ours['rollout_tok_s'] / trl['rollout_tok_s']:.2f}x; "
          f"peak RSS ratio (taosr / TRL): {ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
