"""Choosing b on validation metrics: the rule, and python -m tools.select_b on fake runs."""
import json
import math

import pytest

from tools import select_b
from tools.select_b import choose_b
from utils.errors import UserError


def test_lowest_nfr_within_the_tolerance_of_b0():
    # b: (val ER(Y_all), val NFR). b=4 has the lowest NFR but costs 1.5 points of ER.
    points = {0.0: (30.0, 5.0), 1.0: (30.4, 4.0), 2.0: (31.0, 3.0), 4.0: (31.5, 2.0)}
    assert choose_b(points, tolerance=1.0) == 2.0
    assert choose_b(points, tolerance=2.0) == 4.0
    assert choose_b(points, tolerance=0.0) == 0.0


def test_ties_go_to_the_smaller_b_and_nan_nfr_is_skipped():
    assert choose_b({0.0: (30.0, 5.0), 3.0: (30.0, 2.0), 1.0: (30.0, 2.0)}, 1.0) == 1.0
    assert choose_b({0.0: (30.0, 5.0), 1.0: (29.0, math.nan)}, 1.0) == 0.0


def test_without_b0_there_is_nothing_to_compare_with():
    with pytest.raises(UserError, match="b = 0"):
        choose_b({1.0: (30.0, 5.0)}, 1.0)


def test_command_on_a_sweep_averages_seeds(tmp_path, fake_run, capsys):
    sweep = tmp_path / "sweep"
    for method, by_b in {"MPT_KL": {0: [(30, 5), (32, 5)], 1: [(31, 4), (31, 4)], 2: [(33, 2), (33, 2)]},
                         "MPT_LM": {0: [(30, 6)], 2: [(30.5, 3)]}}.items():
        for b, seeds in by_b.items():
            for seed, (er, nfr) in enumerate(seeds):
                fake_run(sweep / method / f"b{b}" / f"seed{seed}", method=method, b=float(b), seed=seed,
                         er_all=0.0, nfr=0.0, val={"er_all": er, "nfr": nfr})
    fake_run(sweep / "pct", method="PCT_KL", val={"er_all": 1.0, "nfr": 0.1})  # no b: not a candidate
    out_file = tmp_path / "selected.json"
    records = select_b.main([str(sweep), "--out", str(out_file)])
    # MPT_KL: b=0 averages to ER 31, so b=2 (ER 33) is out and b=1 wins.
    assert [(r["method"], r["b"]) for r in records] == [("MPT_KL", 1.0), ("MPT_LM", 2.0)]
    assert json.loads(out_file.read_text()) == records
    assert records[0]["points"][0] == {"b": 0.0, "runs": 2, "val_er_all": 31.0, "val_nfr": 5.0}
    assert "selected b = 1 for MPT_KL" in capsys.readouterr().out


def test_command_needs_validation_metrics(tmp_path, fake_run, capsys):
    fake_run(tmp_path / "a", b=0.0, er_all=1.0, nfr=1.0)
    with pytest.raises(SystemExit) as exc:
        select_b.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "--val-fraction" in capsys.readouterr().err
