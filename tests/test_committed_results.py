"""The run records committed under results/ are the README's evidence: they must read the same on
any clone, so no string in them may be a path of the machine that made them; an update's
predictions.npz recounts to the NFR and error rates in its results.json; every study's records
(a folder of results/cpu_cifar10/) say which clean commit of this history made them, one commit
a study."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDS = sorted(RESULTS.rglob("results.json"))


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def update_records():
    return [r for r in RECORDS if json.loads(r.read_text())["role"] == "update"]


@pytest.mark.parametrize("record", update_records(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_an_update_recounts_to_its_metrics_from_its_predictions(record):
    results = json.loads(record.read_text())
    with np.load(record.parent / "predictions.npz") as p:
        targets, old_pred, pred, num_old = p["targets"], p["old_pred"], p["pred"], int(p["num_old"])
    old = targets < num_old
    negative = (old_pred[old] == targets[old]) & (pred[old] != targets[old])
    assert results["nfr"] == pytest.approx(100.0 * negative.mean(), abs=1e-9)
    assert results["er_all"] == pytest.approx(100.0 * (pred != targets).mean(), abs=1e-9)
    assert results["er_old"] == pytest.approx(100.0 * (pred[old] != targets[old]).mean(), abs=1e-9)


def study(record: Path) -> Path:
    """The study folder a record belongs to: results/cpu_cifar10/STUDY."""
    return RESULTS.joinpath(*record.relative_to(RESULTS).parts[:2])


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_study_was_made_by_one_clean_commit_of_this_history(record):
    code = json.loads(record.read_text())["code"]
    assert code is not None and code["dirty"] is False and len(code["commit"]) == 40
    first = json.loads(sorted(study(record).rglob("results.json"))[0].read_text())["code"]["commit"]
    assert code["commit"] == first, f"{study(record).name} was made by more than one commit"
    if (RESULTS.parent / ".git").exists():   # a clone: the commit is one of its history
        ancestor = subprocess.run(["git", "-C", str(RESULTS.parent), "merge-base", "--is-ancestor", code["commit"],
                                   "HEAD"], capture_output=True)
        assert ancestor.returncode == 0, f"{code['commit']} is not in this clone's history"


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_records_hold_no_absolute_path(record):
    absolute = [s for s in strings(json.loads(record.read_text())) if os.path.isabs(s) or s.startswith("~")]
    assert not absolute, f"{record}: {absolute[:3]}"
