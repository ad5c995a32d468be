"""The notebooks run top to bottom on a tiny run's outputs (nbclient)."""
import os

import nbformat
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # end to end: subprocesses / notebook kernels

nbclient = pytest.importorskip("nbclient")


def execute(name, env):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def test_inspect_run_notebook(sft_run):
    nb = execute("inspect_run.ipynb", {"TAOSR_RUN": sft_run})
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Query understanding" in html or "(missing)" in html
    assert "macro_f1" in html


def test_compare_runs_notebook(tmp_path, sft_run):
    import json
    import glob

    from taosr.pipeline import write_report
    from taosr.sweep import write_summary

    m = json.load(open(sorted(glob.glob(os.path.join(sft_run, "eval", "val-step*-metrics.json")))[-1]))
    write_report(str(tmp_path / "quickstart"), {"sft": m, "dpo": m})
    assert (tmp_path / "quickstart" / "comparison.png").exists()
    # run002 failed after a validation that scored higher, run003 scored NaN: neither is the best run
    write_summary(str(tmp_path / "sweeps" / "demo"), [{"run": "run000", "lr": 1e-4, "exit": 0, "val/macro_f1": 0.5},
                                                      {"run": "run001", "lr": 1e-3, "exit": 0, "val/macro_f1": 0.6},
                                                      {"run": "run002", "lr": 1e-2, "exit": 1, "val/macro_f1": 0.7},
                                                      {"run": "run003", "lr": 1e-1, "exit": 0, "val/macro_f1": float("nan")}],
                  "val/macro_f1", "maximize")
    summary = (tmp_path / "sweeps" / "demo" / "summary.md").read_text()
    assert "best: run001 val/macro_f1=0.6000" in summary and "not ranked (failed, or no finite val/macro_f1): run002, run003" in summary
    nb = execute("compare_runs.ipynb", {"TAOSR_RUNS": str(tmp_path)})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "rows in" in text and "4 runs" in text and "not plotted (failed or no metric): run002, run003" in text


def test_inspect_run_scores_steps_with_a_grm_on_the_whole_item(tmp_path, sft_run, samples, cache_dir):
    """The notebook's GRM cell rebuilt each item from its title alone (brand, category, attributes and
    price dropped: other P(right) than SRPO's scorer gives); records now carry the whole item."""
    import json

    from tests.conftest import fit

    records = [json.loads(x) for x in open(sorted(glob_predictions(sft_run))[-1])]
    assert records[0]["item"]["title"] == records[0]["title"] and "price" in records[0]["item"]
    grm = fit("configs/grm.yaml", str(tmp_path / "grm"), cache_dir, "--model.init_args.model.name_or_path",
              os.path.join(sft_run, "export"), "--data.samples_path", samples)
    nb = execute("inspect_run.ipynb", {"TAOSR_RUN": sft_run, "TAOSR_GRM": os.path.join(grm, "export")})
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "macro_f1" in html  # the GRM cell built each Example from the record's item and scored it (no error)


def glob_predictions(run):
    import glob

    return glob.glob(os.path.join(run, "eval", "*-predictions.jsonl"))


def test_compare_study_notebook(tmp_path):
    """On a comparison folder of two arms over two seeds (prediction records and the report written by
    taosr compare's own functions): the paired differences, the flips per query type, the steps and
    the examples one arm wins on every seed."""
    import json

    from taosr.compare import write_report
    from taosr.eval.flips import predictions_path
    from taosr.eval.metrics import compute_metrics

    def rec(i, gold, pred, qt):
        return {"index": i, "id": f"h-{i}", "query": f"query {i}", "title": f"item {i}", "query_type": qt, "gold": gold,
                "pred": pred, "reasoning": f"Judgment: ... {pred}", "step_verdicts": {"item": float(pred == gold)}}

    golds = [(4, "brand"), (2, "alternative"), (3, "negation"), (1, "qa"), (2, "alternative"), (4, "brand")]
    preds = {("a", 0): [4, 4, 3, 1, 2, 4], ("a", 1): [4, 4, 3, 2, 2, 4],  # a misses h-1 on both seeds
             ("b", 0): [4, 2, 3, 1, 4, 4], ("b", 1): [4, 2, 2, 1, 2, 4]}
    out = str(tmp_path / "cmp")
    results = {}
    for (arm, seed), ps in preds.items():
        records = [rec(i, g, p, qt) for i, ((g, qt), p) in enumerate(zip(golds, ps))]
        path = predictions_path(out, arm, seed)
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        results.setdefault(arm, {})[seed] = compute_metrics(records)
    write_report(out, results, [("a", "b")], "demo")
    nb = execute("compare_study.ipynb", {"TAOSR_COMPARE": out, "TAOSR_EXAMPLES": "3"})
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "a = a, b = b; seeds [0, 1]" in text
    assert "== h-1 (alternative), gold 2: a right on 0/2 seeds, b on 2/2; seed 0" in text
    assert "2 examples more often right in b, 2 more often in a" in text
    headers = [ln for ln in text.splitlines() if ln.startswith("== h-")]
    assert len(headers) == 4 and len(set(headers)) == 4, headers  # each example once
    # against the start, scored once; a report with no pair scored yet (an empty pairs.csv)
    start = [rec(i, g, p, qt) for i, ((g, qt), p) in enumerate(zip(golds, [4, 2, 2, 2, 2, 4]))]
    os.makedirs(os.path.dirname(predictions_path(out, "start", None)))
    with open(predictions_path(out, "start", None), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in start)
    write_report(out, results, [], "demo")
    assert os.path.getsize(os.path.join(out, "pairs.csv")) == 0
    nb = execute("compare_study.ipynb", {"TAOSR_COMPARE": out, "TAOSR_PAIR": "a start"})
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "a = a, b = start; seeds [0, 1]" in text and "more often right in start" in text
