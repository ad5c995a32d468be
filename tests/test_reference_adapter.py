"""An adapter-only export's reference (DPO, GRPO/SRPO) is its adapter loaded a second time, frozen,
on the same base weights (taosr.models.reference), not a deep copy of the whole model: the same
log-probs as the copy, before and after the policy moves; only the policy's adapter trains and is
exported; fits from such an export resume bit-identically (from a copy-era checkpoint too)."""
import os
import types

import lightning.pytorch as pl
import pytest
import torch

from taosr.eval.generation import GenerationSpec
from taosr.methods.dpo import DPOModule
from taosr.methods.grpo import GRPOModule
from taosr.models.factory import LoraSpec, ModelSpec, load_model_and_tokenizer, save_export
from taosr.rl.rollout import Rollout

TEXTS = ["Query: red running shoes\nProduct: Nike Air 90 Running Shoes, Red\nPrice: 89.99\nReasoning:\n",
         "Query understanding: running shoes (footwear); color red | x\nCategory match: exact\nLabel: 4"] * 40
REF = "reference"


def _corpus():
    return iter(TEXTS)


def _adapter_export(tmp_path, dropout: float = 0.0):
    """A micro model's adapter-only export with a non-trivial adapter (its reference differs from the base)."""
    spec = ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "c"), vocab_size=300,
                     lora=LoraSpec(r=4, alpha=8, dropout=dropout))
    model, tok = load_model_and_tokenizer(spec, _corpus)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return save_export(model, tok, str(tmp_path / "export"), merge_lora=False), tok


def _module(cls, path, **kw):
    mod = cls(model=ModelSpec(name_or_path=path), export_dir=None, lr=1e-2, scheduler="constant", **kw)
    mod._trainer = types.SimpleNamespace(datamodule=None, estimated_stepping_batches=10)
    mod.setup("fit")
    return mod


def _rollout(vocab: int, G=4, n_prompts=2, P=7, L=6):
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, vocab, (n_prompts, P), generator=g)
    prompt_mask = torch.ones(n_prompts, P, dtype=torch.long)
    prompt_mask[1, :3] = 0
    comp = torch.randint(3, vocab, (n_prompts * G, L), generator=g)
    cmask = torch.ones_like(comp)
    cmask[1, 4:] = 0
    spec = GenerationSpec(max_new_tokens=L, do_sample=True, temperature=1.0, num_return_sequences=G)
    return Rollout(spec=spec, prompt_ids=prompt_ids.repeat_interleave(G, 0), prompt_mask=prompt_mask.repeat_interleave(G, 0),
                   completion_ids=comp, completion_mask=cmask, texts=[""] * len(comp),
                   example_index=torch.arange(n_prompts).repeat_interleave(G), clipped=torch.zeros(len(comp), dtype=torch.bool))


def _dpo_batch(tok):
    enc = tok([TEXTS[0], TEXTS[1], TEXTS[1], TEXTS[0]], return_tensors="pt", padding=True, add_special_tokens=False)
    lm = enc.attention_mask.clone()
    lm[:, :3] = 0  # a "prompt" left out of the loss
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "loss_mask": lm}


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _names(model, grad: bool) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad == grad}


def _policy_step(mod, r, opt):
    opt.zero_grad()
    lp = mod._logps(mod.model, r)
    loss = -(lp * r.completion_mask[:, :lp.shape[1]]).sum() / r.completion_mask.sum()
    loss.backward()
    opt.step()


# ---------------------------------------------------------------------------------------- (a)
def test_grpo_second_adapter_reference_equals_the_copy_and_stays_put(tmp_path):
    """GRPO from an adapter-only export: reference: auto holds no second model (one more adapter's
    parameters) and gives the deep copy's (reference: copy) log-probs, equal to the policy's at step 0,
    and the same after optimizer steps that moved the policy."""
    out, tok = _adapter_export(tmp_path)
    auto = _module(GRPOModule, out, beta=0.04)
    old = _module(GRPOModule, out, beta=0.04, reference="copy")  # the old deep copy, still what copy asks
    assert old.ref_model is not None and auto.ref_model is None
    policy = _numel(old.model)
    adapter = sum(p.numel() for n, p in old.model.named_parameters() if "lora_" in n)
    assert _numel(auto) == policy + adapter and _numel(old) == 2 * policy  # the memory win, in parameters
    r = _rollout(len(tok))
    want = old.reference_logps(r)
    start = auto.policy_logps(r)
    assert torch.allclose(auto.reference_logps(r), want, atol=1e-6) and torch.allclose(start, want, atol=1e-6)
    opt = auto.configure_optimizers()["optimizer"]
    for _ in range(3):
        _policy_step(auto, r, opt)
        assert torch.allclose(auto.reference_logps(r), want, atol=1e-6)  # the reference never moves
    assert not torch.allclose(auto.policy_logps(r), start, atol=1e-3)  # while the policy did


