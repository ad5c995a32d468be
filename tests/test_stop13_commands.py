"""Thirteenth stop's fixes to the commands: `taosr reason` rejects a sample whose judgment names another
tier than its label; `taosr sample` prompts an export with the target it recorded (as `taosr score`);
`model.cache_dir` reaches `from_pretrained` for hub ids when the user set it; a logger `save_dir` the
user gave (`runs`, `.`) is used as given, an unset one is the run folder."""
from __future__ import annotations

import json
import os

import pytest

from taosr.cli import main
from tests.conftest import fit

# ----------------------------------------------------------------------------- reason: judgment vs label
STEPS = {"query": "running shoes", "item": "running shoes; brand adidas",
         "category": "running shoes vs running shoes => exact", "attribute": "brand not nike vs adidas => satisfied"}


def _text(judgment: str, label: int) -> str:
    from taosr.reasoning.format import render_reasoning

    return render_reasoning({**STEPS, "judgment": judgment}, label)


def test_judgment_tiers_reads_the_conclusion_by_tier_name():
    from taosr.bootstrap import judgment_tiers

    assert judgment_tiers("exact + satisfied => mismatch") == {2}
    assert judgment_tiers("exact + satisfied => Excellent.") == {4}
    assert judgment_tiers("exact => related | the query is not excellent") == {3}  # the explanation is not read
    assert judgment_tiers("4") == {4} and judgment_tiers("related or excellent") == {3, 4}
    assert judgment_tiers("the item fits the query well") == set()  # free-form: names no tier
    assert judgment_tiers("unrelated; mismatched colour") == set()  # other words


def test_pick_rationale_rejects_a_judgment_naming_another_tier():
    from taosr.bootstrap import merge_tries, pick_rationale

    wrong, right = _text("exact + satisfied => mismatch", 4), _text("exact + satisfied => excellent", 4)
    r = pick_rationale([wrong, _text("x => excellent", 2), right], gold=4)
    assert (r["sample"], r["judgment_mismatches"], r["mismatches"], r["format_errors"]) == (2, 1, 1, 0)
    alone = pick_rationale([wrong, _text("related or excellent", 4)], gold=4)  # several tiers: not only the label's
    assert alone["sample"] is None and alone["judgment_mismatches"] == 2
    free = pick_rationale([_text("the item is what the user asked for", 4)], gold=4)
    assert free["sample"] == 0 and free["judgment_mismatches"] == 0  # a free-form judgment naming no tier is kept
    both = merge_tries(alone, pick_rationale([right], gold=4))
    assert (both["sample"], both["hinted"], both["judgment_mismatches"]) == (2, True, 2)


def test_reason_rejects_and_counts_a_judgment_naming_another_tier(tmp_path, monkeypatch, capsys):
    """Through the command (the teacher's samples stubbed): the inconsistent pair is unexplained, counted
    under its own reason in the report, the summary line and the unexplained row; nothing vanishes."""
    import taosr.bootstrap as bootstrap
    import taosr.models.factory as factory
    from taosr.schema import Example, Item

    texts = {"a": [_text("exact + satisfied => mismatch", 4)],      # the label's tier contradicted
             "b": [_text("exact + satisfied => excellent", 4)],     # consistent
             "c": [_text("the colour differs from the one asked", 2)]}  # names no tier: kept
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(Example(query=q, item=Item(title="t " + q), label=lab).to_dict()) + "\n"
                             for q, lab in (("a", 4), ("b", 4), ("c", 2))))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")

    def fake_explain(model, tok, todo, style, hint, spec, batch_size, seed, on_batch, **kw):
        on_batch([{"index": i, **bootstrap.merge_tries(bootstrap.pick_rationale(texts[ex.query], ex.label), None)}
                  for i, ex in todo])

    monkeypatch.setattr(bootstrap, "explain_batches", fake_explain)
    monkeypatch.setattr(factory, "load_for_inference", lambda name, corpus=None: (None, None))
    out = str(tmp_path / "out.jsonl")
    assert main(["reason", "--model", str(teacher), "--data", str(pairs), "--out", out, "--n", "1", "--no-hint"]) == 0
    kept = [json.loads(x) for x in open(out)]
    unexplained = [json.loads(x) for x in open(out + ".unexplained.jsonl")]
    assert [r["query"] for r in kept] == ["b", "c"] and [r["query"] for r in unexplained] == ["a"]
    assert kept[0]["provenance"]["selection"] == "label+judgment"  # the default selection (--require-grounded adds +item)
    assert unexplained[0]["provenance"]["tries"][0]["judgment_mismatches"] == 1
    rep = json.load(open(out + ".report.json"))
    assert (rep["kept"], rep["judgment_mismatches"], rep["judgment_mismatch_rate"]) == (2, 1, round(1 / 3, 4))
    assert rep["rounds"][0]["judgment_mismatches"] == 1 and rep["label_mismatch_rate"] == 0
    printed = capsys.readouterr().out
    assert "with the label but a judgment naming another tier 33.3%" in printed and "judgment  no-item  pairs/s" in printed


