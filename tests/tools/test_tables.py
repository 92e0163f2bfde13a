"""python -m tools.tables on hand-written results.json files."""
import csv
import io
import json

import numpy as np
import pytest

from tools import tables
from tools.results import find_runs, group


@pytest.fixture
def runs(tmp_path, fake_run):
    """Two experiments: cifar10 resnet18 -> resnet18 (all kinds of rows) and resnet18 -> resnet50."""
    root = tmp_path / "runs"
    old_ckpt = tmp_path / "ckpt" / "old.pth"
    fake_run(root / "old", role="old", checkpoint=old_ckpt, er_old=30.0)
    fake_run(root / "new18", role="new", er_old=25.0, er_all=28.0)
    fake_run(root / "new50", role="new", arch="resnet50", er_old=20.0, er_all=22.0)
    common = dict(old_ckpt=old_ckpt, er_old=26.0, er_all=29.0, rel_nfr=40.0)
    # Written in an order unlike the table's, to check the sorting.
    fake_run(root / "mpt_lm", method="MPT_LM", nfr=3.5, **common)
    fake_run(root / "mpt_kl_b2", method="MPT_KL", b=2.0, nfr=4.5, **common)
    fake_run(root / "mpt_kl_42", method="MPT_KL", seed=42, nfr=3.0, **common)
    fake_run(root / "mpt_kl_43", method="MPT_KL", seed=43, nfr=4.0, **common)
    fake_run(root / "nobias", method="MPT_KL_nobias", b=2.0, nfr=4.2, **common)  # b is ignored
    fake_run(root / "nt_42", method="No_Treatment", seed=42, nfr=5.0, **common)
    fake_run(root / "nt_43", method="No_Treatment", seed=43, nfr=7.0, **common)
    fake_run(root / "nt_44", method="No_Treatment", seed=44, nfr=6.0, **dict(common, rel_nfr=float("nan")))
    fake_run(root / "elodi", method="ELODI", nfr=4.8, **common)
    fake_run(root / "pct", method="PCT_KL", nfr=4.6, **common)
    fake_run(root / "r50", method="MPT_KL", arch="resnet50", nfr=2.0, **common)
    return root


def test_rows_in_the_papers_order_with_b_and_runs(runs):
    by_key = group(find_runs([runs]))
    assert [k.title() for k in by_key] == ["cifar10: resnet18 -> resnet18", "cifar10: resnet18 -> resnet50"]
    rows = list(by_key.values())[0]
    assert [(r.label, len(r.runs)) for r in rows] == [
        ("Old model", 1), ("New model", 1), ("No_Treatment", 3), ("PCT_KL", 1), ("ELODI", 1),
        ("MPT_KL_nobias", 1), ("MPT_KL (b=2)", 1), ("MPT_KL", 2), ("MPT_LM", 1)]
    # The resnet50 table has the same old model and its own new model.
    assert [(r.label, r.runs[0].results.get("er_all")) for r in list(by_key.values())[1]] == [
        ("Old model", None), ("New model", 22.0), ("MPT_KL", 29.0)]


def test_markdown_mean_std_and_missing_values(runs, capsys):
    tables.main([str(runs)])
    md = capsys.readouterr().out
    assert "### cifar10: resnet18 -> resnet18" in md
    assert "| Method | Runs | ER(Y_old) | ER(Y_all) | NFR | Rel-NFR |" in md
    # Three seeds: mean ± sample std of 5, 7, 6; Rel-NFR over the two finite values.
    assert "| No_Treatment | 3 | 26.00 ± 0.00 | 29.00 ± 0.00 | 6.00 ± 1.00 | 40.00 ± 0.00 |" in md
    assert "| Old model | 1 | 30.00 | – | – | – |" in md
    assert "| New model | 1 | 25.00 | 28.00 | – | – |" in md
    assert "| MPT_KL (b=2) | 1 | 26.00 | 29.00 | 4.50 | 40.00 |" in md


