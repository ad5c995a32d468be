"""Model folders of other architectures through SFT (LoRA all-linear) and GRPO, end to end: GPT-2
(Conv1D layers, 0.1 dropout) and Mistral with a sliding window shorter than its prompts. Tiny random
models built from a config and saved with a byte-level tokenizer (no downloads)."""
import os

import pytest

from tests.conftest import ROOT, fit, rl_samples_overrides

pytestmark = pytest.mark.slow

TEXTS = ["Query: red running shoes\nProduct: Nike Air 90 Running Shoes, Red\nReasoning:\nLabel: 4"] * 40


def _folder(root: str, name: str) -> str:
    from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig

    from taosr.models.tokenizer import train_bpe_tokenizer

    path = os.path.join(root, name)
    tok = train_bpe_tokenizer(TEXTS, 300, path)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
               bos_token_id=tok.bos_token_id)
    cfg = {"gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, **ids),
           "mistral_window16": lambda: MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, num_key_value_heads=1, sliding_window=16,
                                                     **ids)}[name]()
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ["gpt2", "mistral_window16"])
def test_an_architecture_through_sft_and_grpo(tmp_path, cache_dir, samples, arch):
    folder = _folder(str(tmp_path), arch)
    sft = fit("configs/sft.yaml", str(tmp_path / "sft"), cache_dir, "--model.init_args.model.name_or_path", folder,
              "--model.init_args.model.lora", "{r: 4, alpha: 8, target_modules: all-linear}")
    assert os.path.exists(os.path.join(sft, "export", "config.json"))
    grpo = fit("configs/grpo.yaml", str(tmp_path / "grpo"), cache_dir, "--model.init_args.model.name_or_path",
               os.path.join(sft, "export"), *rl_samples_overrides(samples))
    assert os.path.exists(os.path.join(grpo, "export", "config.json"))
    assert os.listdir(os.path.join(grpo, "eval"))  # its validation generated and was scored
