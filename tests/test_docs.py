"""The documentation's code runs: docs/architecture.md's "Adding a method" example module and
its test, dropped into a copy of the repository, and main.py with the new method's flag."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, assert_ok, common_args, script_env

pytestmark = pytest.mark.slow  # runs main.py on a copy of the repository

DOC = REPO / "docs" / "architecture.md"


def code_after(title: str) -> str:
    """The first fenced python block after the line naming ``title`` (a file path)."""
    text = DOC.read_text()
    start = text.index(f"`{title}`")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


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