def test_dpo_second_adapter_reference_equals_the_copy_and_rewards_start_at_zero(tmp_path):
    """DPO from an adapter-only export (with LoRA dropout in the export: disabled as for the policy):
    the reference log-probs its training step uses are the old deep copy's, before and after updates;
    rewards are 0 at the first step."""
    from taosr.models.factory import disable_dropout

    out, tok = _adapter_export(tmp_path, dropout=0.3)
    mod = _module(DPOModule, out, beta=0.1)
    assert mod.ref_model is None and REF in mod.model.peft_config
    old_copy, _ = load_model_and_tokenizer(ModelSpec(name_or_path=out))  # what the old code deep-copied
    disable_dropout(old_copy)
    old_copy.eval()
    batch = _dpo_batch(tok)
    with torch.no_grad():
        want = mod._seq_logps(old_copy, batch)
    seen, logged = [], {}
    real = mod._seq_logps

    def spy(model, b):
        lp = real(model, b)
        if not torch.is_grad_enabled():  # the reference's forward
            seen.append(lp)
        return lp

    mod._seq_logps = spy
    mod.log = lambda *a, **k: None
    mod.log_dict = lambda d, **k: logged.update(d)
    opt = mod.configure_optimizers()["optimizer"]
    mod.model.train()
    for step in range(3):
        opt.zero_grad()
        mod.training_step(batch, step).backward()
        opt.step()
        assert torch.allclose(seen[-1], want, atol=1e-5), step
        if step == 0:
            assert abs(logged["train/rewards/chosen"]) < 1e-6 and abs(logged["train/rewards/margins"]) < 1e-6
    assert abs(logged["train/rewards/chosen"]) > 1e-4  # the policy moved away from the reference


# ---------------------------------------------------------------------------------------- (b)
def test_only_the_policy_adapter_trains_after_reference_forwards(tmp_path):
    """peft's set_adapter moves requires_grad: after reference forwards (and one that fails), the
    policy's adapter is active and trainable, the reference's frozen with no gradient, every module in
    the mode it was, and the optimizer holds exactly the policy adapter's parameters."""
    out, tok = _adapter_export(tmp_path)
    mod = _module(GRPOModule, out, beta=0.04)
    model = mod.model
    policy = {n for n, _ in model.named_parameters() if "lora_" in n and ".default." in n}
    reference = {n for n, _ in model.named_parameters() if f".{REF}." in n}
    assert policy and len(reference) == len(policy)
    opt = mod.configure_optimizers()["optimizer"]
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[i] for i in in_opt} == policy
    r = _rollout(len(tok))
    modes = [m.training for m in model.modules()]
    mod.reference_logps(r)
    def fails(*args):
        assert model.active_adapter == REF  # the reference is being run
        raise RuntimeError("boom")

    mod._all_logps = fails
    with pytest.raises(RuntimeError, match="boom"):
        mod.reference_logps(r)
    del mod._all_logps
    assert model.active_adapter == "default" and _names(model, True) == policy
    assert [m.training for m in model.modules()] == modes
    _policy_step(mod, r, opt)
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == policy and not grads & reference


# ---------------------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("merge", [False, True])
def test_the_export_holds_only_the_policy_adapter(tmp_path, merge):
    """With a second (reference) adapter loaded, an adapter-only export has no reference subfolder or
    tensors, and either export loads back to the trained policy, not to the reference."""
    out, tok = _adapter_export(tmp_path)
    model, _ = load_model_and_tokenizer(ModelSpec(name_or_path=out))
    model.load_adapter(out, adapter_name=REF, is_trainable=False)  # as peft itself adds it
    model.set_adapter("default")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".default." in n and "lora_B" in n:
                p.add_(0.2)  # the trained policy: another adapter than the reference
    model.eval()
    ids = tok(TEXTS[:2], return_tensors="pt", padding=True, add_special_tokens=False).input_ids
    with torch.no_grad():
        want = model(input_ids=ids).logits
        model.set_adapter(REF)
        ref = model(input_ids=ids).logits
        model.set_adapter("default")
    assert not torch.allclose(want, ref, atol=1e-3)
    path = save_export(model, tok, str(tmp_path / "policy"), merge_lora=merge)
    files = os.listdir(path)
    assert REF not in files and ("adapter_config.json" in files) != merge
    if not merge:
        from safetensors.torch import load_file

        assert not [k for k in load_file(os.path.join(path, "adapter_model.safetensors")) if REF in k]
    again, _ = load_model_and_tokenizer(ModelSpec(name_or_path=path))
    assert list(getattr(again, "peft_config", {})) == ([] if merge else ["default"])
    with torch.no_grad():
        assert torch.allclose(again.eval()(input_ids=ids).logits, want, atol=1e-5)


