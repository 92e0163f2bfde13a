"""The reproduction scripts of tools/ end to end on the tiny data set (one epoch per model)."""
import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO, assert_figure, assert_ok, script_env

pytestmark = pytest.mark.slow  # runs the reproduction scripts end to end


def run_bash_script(script, *args, **env):
    proc = subprocess.run(["bash", str(REPO / "tools" / script), *map(str, args)], cwd=REPO,
                          env=dict(script_env(), PYTHON=sys.executable, **env),
                          capture_output=True, text=True, timeout=900)
    assert_ok(proc)
    return proc


def test_quickstart_prints_the_flip_table(tiny_data, tmp_path):
    out = tmp_path / "quickstart"
    proc = run_bash_script("quickstart.sh", "--data-root", tiny_data, "--epochs", "1",
                           "--batch-size", "16", "--device", "cpu", OUT=str(out))
    for row in ("Old model", "New model", "No_Treatment", "PCT_KL", "MPT_KL"):
        assert row in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"old", "new", "No_Treatment", "PCT_KL", "MPT_KL"}
    assert "takes no" not in proc.stderr  # no method is given another method's flags


def test_cpu_reproduction_trains_every_method_and_writes_the_table_the_flips_and_figure_4(tiny_data, tmp_path):
    out = tmp_path / "cpu"
    proc = run_bash_script("cpu_reproduction.sh", tiny_data, out, EPOCHS="1", SEEDS="42")
    rows = {r["row"]: r for r in csv.DictReader((out / "tables.csv").open()) if r["split"] == "test"}
    assert set(rows) == {
        "Old model", "New model", "No_Treatment", "PCT_Naive", "PCT_KL", "PCT_LM (lm_weight=0.04)",
        "ELODI (elodi_warmup=1)", "ELODI_topk (elodi_warmup=1, topk=1)", "MPT_KL", "MPT_KL (b=1)", "MPT_KL (b=2)",
        "MPT_LM (lm_weight=0.04)", "MPT_nodistillation", "MPT_KL_nobias", "MPT_LM_nobias (lm_weight=0.04)"}
    assert {r["runs"] for r in rows.values()} == {"1"}
    assert len(list((out / "ensemble").glob("ckpt_*.pth"))) == 8
    assert (out / "flips" / "flips.json").is_file()
    assert_figure(out / "b_sweep.png")
    # Repeated, the command finds every run finished and trains nothing.
    again = run_bash_script("cpu_reproduction.sh", tiny_data, out, EPOCHS="1", SEEDS="42")
    assert again.stdout.count("done: ") == proc.stdout.count("done: ") == 2 + 8 + 13
    assert "nothing to do" in (out / "update" / "MPT_KL-seed42" / "train.log").read_text()


def test_data_growth_trains_pct_at_its_published_setting_beside_the_mpt_code_s(tiny_data, tmp_path):
    out = tmp_path / "growth"
    run_bash_script("data_growth_cpu.sh", tiny_data, out, EPOCHS="1", SEEDS="42")
    rows = {r["row"] for r in csv.DictReader((out / "tables.csv").open()) if r["split"] == "test"}
    assert rows == {"Old model", "New model", "No_Treatment", "PCT_KL", "PCT_LM (lm_weight=0.04)", "MPT_KL_nobias",
                    "PCT_KL (tau=100, tau_squared=True, distill_mix=0.9)"}
    config = json.loads((out / "update" / "PCT_KL_published-seed42" / "results.json").read_text())["config"]
    assert ((config["tau"], config["tau_squared"], config["distill_mix"], config["epochs"], config["lr"])
            == (100.0, True, 0.9, 1, 0.01))
    assert (out / "flips" / "flips.json").is_file()


def test_figure3_trains_the_2d_models_and_draws_their_embeddings(tiny_data, tmp_path):
    out = tmp_path / "fig3"
    run_bash_script("figure3_cpu.sh", tiny_data, out, EPOCHS="1")
    rows = {r["row"] for r in csv.DictReader((out / "tables.csv").open()) if r["split"] == "test"}
    assert rows == {"Old model", "New model", "No_Treatment", "MPT_KL", "MPT_KL (b=1)"}
    for run in ("old", "new", "No_Treatment", "MPT_KL-b1", "MPT_KL"):
        config = json.loads((out / run / "results.json").read_text())["config"]
        assert (config["embed_dim"], config["epochs"]) == (2, 1)
    assert_figure(out / "embeddings.png")
