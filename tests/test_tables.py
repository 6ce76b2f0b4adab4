"""The paper's tables from MLflow runs (pipeline/tables.py): grouping by the params that differ,
mean ± sample std and n over seeds (values computed by hand), the paper-number rule, the
one-line message of an empty table; and the command against a real ``mlflow server``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.report import PAPER_NUMBERS
from pipeline.tables import (
    TABLES,
    Result,
    RunRow,
    build_table,
    build_tables,
    group_runs,
    paper_number,
    render_markdown,
    summarize,
    varying_keys,
)
from simsc.io import read_yaml_mapping

REPO = Path(__file__).resolve().parent.parent
NUMBERS = read_yaml_mapping(PAPER_NUMBERS, what="paper numbers")


def params(**over: str) -> dict[str, str]:
    base = {
        "model.backbone": "efficientnet_lite0",
        "model.temperature": "mlp",
        "model.finetune": "last_block",
        "model.pretrained": "True",
        "model.head": "none",
        "data.dataset": "embedded",
        "data.resolution": "160",
        "train.seed": "0",
        "train.out_dir": "runs/default",
    }
    return {**base, **{k.replace("__", "."): v for k, v in over.items()}}


def run(rid: str, t: int, p: dict[str, str], pck: dict[str, float], dataset="embedded", res="160") -> RunRow:
    return RunRow(rid, rid, p, [Result(dataset, "test", res, pck)], start_time=t, url=f"http://ui/{rid}")


def test_summarize_is_mean_and_sample_std():
    s = summarize([30.0, 34.0])
    assert s.mean == 32.0 and s.n == 2
    assert s.std == pytest.approx(2.8284271)  # sqrt(((30-32)^2 + (34-32)^2) / (2 - 1)) = sqrt(8)
    s3 = summarize([1.0, 2.0, 6.0])  # mean 3, squares 4 + 1 + 9 = 14, / 2 = 7
    assert (s3.mean, s3.std, s3.n) == (3.0, pytest.approx(7**0.5), 3)
    one = summarize([5.0])
    assert (one.mean, one.std, one.n) == (5.0, None, 1)


def test_rows_are_the_params_that_differ_seed_and_out_dir_are_not():
    runs = [
        run("a", 1, params(train__seed="0"), {"0.1": 30.0}),
        run("b", 2, params(train__seed="1", train__out_dir="elsewhere"), {"0.1": 34.0}),
        run("c", 3, params(model__temperature="fixed:1"), {"0.1": 20.0}),
        run("d", 4, params(model__temperature="fixed:1", train__seed="1"), {"0.1": 21.0}),
    ]
    assert varying_keys(runs) == ["model.temperature"]
    groups = group_runs(runs, ["model.temperature"])
    assert [[r.run_id for r in g] for g in groups.values()] == [["a", "b"], ["c", "d"]]


def test_tab3_cells_mean_std_n_and_delta_vs_the_baseline_row():
    runs = [
        run("a", 1, params(), {"0.05": 10.0, "0.1": 30.0, "0.15": 50.0}),
        run("b", 2, params(train__seed="1"), {"0.05": 12.0, "0.1": 34.0, "0.15": 50.0}),
        run("c", 3, params(model__temperature="fixed:1"), {"0.05": 5.0, "0.1": 20.0, "0.15": 40.0}),
        run("d", 4, params(model__temperature="fixed:1", train__seed="1"), {"0.05": 7.0, "0.1": 21.0, "0.15": 41.0}),
    ]
    tab3 = next(t for t in build_tables(runs, NUMBERS) if t.key == "tab3")
    assert tab3.empty is None
    assert tab3.header[:2] == ["configuration", "eval size"]
    assert tab3.header[2:5] == ["embedded test PCK@0.05", "embedded test PCK@0.1", "embedded test PCK@0.15"]
    mlp, fixed = tab3.rows
    assert mlp[0] == "temperature mlp (baseline)" and mlp[1] == "160"
    assert mlp[2] == "11.0 ± 1.4 (n=2)"  # (10, 12): std sqrt(2) = 1.41
    assert mlp[3] == "32.0 ± 2.8 (n=2)"
    assert mlp[4] == "50.0 ± 0.0 (n=2)"
    assert fixed[0] == "temperature fixed:1"
    assert fixed[3] == "20.5 ± 0.7 (n=2); Δ -11.5 vs baseline"  # 20.5 - 32.0
    assert "[seed 0](http://ui/c)" in fixed[-1] and "[seed 1](http://ui/d)" in fixed[-1]
    # the embedded set has no paper number: said once, under the table, not in every cell
    md = render_markdown([tab3])
    assert md.count("paper: protocol differs") == 1
    assert "paper " not in "".join(mlp + fixed)


def test_paper_number_only_when_the_protocol_matches():
    paper = params(
        model__backbone="resnet101",
        data__dataset="pfpascal",
        data__resolution="256",
        model__pretrained="resnet101.tv_in1k",
    )
    at256 = Result("pfpascal", "test", "256", {})
    assert paper_number(paper, at256, "0.1", NUMBERS) == ("SimSC-ResNet101", 92.3)
    assert paper_number(paper, Result("pfwillow", "test", "original", {}), "0.05", NUMBERS) == ("SimSC-ResNet101", 36.1)
    assert paper_number(paper, Result("spair", "test", "256", {}), "0.1", NUMBERS) == ("SimSC-ResNet101", 33.5)  # (T)
    # each difference of protocol: a reason, no number
    assert "trained at 160 px" in paper_number({**paper, "data.resolution": "160"}, at256, "0.1", NUMBERS)
    assert "random initialisation" in paper_number({**paper, "model.pretrained": "False"}, at256, "0.1", NUMBERS)
    assert "val split" in paper_number(paper, Result("pfpascal", "val", "256", {}), "0.1", NUMBERS)
    assert "no paper model" in paper_number({**paper, "model.backbone": "resnet18"}, at256, "0.1", NUMBERS)
    assert "no number at 160 px" in paper_number(paper, Result("pfpascal", "test", "160", {}), "0.1", NUMBERS)
    assert "embedded" in paper_number(paper, Result("embedded", "test", "256", {}), "0.1", NUMBERS)
    assert "matching head" in paper_number({**paper, "model.head": "ncnet"}, at256, "0.1", NUMBERS)


def test_paper_number_and_delta_beside_a_matching_cell():
    p = params(model__backbone="resnet101", data__dataset="pfpascal", data__resolution="256")
    runs = [
        run("a", 1, p, {"0.05": 80.0, "0.1": 90.0, "0.15": 95.0}, "pfpascal", "256"),
        run("b", 2, {**p, "train.seed": "1"}, {"0.05": 82.0, "0.1": 91.0, "0.15": 95.0}, "pfpascal", "256"),
    ]
    tab1 = build_table(next(s for s in TABLES if s.key == "tab1"), runs, NUMBERS)
    (row,) = tab1.rows
    assert row[0] == "all runs"  # nothing but the seed differs
    assert row[3] == "90.5 ± 0.7 (n=2); paper 92.3 (SimSC-ResNet101), Δ -1.8"
    assert not any("protocol differs" in n for n in tab1.notes)
    cell = next(c for c in tab1.cells if c["alpha"] == "0.1")
    assert cell["paper"] == {"model": "SimSC-ResNet101", "value": 92.3} and cell["n"] == 2


def test_a_table_without_runs_says_so_once():
    runs = [run("a", 1, params(), {"0.1": 30.0}), run("b", 2, params(train__seed="1"), {"0.1": 34.0})]
    tables = build_tables(runs, NUMBERS)
    by_key = {t.key: t for t in tables}
    assert by_key["tab1"].empty is None
    for key in ("tab2", "tab3", "supp_tab2", "supp_tab3"):
        assert by_key[key].empty and not by_key[key].rows
    md = render_markdown(tables)
    assert md.count("No table: no two runs differ in backbone, fine-tuned part or pretrained weights.") == 1
    assert "| - |" not in md and "|  |  |" not in md
    assert render_markdown(build_tables([], NUMBERS)).count("No table: no finished run with PCK.") == 1


def test_supp_tab3_single_vs_mlp_from_validation_results():
    def val_run(rid, t, temp, seed, v):
        p = params(model__temperature=temp, train__seed=seed, data__resolution="128")
        return RunRow(rid, rid, p, [Result("embedded", "val", "128", {"0.1": v})], start_time=t)

    runs = [val_run("a", 1, "single", "0", 49.6), val_run("b", 2, "single", "1", 45.8)]
    runs += [val_run("c", 3, "mlp", "0", 42.3), val_run("d", 4, "mlp", "1", 41.6)]
    t = next(t for t in build_tables(runs, NUMBERS) if t.key == "supp_tab3")
    assert [r[0] for r in t.rows] == ["temperature single (baseline)", "temperature mlp"]
    assert t.rows[0][3] == "47.7 ± 2.7 (n=2)"  # (49.6 + 45.8) / 2; |diff| / sqrt(2) = 2.687
    assert t.rows[1][3] == "42.0 ± 0.5 (n=2); Δ -5.8 vs baseline"  # 41.95 - 47.7 = -5.75
    assert t.header[3] == "embedded val PCK@0.1"
    assert any("paper: protocol differs (the embedded set" in n for n in t.notes)


# --- a real mlflow server --------------------------------------------------------------


@pytest.mark.slow
def test_tables_command_reads_logged_runs_from_a_real_server(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from tests.http_server import unused_port
    from tests.mlflow_server import MlflowServer

    srv = MlflowServer(tmp_path, unused_port())
    srv.start()
    try:
        client = MlflowClient(srv.uri)
        exp = client.create_experiment("tables-test")

        def log(temp: str, seed: int, v01: float, status: str = "FINISHED", params_hash: str = "") -> str:
            p = params(model__temperature=temp, train__seed=str(seed))
            tags = {"params_hash": params_hash or f"{temp}-{seed}"}
            rid = client.create_run(exp, tags=tags, run_name=f"{temp} s{seed}").info.run_id
            client.log_batch(rid, params=[Param(k, v) for k, v in p.items()])
            ms = [Metric(f"test_pck_test_160_{a}", v, 0, 0) for a, v in (("0.05", v01 / 3), ("0.1", v01))]
            client.log_batch(rid, metrics=ms)
            table = tmp_path / "pck_table.json"
            table.write_text(
                json.dumps([{"set": "test_160", "dataset": "embedded", "split": "test", "resolution": "160"}])
            )
            client.log_artifact(rid, str(table), "results")
            client.set_terminated(rid, status)
            return rid

        a = log("mlp", 0, 30.0)
        log("mlp", 1, 34.0)
        log("fixed:1", 0, 20.0)
        log("fixed:1", 1, 21.0)
        log("fixed:1", 2, 99.0, status="FAILED")  # not finished: not a row
        # a pipeline run whose report stage has not run yet: validation PCK only, not a row
        early = client.create_run(exp, tags={"dvc.stage": "train"}, run_name="mlp s3").info.run_id
        client.log_batch(early, params=[Param(k, v) for k, v in params(train__seed="3").items()])
        client.log_batch(early, metrics=[Metric("val_pck_0.1", 77.0, 0, 1)])
        client.set_terminated(early, "FINISHED")
        out = tmp_path / "tables"
        cmd = [sys.executable, "-m", "pipeline.tables", "--experiment", "tables-test", "--out", str(out)]
        res = subprocess.run(
            [*cmd, "--tracking-uri", srv.uri], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
        )
        assert res.returncode == 0, res.stderr
        assert "Downloading artifacts" not in res.stderr  # no progress bar per run
        md = (out / "tables.md").read_text()
        assert "32.0 ± 2.8 (n=2)" in md and "20.5 ± 0.7 (n=2); Δ -11.5 vs baseline" in md
        assert "99.0" not in md and "77.0" not in md and early not in md
        assert f"{srv.uri}/#/experiments/{exp}/runs/{a}?workflowType=machine_learning" in md
        assert "<style>" in (out / "tables.html").read_text()
        assert json.loads((out / "tables.json").read_text())[0]["key"] == "tab1"
        # logged as artifacts of the experiment's "tables" run, which is no row of the tables
        (trun,) = client.search_runs([exp], filter_string="tags.`simsc.kind` = 'tables'")
        assert {f.path for f in client.list_artifacts(trun.info.run_id, "tables")} >= {
            "tables/tables.md",
            "tables/tables.html",
        }
        again = subprocess.run([*cmd, "--tracking-uri", srv.uri], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and (out / "tables.md").read_text() == md  # the tables run is not a row
        assert len(client.search_runs([exp], filter_string="tags.`simsc.kind` = 'tables'")) == 1

        # the report's MLflow section: the previous run of the same configuration, with Δ
        from pipeline.tables import comparison_lines

        first = log("mlp", 5, 40.0, params_hash="same")
        second = log("mlp", 5, 43.0, params_hash="same")
        lines = "\n".join(comparison_lines(client, second))
        assert "previous run, same configuration" in lines and f"runs/{first}?workflowType" in lines
        assert "| -3.0 |" in lines  # 40.0 - 43.0
        from pipeline.tables import run_context_markdown

        page = "\n".join(run_context_markdown(client, a, "tables-test"))
        assert "## The tables this run belongs to (experiment tables-test, 6 runs)" in page
        assert "| **temperature mlp, seed 0 (baseline)** ← this run |" not in page  # the seed is no row
        assert "← this run" in page and "### Tab. 3" in page

        bad = subprocess.run(
            [*cmd[:4], "nope", "--tracking-uri", srv.uri], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert bad.returncode == 2
        assert bad.stderr.strip().splitlines() == [
            f"pipeline.tables: error: MLflow store {srv.uri}: no experiment 'nope' (it has: Default, tables-test)"
        ]
    finally:
        srv.stop()


def test_missing_local_store_is_refused_without_creating_it(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.tables", "--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--no-log"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2
    assert "none.db: no such file" in res.stderr and not (tmp_path / "none.db").exists()
