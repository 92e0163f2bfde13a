"""The committed tables and flip analysis under results/cpu_cifar10/ are what the tools make of the
committed run records today: each is regenerated, with the command the documentation gives for it,
into a temporary folder and must equal the committed file byte for byte.

The flip analysis of the Table 1 study is made with --data-root DATA, the CIFAR-10 JPEG folders the
runs were trained on (flipped_samples.png): the folder named by $CIFAR10_JPG, or the runs' own
data_root (data/cifar10-jpg) under the repository; without it, flipped_samples.png is not
compared. Its flips.csv (one row per old-class test sample and run) is not committed (.gitignore).
A figure is compared byte for byte only under the matplotlib version that drew it (the PNG records
it; the pixels of another version may differ).
"""
import os
from pathlib import Path

import pytest

from conftest import REPO
from tools import flips, tables

RESULTS = Path("results/cpu_cifar10")
TABLE1 = RESULTS / "table1"
# (committed folder, the command that wrote it, less its --out)
TABLES = {
    # tools/cpu_reproduction.sh's, tools/data_growth_cpu.sh's and tools/figure3_cpu.sh's own commands
    "table1": [str(TABLE1 / "old"), str(TABLE1 / "new"), str(TABLE1 / "update"), "--ci"],
    "data_growth": ["results/cpu_cifar10/data_growth/old", "results/cpu_cifar10/data_growth/new",
                    "results/cpu_cifar10/data_growth/update", "--ci"],
    "fig3_runs": ["results/cpu_cifar10/fig3_runs"],
}
NOT_COMMITTED = {"flips.csv"}


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


def drawn_by_this_matplotlib(png: bytes) -> bool:
    import matplotlib

    return f"Matplotlib version{matplotlib.__version__},".encode() in png


def test_committed_flip_analysis_is_regenerated(tmp_path, in_repo, capsys):
    committed = REPO / TABLE1 / "flips"
    data = cifar10_jpg()
    runs = sorted(str(p.parent) for p in (TABLE1 / "update").glob("*/results.json"))
    flips.main([*runs, "--baseline", str(TABLE1 / "update" / "No_Treatment-seed42"),
                *(["--data-root", str(data)] if data else []), "--out", str(tmp_path)])
    made = {p.name for p in tmp_path.iterdir()} - NOT_COMMITTED
    expected = {p.name for p in committed.iterdir()} - NOT_COMMITTED - (set() if data else {"flipped_samples.png"})
    assert made == expected, "the committed flips/ holds other files than the command writes"
    compared = []
    for name in sorted(made):
        ours, theirs = (tmp_path / name).read_bytes(), (committed / name).read_bytes()
        if name.endswith(".png") and not drawn_by_this_matplotlib(theirs):
            continue
        assert ours == theirs, f"{TABLE1 / 'flips' / name} is not what tools.flips writes today"
        compared.append(name)
    assert {"flips.json", "flips.md"} <= set(compared)
