"""GPU check of the vLLM rollout engine (needs CUDA and `pip install -e ".[vllm]"`).

    python benchmarks/vllm_check.py --model runs/sft/export [--lora] [--prompts 64] [--G 8]

1. builds the colocated engine from the export, 2. perturbs the trainer's weights (and, with
--lora, wraps them in a LoRA adapter with non-zero B so the merge path is exercised), 3. pushes
them into vLLM, 4. compares greedy completions of HF ``generate`` and vLLM token by token, and
5. times a sampled rollout of prompts x G completions with sleep/wake around it, and 6. scores that
rollout's tokens with the trainer's forward against the log-probs vLLM reported for them (the
mismatch GRPO/SRPO's ``rollout_is`` corrects: ``taosr.rl.sampler_correction``; ``--dtype bfloat16``
for vLLM's dtype in a bf16 run). Prints a small report; exits non-zero when greedy outputs disagree
beyond the first tokens.
"""
from __future__ import annotations

import argparse
import sys
import time


def trainer_logps(model, prompt_ids, prompt_mask, comp, comp_mask, temperature: float, rows: int = 16):
    """The trainer's log-prob of each completion token at ``temperature``, computed by GRPO's own
    scoring (:meth:`GRPOModule._all_logps`: micro-batches of ``rows``, zero past a completion's end).
    ``prompt_ids`` / ``prompt_mask``: one row per completion."""
    import torch

    from taosr.eval.generation import GenerationSpec
    from taosr.methods.grpo import GRPOModule
    from taosr.rl.rollout import Rollout

    spec = GenerationSpec(do_sample=True, temperature=temperature, max_new_tokens=comp.shape[1])
    n = len(comp)
    r = Rollout(spec=spec, prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp,
                completion_mask=comp_mask, texts=[""] * n, example_index=torch.arange(n, device=comp.device),
                clipped=torch.zeros(n, dtype=torch.bool, device=comp.device))
    with torch.no_grad():
        return GRPOModule(micro_batch_size=rows)._all_logps(model, r)


def main() -> int:
    import torch

    from taosr.data.datamodule import RelevanceDataModule
    from taosr.eval.generation import GenerationSpec, completion_lengths, generate_ids
    from taosr.models.factory import LoraSpec, ModelSpec, load_model_and_tokenizer
    from taosr.rl.engines.vllm_engine import VLLMEngine
    from taosr.rl.sampler_correction import sampler_is_weights

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--dtype", default="float32", help="vLLM's dtype (the trainer's model stays fp32)")
    p.add_argument("--temperature", type=float, default=1.3)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        return 2
    dm = RelevanceDataModule(val=None, test=None)
    dm.setup("fit")
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=a.model, lora=LoraSpec(r=8) if a.lora else None), dm.corpus)
    model = model.cuda().eval()
    with torch.no_grad():  # make the trainer's weights differ from the files vLLM loaded
        for n, prm in model.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
            elif not a.lora and "mlp" in n:
                prm.mul_(1.01)
    dm.attach_tokenizer(tok)
    batch = dm.collate_prompts(list(enumerate(dm.splits["train"][: a.prompts])))
    ids, att = batch["input_ids"].cuda(), batch["attention_mask"].cuda()
    engine = VLLMEngine(model_path=a.model, gpu_memory_utilization=a.gpu_memory_utilization,
                        max_model_len=1024, sleep_level=1, dtype=a.dtype)
    t0 = time.perf_counter()
    engine.sync_weights(model)
    t_sync = time.perf_counter() - t0
    greedy = GenerationSpec(max_new_tokens=a.max_new, do_sample=False)
    hf = generate_ids(model, tok, ids, att, greedy)
    vl = engine.generate(model, tok, ids, att, greedy)
    same = sum(int(h[:8].tolist() == v[:8].tolist()) for h, v in zip(hf, vl))
    engine.sync_weights(model)
    t1 = time.perf_counter()
    spec = GenerationSpec(max_new_tokens=a.max_new, do_sample=True, temperature=a.temperature, num_return_sequences=a.G)
    out, sampler_lp = engine.sample(model, tok, ids, att, spec)
    t_gen = time.perf_counter() - t1
    lens = completion_lengths(out, tok.eos_token_id, tok.pad_token_id, ragged=True).to(out.device)
    mask = (torch.arange(out.shape[1], device=out.device)[None, :] < lens[:, None]).long()
    n_tok = int(mask.sum())
    train_lp = trainer_logps(model, ids.repeat_interleave(a.G, 0), att.repeat_interleave(a.G, 0), out, mask,
                             a.temperature)
    _, m = sampler_is_weights(train_lp, sampler_lp.masked_fill(mask == 0, 0.0), mask, mode="sequence_mask")
    _, mt = sampler_is_weights(train_lp, sampler_lp.masked_fill(mask == 0, 0.0), mask, mode="token_truncate")
    print(f"weight sync: {t_sync:.2f}s ({'LoRA merged' if a.lora else 'plain'})")
    print(f"greedy agreement (first 8 tokens) HF vs vLLM: {same}/{len(hf)}")
    print(f"sampled rollout: {out.shape[0]} completions, {n_tok} tokens in {t_gen:.2f}s = {n_tok / t_gen:.0f} tokens/s")
    print(f"sampler mismatch (vLLM {a.dtype} vs trainer fp32, temperature {a.temperature}): |dlogp| per token mean "
          f"{m['sampler/logp_diff_mean']:.2e} max {m['sampler/logp_diff_max']:.2e}; token ratio min/mean/max "
          f"{mt['sampler/is_ratio_min']:.3f}/{mt['sampler/is_ratio_mean']:.3f}/{mt['sampler/is_ratio_max']:.3f}; "
          f"sequence ratio min/mean/max {m['sampler/is_ratio_min']:.3f}/{m['sampler/is_ratio_mean']:.3f}/"
          f"{m['sampler/is_ratio_max']:.3f}, outside [0, 3] {m['sampler/is_bounded_frac']:.1%}")
    return 0 if same >= 0.9 * len(hf) else 1


if __name__ == "__main__":
    sys.exit(main())
