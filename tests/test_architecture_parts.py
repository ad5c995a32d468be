"""The parts of an RL step on many architectures, in process (tiny random models from a config, no
downloads): the update's log-probs with the shared-prefix forward equal the plain forward's and an
unpadded forward per row, dropout is off everywhere after ``disable_dropout``, and the rollout
engine's greedy tokens equal ``generate``'s on left-padded prompts. An audit ran these on 17
architectures (2026-12-03); this keeps them true across transformers upgrades. The CLI chain on
other folders: tests/test_architectures.py."""
import pytest
import torch
import transformers as T

from tests.conftest import TinyTok

V = 40
IDS = dict(vocab_size=V, pad_token_id=0, eos_token_id=2, bos_token_id=1)
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=256)
TWO_HEADS = {**SIZES, "num_attention_heads": 2, "num_key_value_heads": 1}

CONFIGS = {  # each with its features: sliding windows, softcapping, logit scaling, projections, ALiBi, ties
    "qwen2_window": lambda: T.Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=8, max_window_layers=1, **IDS),
    "qwen3": lambda: T.Qwen3Config(**SIZES, head_dim=8, **IDS),
    "phi3_window": lambda: T.Phi3Config(**SIZES, sliding_window=8, **IDS),
    "gemma2": lambda: T.Gemma2Config(**TWO_HEADS, head_dim=16, sliding_window=8, final_logit_softcapping=30.0,
                                     attn_logit_softcapping=50.0, query_pre_attn_scalar=16, **IDS),
    "gemma3": lambda: T.Gemma3TextConfig(**TWO_HEADS, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                         layer_types=["sliding_attention", "full_attention"], **IDS),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                        rotary_pct=0.25, max_position_embeddings=256, hidden_dropout=0.1,
                                        attention_dropout=0.1, **IDS),
    "opt_projected": lambda: T.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=256, word_embed_proj_dim=16, do_layer_norm_before=False,
                                         dropout=0.1, layerdrop=0.1, **IDS),
    "falcon_alibi": lambda: T.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True,
                                           max_position_embeddings=256, hidden_dropout=0.1, attention_dropout=0.1, **IDS),
    "stablelm": lambda: T.StableLmConfig(**SIZES, partial_rotary_factor=0.25, use_qkv_bias=True, hidden_dropout=0.1, **IDS),
    "granite": lambda: T.GraniteConfig(**SIZES, logits_scaling=8.0, embedding_multiplier=12.0, residual_multiplier=0.22,
                                       attention_multiplier=0.125, **IDS),
    "cohere": lambda: T.CohereConfig(**SIZES, logit_scale=0.0625, **IDS),
    "olmo2": lambda: T.Olmo2Config(**SIZES, **IDS),
    "llama_tied": lambda: T.LlamaConfig(**SIZES, tie_word_embeddings=True, attention_dropout=0.1, **IDS),
}


def _model(name: str):
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(CONFIGS[name]())


def _rollout(G=4, P=12, L=8):
    from taosr.eval.generation import GenerationSpec
    from taosr.rl.rollout import Rollout

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, V, (2, P), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[1, :5] = 0  # the second prompt left padded
    prompt_ids[prompt_mask == 0] = 0
    comp = torch.randint(3, V, (2 * G, L), generator=g)
    cmask = torch.ones_like(comp)
    cmask[1, 4:], cmask[6, 6:] = 0, 0  # completions that ended early
    comp[cmask == 0] = 0
    spec = GenerationSpec(max_new_tokens=L, do_sample=True, temperature=1.0, num_return_sequences=G)
    return Rollout(spec=spec, prompt_ids=prompt_ids.repeat_interleave(G, 0), prompt_mask=prompt_mask.repeat_interleave(G, 0),
                   completion_ids=comp, completion_mask=cmask, texts=[""] * len(comp),
                   example_index=torch.arange(2).repeat_interleave(G), clipped=torch.zeros(len(comp), dtype=torch.bool))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_update_logps_and_dropout_on_an_architecture(name):
    from taosr.methods.grpo import GRPOModule
    from taosr.models.factory import disable_dropout

    model = _model(name)
    disable_dropout(model)
    model.train()  # as in the update: with every rate zeroed, train mode computes what eval mode does
    x = torch.randint(3, V, (2, 9))
    assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits), "a dropout rate is left"
    r = _rollout()
    mask = r.completion_mask.float()
    got = []
    for sharing in (True, False):
        model.zero_grad(set_to_none=True)
        lp = GRPOModule(prefix_sharing=sharing)._logps(model, r)
        (lp * mask).sum().backward()
        got.append((lp.detach() * mask, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (shared, g_shared), (plain, g_plain) = got
    assert (shared - plain).abs().max() < 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(g_shared, g_plain)) < 1e-4
    model.eval()
    with torch.no_grad():  # each row alone, without padding: the log-probs the update must see
        for i in range(len(r)):
            p = r.prompt_ids[i][r.prompt_mask[i].bool()]
            n = int(r.completion_mask[i].sum())
            c = r.completion_ids[i, :n]
            logits = model(input_ids=torch.cat([p, c])[None]).logits[0, len(p) - 1:len(p) - 1 + n].float()
            want = torch.log_softmax(logits, -1).gather(-1, c[:, None])[:, 0]
            assert (plain[i, :n] - want).abs().max() < 1e-5, i


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rollout_engine_greedy_equals_generate_on_an_architecture(name):
    from taosr.eval.generation import GenerationSpec, hf_generate_ids
    from taosr.rl.engines.hf import HFEngine

    model = _model(name).eval()
    ids = torch.randint(3, V, (3, 10))
    att = torch.ones_like(ids)
    att[0, :4], att[2, :1] = 0, 0
    ids[att == 0] = 0
    spec = GenerationSpec(max_new_tokens=12, do_sample=False, num_return_sequences=2)
    got = HFEngine(cuda_graphs=False).generate(model, TinyTok, ids, att, spec)
    want = hf_generate_ids(model, TinyTok, ids, att, spec)
    n = min(got.shape[1], want.shape[1])
    assert torch.equal(got[:, :n], want[:, :n])