# ----------------------------------------------------------------------------- sample: the export's target
@pytest.fixture(scope="module")
def label_export(tmp_path_factory, cache_dir):
    """An untrained micro model saved as an export that records `target: label` (as a label-only SFT's)."""
    from taosr.data.datamodule import RelevanceDataModule
    from taosr.data.synth import SynthConfig
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer, save_export

    dm = RelevanceDataModule(synth=SynthConfig(n_train=48, n_val=6, n_test=6), data_dir=os.path.join(cache_dir, "data"))
    dm.setup("fit")
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=os.path.join(cache_dir, "models")),
                                          dm.corpus)
    return save_export(model, tok, str(tmp_path_factory.mktemp("label") / "export"), meta={"target": "label"})


def _sample(model, out, cache_dir, *extra):
    return main(["sample", "--model", model, "--out", out, "--n", "2", "--limit", "2", "--max-new-tokens", "8",
                 "--synth-n-train", "48", "--synth-n-val", "6", "--synth-n-test", "6",
                 "--data-dir", os.path.join(cache_dir, "data"), *extra])


def test_sample_prompts_an_export_with_its_recorded_target(label_export, tmp_path, cache_dir, capsys):
    out = str(tmp_path / "s.jsonl")
    assert _sample(label_export, out, cache_dir) == 0
    rows = [json.loads(x) for x in open(out)]
    assert all(r["sampler"]["target"] == "label" for r in rows)
    # parsed as the label target: a completion never carries steps, so no step is ever judged
    assert all(v is None for r in rows for s in r["samples"] for v in (s.get("step_verdicts") or {}).values())
    again = str(tmp_path / "r.jsonl")  # --target still says otherwise
    assert _sample(label_export, again, cache_dir, "--target", "reasoning") == 0
    assert all("target" not in json.loads(x)["sampler"] for x in open(again))


def test_score_and_sample_share_the_target_rule(tmp_path):
    from taosr.errors import ConfigError
    from taosr.models.factory import prompt_target

    folder = tmp_path / "export"
    folder.mkdir()
    assert prompt_target(str(folder)) == "reasoning" and prompt_target("owner/model") == "reasoning"
    (folder / "taosr_export.json").write_text(json.dumps({"target": "label"}))
    assert prompt_target(str(folder)) == "label" and prompt_target(str(folder), "reasoning") == "reasoning"
    (folder / "taosr_export.json").write_text(json.dumps({"target": "essay"}))
    with pytest.raises(ConfigError, match="target 'essay' is unknown"):
        prompt_target(str(folder))


# ----------------------------------------------------------------------------- model.cache_dir for hub ids
class _Stop(Exception):
    pass


@pytest.fixture
def hub_calls(monkeypatch):
    """from_pretrained of the hub stubbed: records each call's name and keyword arguments (no download)."""
    import transformers

    from tests.conftest import tiny_llama

    calls = []

    def model(name, **kw):
        calls.append(("model", name, kw))
        return tiny_llama()

    def tokenizer(name, **kw):
        calls.append(("tokenizer", name, kw))
        raise _Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    return calls


def _load(**spec):
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer

    with pytest.raises(_Stop):
        load_model_and_tokenizer(ModelSpec(**spec))


