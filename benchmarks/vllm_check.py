"""GPU check of the vLLM rollout engine (needs CUDA and `pip install -e ".[vllm]"`).

    python benchmarks/vllm_check.py --model runs/sft/export [--lora] [--prompts 64] [--G 8]

1. builds the colocated engine from the export, 2. perturbs the trainer's weights (and, with
--lora, wraps them in a LoRA adapter with non-zero B so the merge path is exercised), 3. pushes
them into vLLM, 4. compares greedy completions of HF ``generate`` and vLLM token by token, and
5. times a sampled rollout of prompts x G completions with sleep/wake around it.
Prints a small report; exits non-zero when greedy outputs disagree beyond the first tokens.
"""
from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    import torch

    from taosr.data.datamodule import RelevanceDataModule
    from taosr.eval.generation import GenerationSpec, generate_ids
    from taosr.models.factory import LoraSpec, ModelSpec, load_model_and_tokenizer
    from taosr.rl.engines.vllm_engine import VLLMEngine

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
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
                        max_model_len=1024, sleep_level=1, dtype="float32")
    t0 = time.perf_counter()
    engine.sync_weights(model)
    t_sync = time.perf_counter() - t0
    greedy = GenerationSpec(max_new_tokens=a.max_new, do_sample=False)
    hf = generate_ids(model, tok, ids, att, greedy)
    vl = engine.generate(model, tok, ids, att, greedy)
    same = sum(int(h[:8].tolist() == v[:8].tolist()) for h, v in zip(hf, vl))
    engine.sync_weights(model)
    t1 = time.perf_counter()
    out = engine.generate(model, tok, ids, att, GenerationSpec(max_new_tokens=a.max_new, do_sample=True,
                                                               num_return_sequences=a.G))
    t_gen = time.perf_counter() - t1
    n_tok = int((out != tok.pad_token_id).sum())
    print(f"weight sync: {t_sync:.2f}s ({'LoRA merged' if a.lora else 'plain'})")
    print(f"greedy agreement (first 8 tokens) HF vs vLLM: {same}/{len(hf)}")
    print(f"sampled rollout: {out.shape[0]} completions, {n_tok} tokens in {t_gen:.2f}s = {n_tok / t_gen:.0f} tokens/s")
    return 0 if same >= 0.9 * len(hf) else 1


if __name__ == "__main__":
    sys.exit(main())