def test_files_and_csv_content(runs, tmp_path):
    tables.main([str(runs), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "tables.md").read_text().startswith("### cifar10")
    lines = list(csv.DictReader(io.StringIO((tmp_path / "out" / "tables.csv").read_text())))
    nt = next(r for r in lines if r["row"] == "No_Treatment")
    assert nt["runs"] == "3" and nt["nfr_mean"] == "6" and nt["nfr_std"] == "1" and nt["b"] == ""
    kl2 = next(r for r in lines if r["row"] == "MPT_KL (b=2)")
    assert (kl2["method"], kl2["b"], kl2["nfr_std"], kl2["new_arch"]) == ("MPT_KL", "2", "", "resnet18")
    old = next(r for r in lines if r["row"] == "Old model")
    assert old["er_old_mean"] == "30" and old["nfr_mean"] == ""
    assert len(lines) == 9 + 3


def test_plain_print(runs, capsys):
    tables.main([str(runs), "--print"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cifar10: resnet18 -> resnet18"
    assert out[1].split() == ["Method", "Runs", "ER(Y_old)", "ER(Y_all)", "NFR", "Rel-NFR"]
    assert out[2].split() == ["Old", "model", "1", "30.00", "–", "–", "–"]


def test_unknown_old_model_and_mixed_settings_are_reported(tmp_path, fake_run, capsys):
    fake_run(tmp_path / "a", method="PCT_KL", seed=1, old_ckpt=tmp_path / "missing.pth", nfr=1.0)
    fake_run(tmp_path / "b", method="PCT_KL", seed=2, old_ckpt=tmp_path / "missing.pth", nfr=2.0,
             config={"epochs": 5})
    tables.main([str(tmp_path), "--print"])
    captured = capsys.readouterr()
    assert "cifar10: ? -> resnet18" in captured.out
    assert "missing.pth" in captured.err and "differ in --epochs" in captured.err


def test_validation_split_and_no_runs(tmp_path, fake_run, capsys):
    fake_run(tmp_path / "a", nfr=1.0, er_all=2.0, val={"nfr": 9.0, "er_all": 8.0})
    tables.main([str(tmp_path), "--print", "--split", "val"])
    out = capsys.readouterr().out
    assert "(validation)" in out and "9.00" in out and "1.00" not in out
    with pytest.raises(SystemExit) as exc:
        tables.main([str(tmp_path / "a" / "nothing")])
    assert exc.value.code == 2


def test_b_is_shown_where_it_is_not_the_data_sets_default(tmp_path, fake_run):
    fake_run(tmp_path / "a", dataset="imagenet", b=1.5, nfr=1.0)   # ImageNet's default b
    fake_run(tmp_path / "b", dataset="imagenet", b=4.0, nfr=1.0)
    fake_run(tmp_path / "c", dataset="cifar100", b=4.0, nfr=1.0)   # CIFAR's default b
    labels = {k.dataset: [r.label for r in rows] for k, rows in group(find_runs([tmp_path])).items()}
    assert labels == {"cifar100": ["MPT_KL"], "imagenet": ["MPT_KL", "MPT_KL (b=4)"]}


def test_non_default_method_settings_and_pipeline_get_rows_of_their_own(tmp_path, fake_run, capsys):
    """An --lm-weight sweep or a --data-pipeline pil control is not averaged into the default
    rows; a flag the method does not use (MPT_KL has no --lm-weight) changes nothing."""
    fake_run(tmp_path / "lm", method="MPT_LM", nfr=1.0)
    fake_run(tmp_path / "lm_small", method="MPT_LM", nfr=2.0, config={"lm_weight": 0.04})
    fake_run(tmp_path / "lm_small_b2", method="MPT_LM", b=2.0, nfr=3.0, config={"lm_weight": 0.04})
    fake_run(tmp_path / "kl", method="MPT_KL", seed=1, nfr=4.0, config={"lm_weight": 0.4})
    fake_run(tmp_path / "kl2", method="MPT_KL", seed=2, nfr=6.0, config={"lm_weight": 0.04})
    fake_run(tmp_path / "nt", method="No_Treatment", nfr=7.0, config={"data_pipeline": "tensor"})
    fake_run(tmp_path / "nt_pil", method="No_Treatment", nfr=8.0, config={"data_pipeline": "pil"})
    rows = next(iter(group(find_runs([tmp_path])).values()))
    assert [(r.label, r.stat("nfr")[0]) for r in rows] == [
        ("No_Treatment", 7.0), ("No_Treatment (data_pipeline=pil)", 8.0), ("MPT_KL", 5.0),
        ("MPT_LM", 1.0), ("MPT_LM (b=2, lm_weight=0.04)", 3.0), ("MPT_LM (lm_weight=0.04)", 2.0)]
    assert [r.curve for r in rows[-2:]] == ["MPT_LM (lm_weight=0.04)"] * 2
    assert "differ in" not in capsys.readouterr().err


def test_linked_runs_are_found_once(tmp_path, fake_run):
    """A sweep folder may link runs made elsewhere; a link cycle does not hang the search."""
    fake_run(tmp_path / "update" / "b4", b=4.0, nfr=1.0)
    fake_run(tmp_path / "sweep" / "b2", b=2.0, nfr=2.0)
    (tmp_path / "sweep" / "b4").symlink_to(tmp_path / "update" / "b4")
    (tmp_path / "sweep" / "loop").symlink_to(tmp_path / "sweep")
    assert [r.label for r in next(iter(group(find_runs([tmp_path / "sweep"])).values()))] == [
        "MPT_KL (b=2)", "MPT_KL"]
    assert [len(r.runs) for r in next(iter(group(find_runs([tmp_path])).values()))] == [1, 1]


def test_labels_come_from_each_methods_own_hyperparameters(tmp_path, fake_run):
    """A row is labelled with the hyperparameters its method declares (methods/registry.py) where
    they depart from the declared defaults; another method's flags in the config change nothing."""
    base = {"elodi_old_weight": 0.6, "elodi_ensemble_weight": 0.4, "elodi_warmup": 6, "topk": 10}
    fake_run(tmp_path / "e", method="ELODI", nfr=1.0, config=dict(base, topk=3))     # topk is not ELODI's
    fake_run(tmp_path / "e0", method="ELODI", nfr=2.0, config=dict(base, elodi_warmup=0))
    fake_run(tmp_path / "t", method="ELODI_topk", nfr=3.0, config=dict(base, topk=3))
    fake_run(tmp_path / "k", method="PCT_KL", nfr=4.0, config={"tau": 2.0, "lm_weight": 0.04})
    rows = next(iter(group(find_runs([tmp_path])).values()))
    assert [r.label for r in rows] == ["PCT_KL (tau=2)", "ELODI", "ELODI (elodi_warmup=0)",
                                       "ELODI_topk (topk=3)"]


def write_predictions(folder, seed):
    """A predictions.npz of 200 cifar10 test samples (C_old = 5: 0.5 x 10 classes); returns
    the NFR bootstrap interval that --ci must find for it."""
    from utils.metrics import bootstrap_interval, flip_indicators, rate

    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 10, 200)
    old_pred = np.where(rng.random(200) < 0.8, targets, rng.integers(0, 5, 200))
    pred = np.where(rng.random(200) < 0.7, targets, rng.integers(0, 10, 200))
    np.savez(folder / "predictions.npz", targets=targets, old_pred=old_pred, pred=pred)
    negative = flip_indicators(targets, old_pred, pred, 5).negative
    return rate(negative), bootstrap_interval(rate, negative, resamples=300, seed=0)


def test_ci_is_the_t_interval_over_seeds_for_a_group_and_the_bootstrap_for_one_run(tmp_path, fake_run, capsys):
    """A row of several runs gets the t-interval of its mean NFR over them (scipy's t.interval,
    from results.json, no predictions needed); a row of one run the bootstrap interval over the
    test samples from its predictions.npz, "–" without; each labelled as what it is."""
    from scipy.stats import t

    for s, nfr in ((1, 1.0), (2, 3.0), (3, 2.5)):
        fake_run(tmp_path / f"kl{s}", method="MPT_KL", seed=s, nfr=nfr)
    nt = [fake_run(tmp_path / f"nt{s}", method="No_Treatment", seed=s, nfr=nfr) for s, nfr in ((1, 4.0), (2, 4.0))]
    write_predictions(nt[0], 3)   # not used: the row has two runs
    one = fake_run(tmp_path / "pct", method="PCT_KL", nfr=1.0)
    nfr_pct, ci_pct = write_predictions(one, 1)
    fake_run(tmp_path / "lm", method="MPT_LM", nfr=1.0)
    tables.main([str(tmp_path), "--print"])
    assert "CI" not in capsys.readouterr().out
    tables.main([str(tmp_path), "--ci", "--resamples", "300"])
    md = capsys.readouterr().out
    assert "| Method | Runs | ER(Y_old) | ER(Y_all) | NFR | Rel-NFR | NFR 95% CI |" in md
    values = [1.0, 3.0, 2.5]
    low, high = t.interval(0.95, 2, loc=np.mean(values), scale=np.std(values, ddof=1) / np.sqrt(3))
    assert f"| MPT_KL | 3 | – | – | 2.17 ± 1.04 | – | [{low:.2f}, {high:.2f}] (t, 3 seeds) |" in md
    # no spread between the seeds: the interval is the mean itself, and says why
    assert "| No_Treatment | 2 | – | – | 4.00 ± 0.00 | – | [4.00, 4.00] (t, 2 seeds, no spread) |" in md
    assert f"| PCT_KL | 1 | – | – | 1.00 | – | [{ci_pct[0]:.2f}, {ci_pct[1]:.2f}] (bootstrap) |" in md
    assert "| MPT_LM | 1 | – | – | 1.00 | – | – |" in md
    tables.main([str(tmp_path), "--ci", "--resamples", "300", "--out", str(tmp_path / "out")])
    lines = list(csv.DictReader(io.StringIO((tmp_path / "out" / "tables.csv").read_text())))
    row = next(r for r in lines if r["row"] == "MPT_KL")
    assert (float(row["nfr_ci_low"]), float(row["nfr_ci_high"])) == pytest.approx((low, high), rel=1e-5)
    assert (row["nfr_ci_kind"], row["nfr_ci_runs"]) == ("t", "3")
    row = next(r for r in lines if r["row"] == "PCT_KL")
    assert float(row["nfr_ci_low"]) == pytest.approx(ci_pct[0], rel=1e-5)
    assert (row["nfr_ci_kind"], row["nfr_ci_runs"]) == ("bootstrap", "1")
    assert next(r for r in lines if r["row"] == "MPT_LM")["nfr_ci_low"] == ""
    with pytest.raises(SystemExit) as exc:
        tables.main([str(tmp_path), "--ci", "--split", "val"])
    assert exc.value.code == 2 and "--ci" in capsys.readouterr().err


def test_same_class_and_data_growth_updates_get_tables_of_their_own(tmp_path, fake_run):
    """Runs of a class-incremental, a same-class and a data-growth experiment never share a row,
    even with the same method, architectures and seed; a new model serves both same-class kinds."""
    root = tmp_path / "runs"
    half, full, growth = (tmp_path / f"{name}.pth" for name in ("half", "full", "growth"))
    same = {"old_fraction": 1.0}
    fake_run(root / "old_half", role="old", checkpoint=half, er_old=30.0)
    fake_run(root / "old_full", role="old", checkpoint=full, config=same, er_old=35.0,
             setting={"old_fraction": 1.0, "old_data_fraction": 1.0})
    fake_run(root / "old_growth", role="old", checkpoint=growth, config=same, er_old=45.0,
             setting={"old_fraction": 1.0, "old_data_fraction": 0.5})
    fake_run(root / "new_same", role="new", config=same, er_old=33.0, er_all=33.0)
    for name, ckpt, setting, nfr in (("half", half, None, 3.0), ("full", full, {"old_data_fraction": 1.0}, 2.0),
                                     ("growth", growth, {"old_data_fraction": 0.5}, 5.0)):
        extra = {} if setting is None else {"config": same, "setting": {"old_fraction": 1.0, **setting}}
        fake_run(root / f"pct_{name}", method="PCT_KL", old_ckpt=ckpt, nfr=nfr, **extra)
    by_title = {k.title(): rows for k, rows in group(find_runs([root])).items()}
    assert sorted(by_title) == ["cifar10: resnet18 -> resnet18",
                                "cifar10: resnet18 -> resnet18, same classes",
                                "cifar10: resnet18 -> resnet18, same classes, old model on 50% of the images"]

    def cells(title):
        return [(row.label, [r.metrics().get("nfr", r.metrics().get("er_old")) for r in row.runs])
                for row in by_title[title]]

    assert cells("cifar10: resnet18 -> resnet18") == [("Old model", [30.0]), ("PCT_KL", [3.0])]
    assert cells("cifar10: resnet18 -> resnet18, same classes") == [
        ("Old model", [35.0]), ("New model", [33.0]), ("PCT_KL", [2.0])]
    assert cells("cifar10: resnet18 -> resnet18, same classes, old model on 50% of the images") == [
        ("Old model", [45.0]), ("New model", [33.0]), ("PCT_KL", [5.0])]
    text = tables.csv_text(group(find_runs([root])))
    assert "old_fraction,old_data_fraction" in text.splitlines()[0]


def with_record(folder, name, hyperparameters, defaults):
    """Add results.json's "method" record (utils/cli.py method_record) to a fake run."""
    from methods import method_label

    results = json.loads((folder / "results.json").read_text())
    results["method"] = {"name": name, "hyperparameters": hyperparameters, "defaults": defaults,
                         "label": method_label(name, hyperparameters, defaults)}
    results["config"].update(hyperparameters)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


KL = {"b": 4.0, "alpha": 1.0, "beta": 5.0, "tau": 5.0}


def test_rows_read_the_method_record(tmp_path, fake_run):
    """b is shown where it is not the default the record gives for the run's data set, and the
    row's settings are the hyperparameters the record says differ from their defaults, whatever
    the registry says today."""
    imagenet = dict(KL, b=1.5)
    with_record(fake_run(tmp_path / "a", dataset="imagenet", nfr=1.0), "MPT_KL", dict(KL, b=1.5), imagenet)
    with_record(fake_run(tmp_path / "b", dataset="imagenet", nfr=2.0), "MPT_KL", dict(KL, b=4.0), imagenet)
    with_record(fake_run(tmp_path / "c", dataset="imagenet", nfr=3.0), "MPT_KL", dict(KL, b=1.5, tau=2.0),
                imagenet)
    # a default that has changed since the run: the record's own is what the run was off
    with_record(fake_run(tmp_path / "d", dataset="cifar100", nfr=4.0), "MPT_KL", dict(KL, beta=5.0),
                dict(KL, beta=3.0))
    # a method this version does not know: its record still names its settings
    with_record(fake_run(tmp_path / "e", dataset="cifar100", method="Gone", nfr=5.0), "Gone", {"w": 2.0}, {"w": 1.0})
    labels = {k.dataset: [r.label for r in rows] for k, rows in group(find_runs([tmp_path])).items()}
    assert labels == {"cifar100": ["MPT_KL (beta=5)", "Gone (w=2)"],
                      "imagenet": ["MPT_KL", "MPT_KL (b=4)", "MPT_KL (tau=2)"]}


def test_code_that_made_the_runs_is_shown(tmp_path, fake_run, capsys):
    a, b = "a" * 40, "b" * 40
    fake_run(tmp_path / "nt1", method="No_Treatment", seed=1, nfr=1.0, code={"commit": a, "dirty": False})
    fake_run(tmp_path / "nt2", method="No_Treatment", seed=2, nfr=2.0, code={"commit": b, "dirty": False})
    fake_run(tmp_path / "kl", method="MPT_KL", nfr=3.0, code={"commit": a, "dirty": True})
    fake_run(tmp_path / "pct", method="PCT_KL", nfr=4.0, code=None)      # not a git checkout
    fake_run(tmp_path / "lm", method="MPT_LM", nfr=5.0)                  # an older record
    tables.main([str(tmp_path), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "| Method | Runs | ER(Y_old) | ER(Y_all) | NFR | Rel-NFR | Code |" in md
    assert "| No_Treatment | 2 | – | – | 1.50 ± 0.71 | – | a, b |" in md
    assert "| PCT_KL | 1 | – | – | 4.00 | – | ? |" in md
    assert "| MPT_KL | 1 | – | – | 3.00 | – | a* |" in md
    assert "| MPT_LM | 1 | – | – | 5.00 | – | ? |" in md
    assert (f"Code: a = commit {a[:12]}; b = commit {b[:12]}; * = from a working tree with changes to that "
            "commit's tracked files (dirty); ? = code not recorded") in md
    lines = {r["row"]: r for r in csv.DictReader(io.StringIO((tmp_path / "out" / "tables.csv").read_text()))}
    assert (lines["No_Treatment"]["commits"], lines["No_Treatment"]["dirty_runs"]) == (f"{a};{b}", "0")
    assert (lines["MPT_KL"]["commits"], lines["MPT_KL"]["dirty_runs"], lines["MPT_KL"]["unknown_code_runs"]) == (
        a, "1", "0")
    assert (lines["PCT_KL"]["commits"], lines["PCT_KL"]["unknown_code_runs"]) == ("", "1")
    # one commit, clean: no column, the commit named under the table (plain text too)
    for folder in ("nt2", "kl", "pct", "lm"):
        results = json.loads((tmp_path / folder / "results.json").read_text())
        results["code"] = {"commit": a, "dirty": False}
        (tmp_path / folder / "results.json").write_text(json.dumps(results))
    tables.main([str(tmp_path), "--print"])
    out = capsys.readouterr().out
    assert "Code" not in out.splitlines()[1] and f"Code: every run made by commit {a[:12]}." in out


def test_updates_from_old_models_of_different_image_subsets_never_share_a_table(tmp_path, fake_run):
    """Two data-growth old models on 50 % of the images, chosen with different split seeds: the
    updates from each get a table of their own, each with its own old model."""
    root, same = tmp_path / "runs", {"old_fraction": 1.0}
    for name, digest, nfr in (("a", "aaaa1111bbbb2222", 4.0), ("b", "cccc3333dddd4444", 6.0)):
        ckpt = tmp_path / f"old_{name}.pth"
        old_data = {"old_data_fraction": 0.5, "split_seed": 1 if name == "a" else 2, "subset_sha256": digest}
        run = fake_run(root / f"old_{name}", role="old", checkpoint=ckpt, config=same, er_old=40.0,
                       setting={"old_fraction": 1.0, "old_data_fraction": 0.5})
        record = json.loads((run / "results.json").read_text())
        (run / "results.json").write_text(json.dumps({**record, "old_data": old_data}))
        update = fake_run(root / f"pct_{name}", method="PCT_KL", old_ckpt=ckpt, nfr=nfr, config=same,
                          setting={"old_fraction": 1.0, "old_data_fraction": 0.5})
        record = json.loads((update / "results.json").read_text())
        (update / "results.json").write_text(json.dumps({**record, "references": {"old": {"old_data": old_data}}}))
    tables = group(find_runs([root]))
    assert sorted(k.old_subset for k in tables) == ["aaaa1111bbbb2222", "cccc3333dddd4444"]
    for key, rows in tables.items():
        assert "subset " + key.old_subset[:8] in key.title()
        assert [len(row.runs) for row in rows] == [1, 1]   # its old model, its one update