def test_a_set_cache_dir_reaches_from_pretrained_for_a_hub_id(hub_calls, tmp_path):
    _load(name_or_path="owner/model", cache_dir=str(tmp_path / "hf"))
    assert [(what, name, kw.get("cache_dir")) for what, name, kw in hub_calls] == \
        [("model", "owner/model", str(tmp_path / "hf")), ("tokenizer", "owner/model", str(tmp_path / "hf"))]


@pytest.mark.parametrize("cache", [None, ".cache/taosr/models", "./.cache/taosr/models/"])
def test_the_default_cache_dir_leaves_hub_ids_in_hfs_own_cache(hub_calls, cache):
    """Left at its default (which every saved config.yaml records), a hub id is not moved into the presets' folder."""
    _load(name_or_path="owner/model", **({} if cache is None else {"cache_dir": cache}))
    assert len(hub_calls) == 2 and all("cache_dir" not in kw for _, _, kw in hub_calls)


def test_an_adapter_of_a_hub_model_takes_its_base_from_the_set_cache_dir(tmp_path, monkeypatch):
    """An adapter-only export of a hub model loads its base through peft: model.cache_dir reached the
    hub id itself but not the adapter's base, which was looked up in Hugging Face's own cache. Real
    loading, offline, from a cache folder in the hub's layout (no download, no stub)."""
    import huggingface_hub.constants
    from peft import LoraConfig, get_peft_model

    from taosr.data.synth import SynthConfig, generate
    from taosr.errors import ConfigError
    from taosr.models.factory import ModelSpec, load_model_and_tokenizer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    examples = generate(SynthConfig(n_train=30, n_val=0, n_test=0, seed=1))["train"]
    model, tok = load_model_and_tokenizer(ModelSpec(name_or_path="micro", cache_dir=str(tmp_path / "presets")),
                                          lambda: [f"{e.query} {e.item.title}" for e in examples])
    repo = tmp_path / "hub" / "models--owner--base"
    model.save_pretrained(repo / "snapshots" / "abc123")
    tok.save_pretrained(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    adapter = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, target_modules="all-linear"))
    adapter.peft_config["default"].base_model_name_or_path = "owner/base"
    adapter.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")

    loaded, _ = load_model_and_tokenizer(ModelSpec(name_or_path=str(tmp_path / "adapter"), cache_dir=str(tmp_path / "hub")))
    assert hasattr(loaded, "peft_config") and loaded.config.vocab_size == model.config.vocab_size
    with pytest.raises(ConfigError, match="^model.name_or_path: cannot load"):  # the default cache has no owner/base
        load_model_and_tokenizer(ModelSpec(name_or_path=str(tmp_path / "adapter")))


# ----------------------------------------------------------------------------- logger save_dir
def test_an_unset_save_dir_is_the_run_folder_and_a_given_one_is_kept():
    from jsonargparse import Namespace

    from taosr.launcher import _fill_run_paths

    def cfg(save_dir):
        return Namespace(trainer=Namespace(default_root_dir="run", callbacks=[], logger=Namespace(
            class_path="taosr.loggers.AutoWandbLogger", init_args=Namespace(save_dir=save_dir, name="x"))))
    for given, want in ((None, "run"), ("runs", "runs"), (".", "."), ("logs", "logs")):
        c = cfg(given)
        _fill_run_paths(c)
        assert c.trainer.logger.init_args.save_dir == want


def test_fit_logs_where_the_user_said_and_otherwise_in_its_run_folder(tmp_path, cache_dir, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)  # `runs` is relative to the working directory
    root = str(tmp_path / "run")
    fit("configs/sft.yaml", root, cache_dir, "--trainer.max_steps", "1", "--trainer.logger.init_args.save_dir", "runs")
    assert os.listdir(tmp_path / "runs") and not os.path.exists(os.path.join(root, "wandb"))
    other = str(tmp_path / "other")  # no save_dir: the run's own folder, and the saved config leaves it unset
    fit("configs/sft.yaml", other, cache_dir, "--trainer.max_steps", "1")
    assert os.path.isdir(os.path.join(other, "wandb"))
    saved = yaml.safe_load(open(os.path.join(other, "config.yaml")))
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] is None
