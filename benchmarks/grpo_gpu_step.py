"""GRPO step breakdown: rollout / old log-probs / reward / update seconds per step, with the rollout
engine's decode step captured as CUDA graphs and without.

    python benchmarks/grpo_gpu_step.py                      # GPU: SmolLM2-135M + LoRA r16, 8 prompts x G=8, bf16-mixed
    python benchmarks/grpo_gpu_step.py --preset tiny        # CPU defaults are smaller (see --help)

The rollout, reward and old-logps seconds are the Rollout's own timings (``Rollout.timings``), the update seconds the module's logged ``train/timing_s/update``; ``step`` is the wall time
from the first callback to the end of the training step. The first ``--warmup`` steps (model load,
first capture) are left out.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def run(a, graphs: bool, workdir: str) -> dict:
    import lightning.pytorch as pl
    import torch

    from taosr.callbacks.reward import RewardModelCallback
    from taosr.callbacks.rollout import RolloutCallback
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.eval.generation import GenerationSpec
    from taosr.methods.grpo import GRPOModule
    from taosr.models.factory import LoraSpec, ModelSpec

    torch.manual_seed(0)
    dm = RelevanceDataModule(view="rl", synth=SynthConfig(n_train=a.n_train, n_val=8, n_test=8),
                             data_dir=os.path.join(workdir, "data"), batch_size=a.prompts, val=None, test=None)
    lora = LoraSpec(r=a.lora_r, alpha=2 * a.lora_r) if a.lora_r else None
    module = GRPOModule(model=ModelSpec(name_or_path=a.preset, lora=lora,
                                        cache_dir=os.environ.get("TAOSR_MODELS", os.path.join(workdir, "models"))),
                        lr=1e-5, scheduler="constant", micro_batch_size=a.micro_batch, eps_low=0.2, eps_high=0.28,
                        beta=0.0, loss_agg="token_mean", dynamic_sampling=False, export_dir=None)
    rows = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if a.device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if a.device == "cuda":
                torch.cuda.synchronize()
            r = batch["rollout"]  # the typed taosr.rl.rollout.Rollout
            rows.append({"step": time.perf_counter() - self.t0, "rollout": r.timings["rollout"],
                         "old_logps": r.timings.get("old_logps", 0.0), "reward": r.timings.get("reward", 0.0),
                         "update": float(trainer.callback_metrics.get("train/timing_s/update", float("nan"))),
                         "tokens": float(r.completion_mask.sum())})

    spec = GenerationSpec(do_sample=True, temperature=a.temperature, max_new_tokens=a.max_new, cuda_graphs=graphs)
    cbs = [Timer(), RolloutCallback(num_generations=a.G, generation=spec), RewardModelCallback()]
    trainer = pl.Trainer(accelerator=a.device if a.device == "cpu" else "gpu", devices=1, precision=a.precision,
                         max_steps=a.warmup + a.steps, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=cbs)
    trainer.fit(module, dm)
    timed = rows[a.warmup:]
    out = {k: statistics.mean(r[k] for r in timed) for k in timed[0]}
    out["rollout_tok_s"] = sum(r["tokens"] for r in timed) / sum(r["rollout"] for r in timed)
    from taosr.rl.engines.graph import decoder_for

    d = decoder_for(module.model)  # a failed capture falls back to eager steps: say so beside the figures
    out["graphs"] = "failed (eager)" if d.capture_failed else f"{d.captures} captured" if d.captures else "none"
    return out


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smollm2-135m" if cuda else "tiny")
    p.add_argument("--lora-r", type=int, default=16 if cuda else 0, help="0: full fine-tuning")
    p.add_argument("--prompts", type=int, default=8 if cuda else 4)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new", type=int, default=160 if cuda else 32)
    p.add_argument("--micro-batch", type=int, default=64 if cuda else 32)
    p.add_argument("--temperature", type=float, default=1.3)
    p.add_argument("--steps", type=int, default=6 if cuda else 3)
    p.add_argument("--warmup", type=int, default=2 if cuda else 1)
    p.add_argument("--precision", default="bf16-mixed" if cuda else "32-true")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--graphs", default="on,off" if cuda else "off", help="on, off or on,off (engine's CUDA graphs)")
    a = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="taosr-grpo-step-")
    results = [(g, run(a, g == "on", workdir)) for g in a.graphs.split(",")]
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\nGRPO step on {dev}: {a.preset}{f' + LoRA r{a.lora_r}' if a.lora_r else ''}, {a.prompts} prompts x "
          f"G={a.G}, max {a.max_new} new tokens at temperature {a.temperature}, {a.precision}; mean of {a.steps} steps "
          f"after {a.warmup} warm-up\n")
    print("| CUDA graphs | graphs made | step s | rollout s | old-logps s | reward s | update s | rollout share "
          "| rollout tokens / s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g, r in results:
        print(f"| {g} | {r['graphs']} | {r['step']:.2f} | {r['rollout']:.2f} | {r['old_logps']:.3f} | {r['reward']:.3f} | "
              f"{r['update']:.2f} | {r['rollout'] / r['step']:.0%} | {r['rollout_tok_s']:,.0f} |")


if __name__ == "__main__":
    main()
