"""GRPO module internals: prefix sharing gives the plain forward's log-probs and gradients."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from taosr.methods.grpo import GRPOModule


def _rollout(G=4, n_prompts=2, P=7, L=6, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, V, (n_prompts, P), generator=g)
    prompt_mask = torch.ones(n_prompts, P, dtype=torch.long)
    prompt_mask[1, :3] = 0  # left padding on the second prompt
    comp = torch.randint(3, V, (n_prompts * G, L), generator=g)
    cmask = torch.ones_like(comp)
    cmask[1, 4:] = 0  # a completion that ended early (right padded)
    return {"prompt_ids": prompt_ids.repeat_interleave(G, 0), "prompt_mask": prompt_mask.repeat_interleave(G, 0),
            "completion_ids": comp, "completion_mask": cmask, "group_size": G}


@pytest.mark.parametrize("rows", [None, slice(4, 8)])
def test_prefix_sharing_matches_plain_forward(rows):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    r = _rollout()
    mask = r["completion_mask"][rows if rows is not None else slice(None)].float()
    results = []
    for sharing in (True, False):
        mod = GRPOModule(prefix_sharing=sharing)
        model.zero_grad()
        lp, ent = mod._logps(model, r, rows, entropy=True)
        (lp * mask).sum().backward()
        results.append((lp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (a, ea, ga), (b, eb, gb) = results
    assert torch.allclose(a * mask, b * mask, atol=1e-5)
    assert torch.allclose(ea * mask, eb * mask, atol=1e-4)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5)
