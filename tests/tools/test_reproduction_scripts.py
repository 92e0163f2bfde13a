"""The README's two reproduction scripts end to end on the tiny data set (one epoch per model)."""
import csv
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


def test_cpu_reproduction_writes_the_table_and_both_figures(tiny_data, tmp_path):
    out = tmp_path / "cpu"
    run_bash_script("cpu_reproduction.sh", tiny_data, out, EPOCHS="1", SEEDS="42")
    rows = {r["row"]: r for r in csv.DictReader((out / "tables.csv").open()) if r["split"] == "test"}
    assert set(rows) == {
        "Old model", "New model", "No_Treatment", "No_Treatment (data_pipeline=pil)", "PCT_KL",
        "MPT_KL_nobias", "MPT_KL (b=0)", "MPT_KL (b=1)", "MPT_KL (b=2)", "MPT_KL", "MPT_KL (b=8)",
        "MPT_LM (b=0, lm_weight=0.04)", "MPT_LM (b=2, lm_weight=0.04)", "MPT_LM (lm_weight=0.04)"}
    # The sweep's b = 1 and b = 4 runs are the table's (linked), counted once.
    assert (out / "sweep" / "MPT_KL" / "b4" / "seed42").is_symlink()
    assert {r["runs"] for r in rows.values()} == {"1"}
    for figure in ("b_sweep.png", "embeddings.png"):
        assert_figure(out / figure)
