"""A command's fingerprint and its records read from a moved folder (taosr/run_record.py)."""
from taosr.run_record import moved_roots, relocated


def test_moved_roots_are_what_lies_above_the_common_tail():
    assert moved_roots("/work/main/runs/x/seed0", "/srv/p/runs/x/seed0") == ("/work/main", "/srv/p")
    assert moved_roots("/a/runs/x", "/a/runs/x") is None  # not moved
    assert moved_roots("/a/runs/x", "/a/runs/y") is None  # its own name changed: no telling what moved
    assert moved_roots("/a/x", "/b/c/a/x") is None  # a root of "/" would move every path
    assert moved_roots("/b/c/a/x", "/a/x") is None


def test_relocated_moves_only_the_paths_under_the_moved_tree():
    rec = ["fit", "--config", "/work/main/configs/grpo.yaml", "--model.init_args.model.name_or_path", "/data/m",
           "--trainer.default_root_dir", "/work/main/runs/x/seed0", "--x", "/work/mainly", "--y", "/work/main",
           "--config configs/sft.yaml sha256:ab", "--data.test /work/main/h.jsonl sha256:cd", "smollm2-135m"]
    got = relocated(rec, "/work/main/runs/x/seed0", "/srv/p/runs/x/seed0")
    assert got == ["fit", "--config", "/srv/p/configs/grpo.yaml", "--model.init_args.model.name_or_path", "/data/m",
                   "--trainer.default_root_dir", "/srv/p/runs/x/seed0", "--x", "/work/mainly", "--y", "/srv/p",
                   "--config configs/sft.yaml sha256:ab", "--data.test /srv/p/h.jsonl sha256:cd", "smollm2-135m"]
    assert relocated(rec, None, "/srv/p/runs/x/seed0") == rec  # an older record: as it is
    assert relocated(rec, "/work/main/runs/x/seed0", "/work/main/runs/x/seed0") == rec
