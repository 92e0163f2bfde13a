"""Provenance: the commit and the state of the tree that made a run, and its command, in
results.json and the checkpoint; null (said once) outside a git checkout."""
import json
import subprocess

import pytest

import utils.provenance
from conftest import REPO, common_args, run_inline
from utils.checkpoint import read_checkpoint


def git(folder, *args) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo_at(tmp_path, monkeypatch):
    """Point utils.provenance at ``folder`` (the code's own checkout in a run)."""
    def point(folder):
        monkeypatch.setattr(utils.provenance, "REPO", folder.resolve())
        utils.provenance.code_version.cache_clear()
    yield point
    utils.provenance.code_version.cache_clear()


def test_a_clean_checkout_records_its_head_and_an_edit_makes_it_dirty(tmp_path, repo_at):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    repo_at(tmp_path)
    (tmp_path / "untracked.txt").write_text("a run's output\n")  # not code: the tree stays clean
    assert utils.provenance.code_version() == {"commit": git(tmp_path, "rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "code.py").write_text("x = 2\n")
    utils.provenance.code_version.cache_clear()
    assert utils.provenance.code_version() == {"commit": git(tmp_path, "rev-parse", "HEAD"), "dirty": True}


def test_outside_a_git_checkout_the_code_is_null_and_said_once(tmp_path, repo_at, capsys):
    (tmp_path / "inner").mkdir()
    git(tmp_path, "init", "-q")   # a copy inside another repository is not a checkout of its own
    for folder in (tmp_path / "inner", tmp_path.parent / "nowhere"):
        folder.mkdir(exist_ok=True)
        repo_at(folder)
        assert utils.provenance.code_version() is None
        assert utils.provenance.code_version() is None
        assert capsys.readouterr().err.count("warning:") == 1


def test_results_and_checkpoint_record_the_code_and_the_command(tiny_data, tmp_path):
    argv = [*common_args(tiny_data), "--output-dir", tmp_path / "run", "--save", tmp_path / "old.pth"]
    run_inline("train_old_model.py", *argv)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = ({"commit": git(REPO, "rev-parse", "HEAD"), "dirty": bool(git(REPO, "status", "--porcelain",
                                                                           "--untracked-files=no"))}
                if (REPO / ".git").exists() else None)
    assert record["code"] == expected
    assert record["command"] == ["train_old_model.py", *map(str, argv)]
    assert "command" not in record["config"]   # not a setting: the same run may be typed two ways
    ckpt = read_checkpoint(tmp_path / "old.pth")
    assert (ckpt["code"], ckpt["command"]) == (record["code"], record["command"])