def test_a_checkpoint_keeps_no_reference_adapter_and_old_ones_load(tmp_path):
    """The reference adapter is frozen, so a checkpoint leaves it out (it is loaded again from the start
    export at setup, before the restore); a checkpoint of the deep-copy era (ref_model.* tensors, e.g.
    a copy's persistent buffers) loads into a module without a copy."""
    from taosr.methods.base import FROZEN_FROM

    out, _ = _adapter_export(tmp_path)
    mod = _module(DPOModule, out)
    ckpt = {"state_dict": mod.state_dict()}
    mod.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and all(".default." in k for k in ckpt["state_dict"])
    assert ckpt[FROZEN_FROM]["name_or_path"] == out
    old = {"state_dict": {**ckpt["state_dict"], "ref_model.some_buffer": torch.zeros(1)}, FROZEN_FROM: ckpt[FROZEN_FROM]}
    mod.on_load_checkpoint(old)
    mod.load_state_dict(old["state_dict"], strict=True)


# ---------------------------------------------------------------------------------------- (d)
class ReferenceKind(pl.Callback):
    """Appends each step's reference kind, whether the module holds no copy and DPO's rewards/chosen
    to ``<run>/reference_kind.json`` (the CLI imports this module again: no shared state)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import json

        if not trainer.is_global_zero:  # under DDP: rank 0 records
            return
        path = os.path.join(trainer.default_root_dir, "reference_kind.json")
        seen = _reference_kinds(trainer.default_root_dir) if os.path.exists(path) else []
        m = trainer.callback_metrics
        seen.append([trainer.global_step, getattr(pl_module, "ref_kind", None), pl_module.ref_model is None,
                     float(m["train/rewards/chosen"]) if "train/rewards/chosen" in m else None])
        with open(path, "w") as fh:
            json.dump(seen, fh)


def _reference_kinds(root: str) -> list:
    import json

    with open(os.path.join(root, "reference_kind.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def adapter_sft(tmp_path_factory, cache_dir):
    """A few SFT steps of the micro model with LoRA, exported adapter-only, and its samples."""
    from tests.conftest import fit, sample_smoke

    root = str(tmp_path_factory.mktemp("sft_adapter"))
    fit("configs/sft.yaml", root, cache_dir, "--model.init_args.model.lora", "{r: 4, alpha: 8}",
        "--model.init_args.merge_lora_on_export", "false", "--model.init_args.lr", "5e-3", "--trainer.max_steps", "4",
        "--trainer.logger", "false")
    export = os.path.join(root, "export")
    assert os.path.exists(os.path.join(export, "adapter_config.json"))
    return export, sample_smoke(export, str(tmp_path_factory.mktemp("samples_adapter") / "samples.jsonl"), cache_dir)


def _same_files(a: str, b: str, name: str, atol: float = 0.0) -> None:
    from safetensors.torch import load_file

    x, y = load_file(os.path.join(a, "export", name)), load_file(os.path.join(b, "export", name))
    assert x.keys() == y.keys()
    if atol:
        assert all(torch.allclose(x[k], y[k], rtol=0, atol=atol) for k in x), max(float((x[k] - y[k]).abs().max()) for k in x)
    else:
        assert all(torch.equal(x[k], y[k]) for k in x)


def _checkpoint_keys(root: str) -> list[str]:
    return list(torch.load(os.path.join(root, "checkpoints", "last.ckpt"), weights_only=False)["state_dict"])


def test_dpo_fit_from_an_adapter_only_export_resumes_bit_identical(tmp_path, cache_dir, adapter_sft):
    """`taosr fit` DPO from an adapter-only SFT export: the second-adapter reference (rewards 0 at the
    first step), an adapter-only export without it, and Ctrl-C + --ckpt_path ends with the same export."""
    from taosr.cli import main
    from tests.conftest import ROOT, small_overrides

    export, samples = adapter_sft

    def args(root, *more):
        return ["fit", "--config", os.path.join(ROOT, "configs/dpo.yaml"), *small_overrides(root, cache_dir),
                "--model.init_args.model.name_or_path", export, "--data.samples_path", samples,
                "--model.init_args.merge_lora_on_export", "false", "--model.init_args.lr", "1e-2",
                "--trainer.max_steps", "4", "--trainer.logger", "false",
                "--trainer.callbacks+=tests.test_reference_adapter.ReferenceKind", *more]

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(args(full)) == 0
    step, kind, no_copy, chosen = _reference_kinds(full)[0]
    assert (step, kind, no_copy) == (1, "adapter", True) and abs(chosen) < 1e-6  # rewards start at 0
    assert main(args(part, "--trainer.callbacks+=tests.test_resume.CtrlCInUpdate", "--trainer.callbacks.step", "2")) == 130
    assert all(".default." in k for k in _checkpoint_keys(part))
    assert main(args(part, "--ckpt_path", os.path.join(part, "checkpoints", "last.ckpt"))) == 0
    assert REF not in os.listdir(os.path.join(full, "export"))
    _same_files(full, part, "adapter_model.safetensors")


def test_grpo_fit_from_an_adapter_only_export_resumes_bit_identical(tmp_path, cache_dir, adapter_sft):
    """`taosr fit` GRPO (beta > 0) from an adapter-only SFT export: the second-adapter reference, a merged
    export, Ctrl-C + --ckpt_path ends with the uninterrupted run's export. A checkpoint as the old code
    wrote it for reference: auto (the frozen deep copy left out, as every frozen tensor) resumes with the
    second adapter: the same export to float tolerance (a separate copy's matrix products may round
    differently in the last bit, about 5e-7 on a log-prob)."""
    from safetensors.torch import load_file

    from taosr.cli import main
    from tests.conftest import ROOT, rl_samples_overrides, small_overrides

    export, samples = adapter_sft

    def args(root, *more):
        return ["fit", "--config", os.path.join(ROOT, "configs/grpo.yaml"), *small_overrides(root, cache_dir),
                *rl_samples_overrides(samples), "--model.init_args.model.name_or_path", export,
                "--model.init_args.beta", "0.04", "--model.init_args.lr", "1e-2", "--data.batch_size", "2",
                "--trainer.max_steps", "3", "--trainer.logger", "false", "--trainer.val_check_interval", "3",
                "--trainer.callbacks+=tests.test_resume.SpreadRewards",
                "--trainer.callbacks+=tests.test_reference_adapter.ReferenceKind", *more]

    def interrupted(root, *more):
        return args(root, *more, "--trainer.callbacks+=tests.test_resume.CtrlCInUpdate", "--trainer.callbacks.step", "1")

    full, part, old = str(tmp_path / "full"), str(tmp_path / "part"), str(tmp_path / "old")
    assert main(args(full)) == 0
    assert [k[1:3] for k in _reference_kinds(full)] == [["adapter", True]] * 3
    assert main(interrupted(part)) == 130
    assert all(".default." in k for k in _checkpoint_keys(part))
    assert main(args(part, "--ckpt_path", os.path.join(part, "checkpoints", "last.ckpt"))) == 0
    _same_files(full, part, "model.safetensors")
    got = load_file(os.path.join(full, "export", "model.safetensors"))
    start = load_model_and_tokenizer(ModelSpec(name_or_path=export))[0].merge_and_unload().state_dict()
    assert got.keys() <= start.keys() and any(not torch.equal(got[k], start[k]) for k in got)  # it learned something
    # the old code's checkpoint: a deep-copy reference (reference: copy today), recorded as reference: auto
    assert main(interrupted(old, "--model.init_args.reference", "copy")) == 130
    ckpt = os.path.join(old, "checkpoints", "last.ckpt")
    saved = torch.load(ckpt, weights_only=False)
    assert saved["state_dict"].keys() == set(_checkpoint_keys(part))
    saved["hyper_parameters"]["reference"] = "auto"
    torch.save(saved, ckpt)
    assert main(args(old, "--ckpt_path", ckpt)) == 0
    assert [k[:3] for k in _reference_kinds(old)] == [[1, "copy", False], [2, "adapter", True], [3, "adapter", True]]
    _same_files(full, old, "model.safetensors", atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_fits_from_an_adapter_only_export_in_bf16(tmp_path, cache_dir, adapter_sft, precision):
    """What a GPU run uses, on CPU: DPO and GRPO (beta > 0) from an adapter-only export under bf16
    autocast and in bf16 weights. The second-adapter reference is used, DPO's rewards start at 0
    (the reference's forward is the policy's, in the same precision), both train and export only the
    policy's adapter / merged weights."""
    from taosr.cli import main
    from tests.conftest import ROOT, rl_samples_overrides, small_overrides

    export, samples = adapter_sft
    common = ["--model.init_args.model.name_or_path", export, "--trainer.precision", precision,
              "--trainer.max_steps", "2", "--trainer.logger", "false",
              "--trainer.callbacks+=tests.test_reference_adapter.ReferenceKind"]
    dpo, grpo = str(tmp_path / "dpo"), str(tmp_path / "grpo")
    assert main(["fit", "--config", os.path.join(ROOT, "configs/dpo.yaml"), *small_overrides(dpo, cache_dir),
                 "--data.samples_path", samples, "--model.init_args.merge_lora_on_export", "false", *common]) == 0
    (step, kind, no_copy, chosen), *_ = _reference_kinds(dpo)
    assert (step, kind, no_copy) == (1, "adapter", True) and chosen == 0.0
    assert REF not in os.listdir(os.path.join(dpo, "export"))
    assert main(["fit", "--config", os.path.join(ROOT, "configs/grpo.yaml"), *small_overrides(grpo, cache_dir),
                 *rl_samples_overrides(samples), "--model.init_args.beta", "0.04", "--data.batch_size", "2",
                 "--trainer.callbacks+=tests.test_resume.SpreadRewards", *common]) == 0
    assert [k[1:3] for k in _reference_kinds(grpo)] == [["adapter", True]] * 2
    assert os.path.exists(os.path.join(grpo, "export", "model.safetensors"))


