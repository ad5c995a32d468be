"""A command's fingerprint and its records read from a moved checkout (taosr/run_record.py)."""
import os

from taosr.run_record import record_place, relocated

REC = ["fit", "--config", "/work/main/configs/grpo.yaml", "--model.init_args.model.name_or_path", "/work/models/m",
       "--trainer.default_root_dir", "/work/main/runs/x/seed0", "--x", "/work/mainly", "--y", "/work/main",
       "--config configs/sft.yaml sha256:ab", "--data.test /work/main/h.jsonl sha256:cd",
       "--note copy /work/main/runs/old", "smollm2-135m"]


def test_relocated_moves_the_paths_under_the_old_working_folder_only(tmp_path, monkeypatch):
    new = tmp_path / "scratch" / "work" / "main"  # the old path kept inside the new one
    (new / "runs" / "x" / "seed0").mkdir(parents=True)
    monkeypatch.chdir(new)
    place = {"at": "/work/main/runs/x/seed0", "cwd": "/work/main"}
    got = relocated(REC, place, "runs/x/seed0")
    n = os.path.realpath(new)
    assert got == ["fit", "--config", f"{n}/configs/grpo.yaml", "--model.init_args.model.name_or_path", "/work/models/m",
                   "--trainer.default_root_dir", f"{n}/runs/x/seed0", "--x", "/work/mainly", "--y", n,
                   "--config configs/sft.yaml sha256:ab", f"--data.test {n}/h.jsonl sha256:cd",
                   "--note copy /work/main/runs/old", "smollm2-135m"]  # a value that only contains a path stays
    # what cannot tell: an older record, a record elsewhere under the working folder, nothing moved
    assert relocated(REC, None, "runs/x/seed0") == REC
    assert relocated(REC, {"at": "/work/main/runs/x/seed0"}, "runs/x/seed0") == REC
    assert relocated(REC, place, "runs/y/seed0") == REC
    assert relocated(REC, {"at": 5, "cwd": "/work/main"}, "runs/x/seed0") == REC
    assert relocated(REC, record_place("runs/x/seed0"), "runs/x/seed0") == REC
    assert record_place("runs/x/seed0") == {"at": f"{n}/runs/x/seed0", "cwd": n}
