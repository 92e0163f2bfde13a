"""The documentation's code runs: docs/architecture.md's "Adding a method" example module and
its test, dropped into a copy of the repository, and main.py with the new method's flag; its
example of the losses in a user's own training loop."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, assert_ok, common_args, script_env

DOC = REPO / "docs" / "architecture.md"


def code_after(title: str) -> str:
    """The first fenced python block after the line naming ``title`` (a file path)."""
    text = DOC.read_text()
    start = text.index(f"`{title}`")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow  # runs main.py on a copy of the repository
def test_adding_a_method_example(tmp_path, tiny_data, old_ckpt):
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(REPO / "main.py", code)
    for package in ("methods", "utils", "models", "tests"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "methods" / "old_margin_hinge.py").write_text(code_after("methods/old_margin_hinge.py"))
    test_file = code / "tests" / "methods" / "test_old_margin_hinge.py"
    test_file.write_text(code_after("tests/methods/test_old_margin_hinge.py"))
    assert_ok(subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                             cwd=code, env=script_env(), capture_output=True, text=True, timeout=300))
    out = tmp_path / "run"
    assert_ok(subprocess.run([sys.executable, "main.py", *common_args(tiny_data), "--method", "Old_Margin_Hinge",
                              "--hinge-weight", "0.2", "--margin", "2", "--old-ckpt", str(old_ckpt),
                              "--output-dir", str(out)],
                             cwd=code, env=script_env(), capture_output=True, text=True, timeout=300))
    config = json.loads((out / "results.json").read_text())["config"]
    assert (config["hinge_weight"], config["margin"]) == (0.2, 2.0)
    terms = json.loads((out / "log.jsonl").read_text())["terms"]
    assert set(terms) == {"ce", "hinge"}


def test_own_training_loop_example(capsys):
    """The example trains its three small models with its own loop and MPT_KL's loss; the NFR it
    prints is the share of old-class test samples the old model gets right and the update wrong."""
    example = {}
    exec(compile(code_after("own_loop.py"), "own_loop.py", "exec"), example)
    assert example["mpt"].name == "MPT_KL" and example["mpt"].b == 4.0
    x, y = example["x_test"], example["y_test"]
    with torch.no_grad():
        old_right = example["old_model"](x).argmax(1) == y
        new_wrong = example["updated"](x).argmax(1) != y
    on_old = y < 5
    metrics = example["metrics"]
    assert metrics["nfr"] == pytest.approx(100 * (old_right & new_wrong & on_old).sum().item() / on_old.sum().item())
    assert metrics["er_all"] < 30  # the loop trained the model (10 classes: 90 % by chance)
    assert "'nfr'" in capsys.readouterr().out


def test_the_readme_is_a_front_page_whose_links_resolve():
    """At most 300 lines; every relative link of the README and of docs/ names a file that exists
    (anchors aside)."""
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 300
    broken = []
    for page in (readme, *sorted((REPO / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