@pytest.mark.slow
def test_grpo_from_an_adapter_only_export_under_ddp(tmp_path, cache_dir, adapter_sft):
    """Two processes (gloo) of GRPO with beta > 0 from an adapter-only export: DDP wraps a model that
    holds a frozen second adapter (no gradient: DDP must not wait for one), every step uses it, and
    the export is the policy's."""
    import subprocess
    import sys

    from tests.conftest import ROOT, rl_samples_overrides, small_overrides

    export, samples = adapter_sft
    root = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "taosr.cli", "fit", "--config", os.path.join(ROOT, "configs/grpo.yaml"),
           *small_overrides(root, cache_dir), *rl_samples_overrides(samples),
           "--model.init_args.model.name_or_path", export, "--model.init_args.beta", "0.04",
           "--model.init_args.dynamic_sampling", "false", "--trainer.max_steps", "2", "--trainer.logger", "false",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.callbacks+=tests.test_reference_adapter.ReferenceKind"]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [k[1:3] for k in _reference_kinds(root)] == [["adapter", True]] * 2
    assert os.path.exists(os.path.join(root, "export", "model.safetensors"))


def test_the_memory_benchmark_runs(tmp_path):
    """benchmarks/reference_memory.py on a tiny config (what it measures is not asserted)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reference_memory.py"), "--vocab", "320",
                        "--hidden", "32", "--intermediate", "64", "--layers", "1", "--heads", "2", "--r", "2",
                        "--prompt", "4", "--tokens", "4", "--reps", "1", "--threads", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| second adapter (reference: auto) | adapter | " in p.stdout and "| deep copy (reference: copy" in p.stdout


def test_dpo_takes_the_reference_option_as_grpo(tmp_path):
    """DPO's model.init_args.reference (fourteenth stop): copy keeps a frozen deep copy (as before the
    second adapter), adapter_disabled the base without the export's adapter; an unknown value is
    refused when the module is built, before any work."""
    from taosr.errors import ConfigError

    out, tok = _adapter_export(tmp_path)
    copy_mod = _module(DPOModule, out, beta=0.1, reference="copy")
    assert copy_mod.ref_kind == "copy" and copy_mod.ref_model is not None and REF not in copy_mod.model.peft_config
    second = _module(DPOModule, out, beta=0.1)
    batch = _dpo_batch(tok)
    with torch.no_grad():
        assert torch.allclose(copy_mod._seq_logps(copy_mod.ref_model, batch),
                              second._seq_logps(second.model, batch), atol=1e-5)  # same weights at step 0
    assert _module(DPOModule, out, beta=0.1, reference="adapter_disabled").ref_kind == "adapter_disabled"
    with pytest.raises(ConfigError, match=r"^model.init_args.reference: 'frozen' is unknown; expected one of auto, "
                                          r"adapter_disabled, copy$"):
        DPOModule(model=ModelSpec(name_or_path=out), reference="frozen")
