"""install_requirements.sh with a stub interpreter in place of the virtual environment's: the pip
commands it runs, with and without TORCH_INDEX_URL (a PyTorch wheel index for an older CUDA)."""
import subprocess

from conftest import REPO, assert_ok, script_env


def pip_commands(tmp_path, **env) -> list:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    (venv / "bin" / "python").write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    (venv / "bin" / "python").chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "install_requirements.sh")],
                          env={**script_env(), "VENV": str(venv), **env},
                          capture_output=True, text=True, timeout=60)
    assert_ok(proc)
    return log.read_text().splitlines()


def pinned(name: str) -> str:
    return next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith(f"{name}=="))


def test_torch_comes_from_the_index_given_at_the_pinned_versions(tmp_path):
    url = "https://download.pytorch.org/whl/cu126"
    calls = pip_commands(tmp_path, TORCH_INDEX_URL=url)
    from_index = [c.split() for c in calls if "--index-url" in c]
    assert len(from_index) == 1 and from_index[0][from_index[0].index("--index-url") + 1] == url
    assert set(from_index[0]) >= {pinned("torch"), pinned("torchvision")}   # the versions requirements.txt pins
    assert calls.index(" ".join(from_index[0])) < calls.index("-m pip install --quiet -r requirements.txt")


def test_without_an_index_everything_comes_from_the_requirements(tmp_path):
    calls = pip_commands(tmp_path, TORCH_INDEX_URL="")
    assert not any("--index-url" in c for c in calls) and calls[-1] == "-m pip install --quiet -r requirements.txt"
