"""Rejection sampling, diverse sampling and the curriculum read each prompt's own offline pass
rate: samples rows are matched to their example by id, not by (query, title) alone."""
import dataclasses
import json
from types import SimpleNamespace

import pytest

from taosr.data.hooks import Curriculum, CurriculumStage, RejectionSampling
from taosr.errors import ConfigError
from taosr.schema import Example, Item


def _twins():
    a = Example(query="hammer", item=Item(title="Stanley Hammer"), label=4, id="train-0")
    b = dataclasses.replace(a, label=2, id="train-1", item=Item(title="Stanley Hammer", price=99.0))
    return [a, b]


def _samples(path, rows_rates, with_ids=True):
    lines = []
    for ex, rate in rows_rates:
        d = ex.to_dict()
        if not with_ids:
            d.pop("id", None)
        n_ok = int(rate * 4)
        samples = [{"text": "Label: 1", "pred": ex.label if i < n_ok else 1, "correct": i < n_ok} for i in range(4)]
        lines.append(json.dumps({"index": 0, "split": "train", "pass_rate": rate, "example": d, "samples": samples}))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _dm(path):
    return SimpleNamespace(samples_path=path, target="reasoning")


def test_twins_sharing_query_and_title_keep_their_own_pass_rates(tmp_path):
    rows = _twins()
    path = _samples(tmp_path / "s.jsonl", [(rows[0], 0.5), (rows[1], 1.0)])  # the second is always solved
    kept = RejectionSampling(enabled=True, low=0.0, high=1.0).filter(rows, _dm(path))
    assert [ex.id for ex in kept] == ["train-0"]  # (query, title) keys gave both the last row's 1.0: none kept
    cur = Curriculum(enabled=True, stages=[CurriculumStage(max_difficulty=0.25)])
    assert [ex.id for ex in cur.filter(rows, _dm(path))] == ["train-1"]  # difficulty 0.5 vs 0.0


def test_rows_without_ids_fall_back_to_query_and_title_and_refuse_twins(tmp_path):
    rows = _twins()
    one = [dataclasses.replace(rows[0], id=None)]
    path = _samples(tmp_path / "s.jsonl", [(one[0], 0.5)], with_ids=False)
    assert len(RejectionSampling(enabled=True).filter(one, _dm(path))) == 1
    two = [dataclasses.replace(ex, id=None) for ex in rows]
    with pytest.raises(ConfigError, match="matches 2 examples"):
        RejectionSampling(enabled=True).filter(two, _dm(path))


def test_a_missing_samples_file_names_the_option_that_reads_it_and_how_to_do_without(tmp_path):
    """configs/grpo.yaml and grm.yaml default data.samples_path to runs/sft/samples-train.jsonl: a
    user's run without it said only "runs/sft/samples-train.jsonl: file not found", a file they
    never named."""
    from taosr.data.hooks import DiverseSampling
    from taosr.data.samples import load_samples
    from taosr.errors import DataError

    rows, missing = _twins(), str(tmp_path / "runs" / "sft" / "samples-train.jsonl")
    with pytest.raises(DataError, match=r"samples-train.jsonl: file not found: data.samples_path \(rejection sampling; "
                                        r"off: --data.rejection_sampling.enabled false\) reads `taosr sample`'s output"):
        RejectionSampling(enabled=True).filter(rows, _dm(missing))
    with pytest.raises(DataError, match=r"data.rejection_sampling.samples_path \(rejection sampling"):
        RejectionSampling(enabled=True, samples_path=missing).filter(rows, _dm(None))
    with pytest.raises(DataError, match=r"--data.curriculum.enabled false"):
        Curriculum(enabled=True).filter(rows, _dm(missing))
    with pytest.raises(DataError, match=r"--data.diverse_sampling.enabled false"):
        DiverseSampling(enabled=True).filter(rows, _dm(missing))
    with pytest.raises(DataError, match=r"file not found$"):  # a path the caller named itself: as before
        load_samples(missing)


def test_the_default_curriculum_is_written_to_a_config_that_runs_again(tmp_path, capsys):
    """`--data.curriculum.enabled true` keeps the default stages: the run's config.yaml held "Unable to
    serialize instance CurriculumStage(...)" for each, and running it again was refused."""
    from taosr.cli import main
    from taosr.launcher import parse_error

    assert main(["fit", "--config", "configs/grpo.yaml", "--data.curriculum.enabled", "true", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "Unable to serialize" not in printed and "until_step: 20" in printed
    saved = tmp_path / "config.yaml"
    saved.write_text(printed)
    assert parse_error(["fit", "--config", str(saved), "--model.init_args.model.name_or_path", "micro"], build=False) is None
    cur = Curriculum(stages=[{"max_difficulty": 0.3}])
    assert cur.stages == [CurriculumStage(max_difficulty=0.3)] and Curriculum().stages[0].until_step == 20
