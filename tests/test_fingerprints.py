"""How `taosr sample`, `score` and `reason` know a model folder (and score its data file) when they
decide whether to continue an earlier run's file: by content, and files of the file-times rule they
used before 2026-12-04 still match where nothing changed."""
import os
import shutil

from taosr.fingerprints import content_fingerprint, file_times_fingerprint
from taosr.sampling import CONTENT, model_fingerprint, resume_mismatch, same_model


def _folder(path, files=None):
    path.mkdir(parents=True)
    for name, text in (files or {"config.json": "{}", "model.bin": "weights" * 100, "sub/tok.json": "[]"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def _touch_all(path, seconds=7):
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            os.utime(os.path.join(root, f), ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def test_content_fingerprint_keeps_copies_and_tells_changes(tmp_path):
    a = _folder(tmp_path / "a")
    fp = content_fingerprint(str(a))
    b = tmp_path / "b"
    shutil.copytree(a, b, copy_function=shutil.copy)
    _touch_all(b)
    assert content_fingerprint(str(b)) == fp                      # a copy with new file times
    (b / "model.bin").write_text("weights" * 99 + "weightz")      # one byte, same size
    assert content_fingerprint(str(b)) != fp
    (b / "model.bin").write_text("weights" * 100)
    assert content_fingerprint(str(b)) == fp
    os.rename(b / "sub" / "tok.json", b / "sub" / "tok2.json")   # a renamed file
    assert content_fingerprint(str(b)) != fp
    assert model_fingerprint(str(a)) == CONTENT + fp and model_fingerprint("org/model") == "org/model"
    f = tmp_path / "pairs.jsonl"
    f.write_text("{}\n")
    g = tmp_path / "elsewhere" / "pairs.jsonl"
    g.parent.mkdir()
    shutil.copy(f, g)
    assert content_fingerprint(str(f)) == content_fingerprint(str(g))


def test_same_model_reads_both_rules(tmp_path):
    a = _folder(tmp_path / "a")
    old = file_times_fingerprint(str(a))                 # what a file written before 2026-12-04 recorded
    assert same_model(old, str(a)) and same_model(model_fingerprint(str(a)), str(a))
    other = _folder(tmp_path / "o", {"config.json": "{}", "model.bin": "other weights"})
    assert not same_model(model_fingerprint(str(other)), str(a)) and not same_model(None, str(a))
    assert same_model("org/model", "org/model") and not same_model("org/other", "org/model")
    _touch_all(a)
    assert not same_model(old, str(a))                   # the old rule as it was: new file times are another model
    assert same_model(model_fingerprint(str(a)), str(a))


def test_resume_mismatch_compares_the_model_by_content(tmp_path):
    a = _folder(tmp_path / "a")
    other = _folder(tmp_path / "o", {"config.json": "{}", "model.bin": "other weights"})
    sampler = {"model": str(a), "model_fingerprint": model_fingerprint(str(a)), "n": 4, "seed": 0}

    class Row:
        def to_dict(self):
            return {"q": 1}
    rows = [Row()]

    def done(**sampler_change):
        return {0: {"index": 0, "split": "train", "example": {"q": 1}, "sampler": {**sampler, **sampler_change}}}
    assert resume_mismatch(done(), rows, "train", sampler) is None
    assert resume_mismatch(done(model="some/old/path/to/a"), rows, "train", sampler) is None
    assert resume_mismatch(done(model_fingerprint=file_times_fingerprint(str(a))), rows, "train", sampler) is None
    why = resume_mismatch(done(model_fingerprint=model_fingerprint(str(other))), rows, "train", sampler)
    assert why == "prompt 0 was sampled with other settings (model_fingerprint)"
    why = resume_mismatch(done(model="elsewhere", n=8), rows, "train", sampler)
    assert why == "prompt 0 was sampled with other settings (n)"


def test_reason_reports_and_ledgers_of_either_rule_match(tmp_path):
    from taosr.bootstrap import _fingerprints_match, _same_settings

    a = _folder(tmp_path / "a")
    out = str(tmp_path / "out.jsonl")
    for fp in (model_fingerprint(str(a)), file_times_fingerprint(str(a))):
        assert _fingerprints_match({"teacher_fingerprints": {"1": [str(a), fp]}}, str(a), out)
        settings = {"teacher": str(a), "teacher_fingerprint": model_fingerprint(str(a)), "prompt_style": "policy", "n": 4}
        assert _same_settings({**settings, "teacher_fingerprint": fp}, settings)
        assert not _same_settings({**settings, "teacher_fingerprint": fp, "n": 8}, settings)
    assert not _fingerprints_match({"teacher_fingerprints": {"1": [str(a), "sha256:0000"]}}, str(a), out)
    assert not _same_settings(None, settings)
    # round 2's teacher is the export fine-tuned after round 1, looked for where this run puts it
    export = _folder(tmp_path / "out.jsonl.rounds" / "round1" / "export", {"config.json": '{"round": 1}'})
    rep = {"teacher_fingerprints": {"1": ["/gone/model", model_fingerprint(str(a))],
                                    "2": ["/gone/out.jsonl.rounds/round1/export", model_fingerprint(str(export))]}}
    assert _fingerprints_match(rep, str(a), out)
    assert not _fingerprints_match(rep, str(export), out)  # another model
    assert not _fingerprints_match({"teacher_fingerprints": {"x": ["m", "f"]}}, str(a), out)  # not this command's
