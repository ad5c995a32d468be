"""`taosr delta pack|unpack`: an export as a low-rank delta against its base, rebuilt from it."""
import json
import os

import pytest
import torch

from taosr.errors import ConfigError
from taosr.models.delta import load_weights, low_rank, pack, unpack
from tests.conftest import tiny_llama


def test_low_rank_keeps_the_rank_of_a_low_rank_delta():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(48, 3, generator=g) @ torch.randn(3, 40, generator=g)
    a, b = low_rank(d)
    assert a.shape == (48, 3) and b.shape == (3, 40)
    assert torch.allclose(a @ b, d, atol=1e-5)
    # balanced: both factors carry sqrt of the singular values
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1), rtol=1e-4)


def test_low_rank_refuses_what_factors_would_not_shrink():
    g = torch.Generator().manual_seed(1)
    assert low_rank(torch.randn(16, 16, generator=g)) is None            # full rank
    d = torch.randn(64, 5, generator=g) @ torch.randn(5, 64, generator=g)
    assert low_rank(d, max_rank=4) is None and low_rank(d, max_rank=5) is not None
    a, b = low_rank(torch.zeros(8, 6))
    assert a.shape == (8, 0) and b.shape == (0, 6)


def _lora_stage(model, seed: int, r: int = 4):
    """One LoRA stage merged, as taosr's exports are: a fresh adapter on every linear layer with
    non-zero weights (as after training), merged into the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return peft_model.merge_and_unload()


@pytest.fixture()
def chain(tmp_path):
    """A base folder and an export two merged LoRA stages away from it (SFT, then DPO), with the
    files an export carries beside its weights."""
    base = tiny_llama(seed=3)
    base.save_pretrained(tmp_path / "base")
    export = _lora_stage(_lora_stage(tiny_llama(seed=3), 1), 2)
    export.save_pretrained(tmp_path / "export")
    (tmp_path / "export" / "taosr_export.json").write_text(json.dumps({"merged_lora": True, "adapter_only": False}))
    return str(tmp_path / "base"), str(tmp_path / "export"), export


def _logits(folder):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return m(torch.arange(3, 20)[None]).logits


def test_a_lora_chain_packs_small_and_unpacks_to_the_export(tmp_path, chain):
    base, export, _ = chain
    rec = pack(export, load_weights(base, "base"), str(tmp_path / "pack"), dtype="float32")
    linear = {n: t for n, t in rec["tensors"].items() if n.endswith("proj.weight")}
    assert linear and all(t["kind"] == "low_rank" and t["rank"] == 8 for t in linear.values())  # two stages of r 4
    assert all(t["kind"] == "same" for n, t in rec["tensors"].items() if n not in linear)  # norms, embeddings
    unpack(str(tmp_path / "pack"), load_weights(base, "base"), str(tmp_path / "rebuilt"))
    want, got = load_weights(export, "export"), load_weights(str(tmp_path / "rebuilt"), "rebuilt")
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.allclose(got[name], want[name], atol=1e-6), name
    assert json.load(open(tmp_path / "rebuilt" / "taosr_export.json"))["merged_lora"] is True
    assert os.path.isfile(tmp_path / "rebuilt" / "config.json")
    assert torch.allclose(_logits(str(tmp_path / "rebuilt")), _logits(export), atol=1e-5)


def test_float16_factors_stay_within_their_recorded_error(tmp_path, chain):
    base, export, _ = chain
    rec = pack(export, load_weights(base, "base"), str(tmp_path / "pack"))
    assert 0 < rec["max_abs_error"] < 1e-3
    size = os.path.getsize(tmp_path / "pack" / "delta.safetensors")
    assert size < 0.5 * sum(os.path.getsize(os.path.join(export, f)) for f in os.listdir(export) if f.endswith(".safetensors"))
    unpack(str(tmp_path / "pack"), load_weights(base, "base"), str(tmp_path / "rebuilt"))
    want, got = load_weights(export, "export"), load_weights(str(tmp_path / "rebuilt"), "rebuilt")
    assert max(float((got[n] - want[n]).abs().max()) for n in want) <= rec["max_abs_error"] + 1e-6
    assert torch.allclose(_logits(str(tmp_path / "rebuilt")), _logits(export), atol=1e-3)


def test_a_full_fine_tune_is_stored_whole_and_exactly(tmp_path):
    base = tiny_llama(seed=3)
    base.save_pretrained(tmp_path / "base")
    tuned = tiny_llama(seed=3)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned.save_pretrained(tmp_path / "export")
    rec = pack(str(tmp_path / "export"), load_weights(str(tmp_path / "base"), "b"), str(tmp_path / "pack"))
    assert {t["kind"] for t in rec["tensors"].values()} == {"full"}
    unpack(str(tmp_path / "pack"), load_weights(str(tmp_path / "base"), "b"), str(tmp_path / "rebuilt"))
    want, got = load_weights(str(tmp_path / "export"), "e"), load_weights(str(tmp_path / "rebuilt"), "r")
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_bad_inputs_are_one_line_errors(tmp_path, chain):
    base, export, _ = chain
    pack(export, load_weights(base, "base"), str(tmp_path / "pack"))
    other = tiny_llama(seed=4)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"not those .*pack was packed against"):
        unpack(str(tmp_path / "pack"), load_weights(str(tmp_path / "other"), "o"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match=r"delta.json not found"):
        unpack(str(tmp_path / "other"), load_weights(base, "base"), str(tmp_path / "x"))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"adapter-only export"):
        pack(str(tmp_path / "adapter"), load_weights(base, "base"), str(tmp_path / "p2"))
    with pytest.raises(ConfigError, match=r"is not a folder"):
        load_weights(str(tmp_path / "missing"), "--base")
    bigger = tiny_llama(seed=3, layers=2)
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(**{**bigger.config.to_dict(), "hidden_size": 48})).save_pretrained(tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"not a fine-tune of that base"):
        pack(str(tmp_path / "wide"), load_weights(base, "base"), str(tmp_path / "p3"))


def test_cli_pack_and_unpack(tmp_path, chain, capsys):
    from taosr.cli import main

    base, export, _ = chain
    assert main(["delta", "pack", export, "--base", base, "--out", str(tmp_path / "pack")]) == 0
    said = capsys.readouterr().out
    assert "low-rank (rank 8-8)" in said and "largest error" in said
    assert main(["delta", "unpack", str(tmp_path / "pack"), "--base", base, "--out", str(tmp_path / "rebuilt")]) == 0
    assert os.path.isfile(tmp_path / "rebuilt" / "model.safetensors")
    assert main(["delta", "pack", export, "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "p")]) == 2
    assert "--base: " in capsys.readouterr().err


def test_a_damaged_pack_and_scalar_tensors(tmp_path, chain):
    """A pack whose record or factors were cut is one line; 0-dim tensors fingerprint like any other."""
    from taosr.models.delta import weights_fingerprint

    base, export, _ = chain
    assert weights_fingerprint({"s": torch.tensor(1.5)}) != weights_fingerprint({"s": torch.tensor(2.5)})
    pack(export, load_weights(base, "base"), str(tmp_path / "pack"))
    rec = json.load(open(tmp_path / "pack" / "delta.json"))
    name = next(n for n, t in rec["tensors"].items() if t["kind"] == "low_rank")
    rec["tensors"][name + "_gone"] = rec["tensors"][name]  # factors the weights file does not hold
    json.dump(rec, open(tmp_path / "pack" / "delta.json", "w"))
    with pytest.raises(ConfigError, match=r"_gone cannot be rebuilt .*the pack is damaged"):
        unpack(str(tmp_path / "pack"), load_weights(base, "base"), str(tmp_path / "x"))
    json.dump({"format": rec["format"]}, open(tmp_path / "pack" / "delta.json", "w"))
    with pytest.raises(ConfigError, match=r"lacks base_fingerprint or tensors"):
        unpack(str(tmp_path / "pack"), load_weights(base, "base"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
