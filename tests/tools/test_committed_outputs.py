"""The committed tables and flip analysis under results/cpu_cifar10/ are what the tools make of the
committed run records today: each is regenerated, with the command README.md gives for it, into a
temporary folder and must equal the committed file byte for byte.

Not covered: results/cpu_cifar10/tables.md (the first round's table, whose run folders were lost)
and results/cpu_cifar10/table1/ (filled by tools/cpu_reproduction.sh).

The flip analysis is made with --data-root DATA, the CIFAR-10 JPEG folders the runs were trained on
(image paths in flips.csv, flipped_samples.png): the folder named by $CIFAR10_JPG, or the runs' own
data_root (data/cifar10-jpg) under the repository. Without it, flips.csv is compared without its
path column and flipped_samples.png is not. A figure is compared byte for byte only under the
matplotlib version that drew it (the PNG records it; the pixels of another version may differ).
"""
import csv
import io
import os
from pathlib import Path

import pytest

from conftest import REPO
from tools import flips, tables

RESULTS = Path("results/cpu_cifar10")
FLIP_RUNS = [str(RESULTS / "flip_runs/update" / name)
             for name in ("No_Treatment-seed42", "PCT_KL-seed42", "PCT_KL-seed43", "MPT_KL-seed42", "MPT_KL-seed43")]
# (committed folder, the command that wrote it, less its --out): README.md's commands
TABLES = {
    "runs": ["results/cpu_cifar10/runs"],
    "fig3_runs": ["results/cpu_cifar10/fig3_runs"],
    "flip_runs": ["results/cpu_cifar10/flip_runs", "--ci"],
    # tools/data_growth_cpu.sh's own command
    "data_growth": ["results/cpu_cifar10/data_growth/old", "results/cpu_cifar10/data_growth/new",
                    "results/cpu_cifar10/data_growth/update", "--ci"],
}


def cifar10_jpg() -> Path | None:
    for candidate in (os.environ.get("CIFAR10_JPG"), REPO / "data" / "cifar10-jpg"):
        if candidate and (Path(candidate) / "test").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def in_repo(monkeypatch):
    """The commands run from the repository's root, as README.md gives them: flips.json records
    each run's folder as given."""
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("folder", sorted(TABLES))
def test_committed_tables_are_regenerated(folder, tmp_path, in_repo, capsys):
    tables.main([*TABLES[folder], "--out", str(tmp_path)])
    for name in ("tables.md", "tables.csv"):
        assert (tmp_path / name).read_bytes() == (REPO / RESULTS / folder / name).read_bytes(), \
            f"{RESULTS / folder / name} is not what `python -m tools.tables {' '.join(TABLES[folder])}` writes"


def without_column(text: str, column: str) -> str:
    """A CSV (as tools.flips writes it) with one column left out, written back the same way."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    keep = [i for i, name in enumerate(rows[0]) if name != column]
    out = io.StringIO(newline="")
    csv.writer(out).writerows([[row[i] for i in keep] for row in rows])
    return out.getvalue()


def drawn_by_this_matplotlib(png: bytes) -> bool:
    import matplotlib

    return f"Matplotlib version{matplotlib.__version__},".encode() in png


def test_committed_flip_analysis_is_regenerated(tmp_path, in_repo, capsys):
    committed = REPO / RESULTS / "flips"
    data = cifar10_jpg()
    flips.main([*FLIP_RUNS, *(["--data-root", str(data)] if data else []), "--out", str(tmp_path)])
    made = {p.name for p in tmp_path.iterdir()}
    expected = {p.name for p in committed.iterdir()} - (set() if data else {"flipped_samples.png"})
    assert made == expected, "the committed flips/ holds other files than the command writes"
    compared = []
    for name in sorted(made):
        ours, theirs = (tmp_path / name).read_bytes(), (committed / name).read_bytes()
        if name.endswith(".png") and not drawn_by_this_matplotlib(theirs):
            continue
        if name == "flips.csv" and not data:
            ours, theirs = ours.decode(), without_column(theirs.decode(), "path")
        assert ours == theirs, f"{RESULTS / 'flips' / name} is not what tools.flips writes today"
        compared.append(name)
    assert {"flips.json", "flips.md", "flips.csv"} <= set(compared)
