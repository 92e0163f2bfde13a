"""Clear errors: a bad input ends the command with one line on stderr starting "error:" that says
what is wrong and what to do, exit code 2 and no traceback, before anything is written: an
existing run folder and --save file stay byte-identical, and a new run folder is not created.

Most cases call the script's main() in this process (a subprocess costs seconds of imports);
a few run as real subprocesses to show the same from the outside.
"""
import json
import shutil

import pytest
import torch

from conftest import assert_user_error, common_args, file_hashes, run_script


@pytest.fixture
def existing(tmp_path):
    """A finished-looking run folder and a checkpoint at --save, which a failing command must
    leave exactly as they are, and the path of a run folder that must not be created."""
    run_dir = tmp_path / "existing-run"
    run_dir.mkdir()
    for name, content in {"state.pth": b"state", "results.json": b'{"nfr": 1.0}\n',
                          "log.jsonl": b"{}\n"}.items():
        (run_dir / name).write_bytes(content)
    save = tmp_path / "ckpt_existing.pth"
    save.write_bytes(b"a good checkpoint")

    class Existing:
        def __init__(self):
            self.run_dir, self.save, self.fresh_dir = run_dir, save, tmp_path / "fresh-run"
            self.watched = [run_dir, save]

        def hashes(self):
            return file_hashes(*self.watched)
    return Existing()


def check_fails_cleanly(call, existing, script, args, words):
    """Run the failing command twice, into the existing run folder and into a new one, and
    check the error and that nothing was written."""
    before = existing.hashes()
    for out_dir in (existing.run_dir, existing.fresh_dir):
        result = call(script, *args, "--output-dir", out_dir, "--save", existing.save)
        assert_user_error(result, *words)
        assert existing.hashes() == before
        assert not existing.fresh_dir.exists()


@pytest.fixture
def update_args(tiny_data, old_ckpt, new_ckpt):
    """main.py's flags (without --output-dir and --save); later flags override earlier ones."""
    return [*common_args(tiny_data), "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt]


# --- checkpoints -------------------------------------------------------------------------

def truncated(src, dst):
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


@pytest.mark.parametrize("case, words", [
    ("missing old", ["old model checkpoint", "not found", "create it with train_old_model.py"]),
    ("missing new", ["new model checkpoint", "not found", "create it with train_new_model.py"]),
    ("truncated old", ["not a readable checkpoint", "truncated", "train_old_model.py"]),
    ("text file as old", ["not a readable checkpoint", "train_old_model.py"]),
    ("foreign torch file as old", ["not a checkpoint of this repository", "train_old_model.py"]),
    ("new model as old", ["10-class head", "old model needs 5 classes", "right file for this role"]),
    ("old model as new", ["5-class head", "new model needs 10 classes", "right file for this role"]),
])
def test_checkpoint_errors(call_script, existing, update_args, old_ckpt, new_ckpt, tmp_path, case, words):
    flag, path = {
        "missing old": ("--old-ckpt", tmp_path / "nope.pth"),
        "missing new": ("--new-ckpt", tmp_path / "nope.pth"),
        "truncated old": ("--old-ckpt", truncated(old_ckpt, tmp_path / "half.pth")),
        "text file as old": ("--old-ckpt", tmp_path / "notes.pth"),
        "foreign torch file as old": ("--old-ckpt", tmp_path / "foreign.pth"),
        "new model as old": ("--old-ckpt", new_ckpt),
        "old model as new": ("--new-ckpt", old_ckpt),
    }[case]
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    existing.watched += [old_ckpt, new_ckpt]
    check_fails_cleanly(call_script, existing, "main.py", [*update_args, flag, path], words)


@pytest.mark.parametrize("member, words", [
    (None, ["ELODI needs 2 ensemble members", "ckpt_1.pth is missing", "train_new_model.py --seed"]),
    ("old", ["ckpt_1.pth has a 5-class head", "needs 10 classes"]),
])
def test_ensemble_member_missing_or_wrong(call_script, existing, update_args, old_ckpt, new_ckpt,
                                          tmp_path, member, words):
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    shutil.copy(new_ckpt, ensemble / "ckpt_0.pth")
    if member == "old":
        shutil.copy(old_ckpt, ensemble / "ckpt_1.pth")
    existing.watched.append(ensemble)
    args = [*update_args, "--method", "ELODI", "--ensemble-dir", ensemble, "--ensemble-size", "2"]
    check_fails_cleanly(call_script, existing, "main.py", args, words)


# --- data --------------------------------------------------------------------------------

@pytest.fixture
def data_copy(tiny_data, tmp_path):
    """A copy of the tiny data set to break."""
    return shutil.copytree(tiny_data, tmp_path / "data")


@pytest.mark.parametrize("case, words", [
    ("train without test", ["has train/ but no test/", "train/<class>/*", "test/<class>/*"]),
    ("test without train", ["has test/ but no train/"]),
    ("empty class folder", ["no images in", "class03"]),
    ("class folders differ", ["same class folders", "only in", "train: class09", "test: class99"]),
    ("unreadable image", ["cannot decode the image", "000.png"]),
    ("root is a file", ["is a file", "give the folder"]),
    ("another class count", ["holds 10 classes but cifar100 has 100", "--dataset"]),
])
def test_data_root_errors(call_script, existing, data_copy, case, words):
    root, dataset = data_copy, "cifar10"
    if case == "train without test":
        shutil.rmtree(root / "test")
    elif case == "test without train":
        shutil.rmtree(root / "train")
    elif case == "empty class folder":
        for f in (root / "train" / "class03").iterdir():
            f.unlink()
    elif case == "class folders differ":
        (root / "test" / "class09").rename(root / "test" / "class99")
    elif case == "unreadable image":
        (root / "train" / "class00" / "000.png").write_bytes(b"\x89PNG broken")
    elif case == "root is a file":
        root = root / "train" / "class00" / "001.png"
    elif case == "another class count":
        dataset = "cifar100"
    existing.watched.append(data_copy)
    args = common_args(root, dataset=dataset)
    check_fails_cleanly(call_script, existing, "train_old_model.py", args, words)


def test_data_set_that_cannot_be_downloaded(tmp_path, existing):
    """No data at --data-root and no network (the tests send every request to a closed port):
    the message names --data-root and both layouts, and no empty folder is left behind."""
    root = tmp_path / "no-data-here"
    before = existing.hashes()
    result = run_script("train_new_model.py", *common_args(root), "--output-dir", existing.fresh_dir,
                        "--save", existing.save)
    assert_user_error(result, "cannot find or download cifar10", f"--data-root {root}",
                      "torchvision's cifar10 files", "train/<class>/*.png", "test/<class>/*.png")
    assert existing.hashes() == before
    assert not existing.fresh_dir.exists() and not root.exists()


# --- pretrained weights ------------------------------------------------------------------

def test_pretrained_weights_that_cannot_be_loaded(existing, tiny_data, tmp_path):
    """--pretrained without network and without a cached copy (an empty TORCH_HOME): one error
    line, exit code 2, and nothing written; the run never goes on with random weights."""
    before = existing.hashes()
    save = tmp_path / "ckpt_pretrained.pth"
    result = run_script("train_old_model.py", *common_args(tiny_data), "--pretrained",
                        "--output-dir", existing.fresh_dir, "--save", save,
                        env={"TORCH_HOME": str(tmp_path / "empty-torch-home")})
    line = assert_user_error(result, "cannot load the pretrained resnet18 weights", "--allow-random-weights")
    assert result.stderr.strip() == line  # the only line
    assert "RANDOM" not in result.stderr
    assert existing.hashes() == before
    assert not existing.fresh_dir.exists() and not save.exists()


def test_pretrained_weights_missing_but_random_weights_allowed(tiny_data, tmp_path):
    """--allow-random-weights: a warning, a run from a random backbone, and weights: null in
    results.json and the checkpoint."""
    from conftest import assert_ok
    from utils.checkpoint import read_checkpoint

    out, save = tmp_path / "run", tmp_path / "ckpt.pth"
    result = run_script("train_old_model.py", *common_args(tiny_data), "--pretrained", "--allow-random-weights",
                        "--output-dir", out, "--save", save, env={"TORCH_HOME": str(tmp_path / "empty-torch-home")})
    assert_ok(result)
    assert "warning: cannot load the pretrained resnet18 weights" in result.stderr and "RANDOM" in result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["weights"] is None and results["config"]["pretrained"] is True
    assert read_checkpoint(save)["weights"] is None


# --- names and hyperparameters -----------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--method", "MPT_XL"], ["unknown method 'MPT_XL'", "choose one of", "MPT_KL"]),
    (["--arch", "resnet7"], ["unknown architecture 'resnet7'", "resnet18"]),
    (["--dataset", "mnist"], ["unknown data set 'mnist'", "cifar10"]),
    (["--b", "nan"], ["--b must be finite", "nan"]),
    (["--b", "inf"], ["--b must be finite", "inf"]),
    (["--b=-inf"], ["--b must be finite"]),
    (["--lr", "0"], ["--lr must be a positive finite number", "0.0"]),
    (["--lr", "-0.1"], ["--lr must be a positive finite number"]),
    (["--lr", "nan"], ["--lr must be a positive finite number", "nan"]),
    (["--lr", "inf"], ["--lr must be a positive finite number"]),
    (["--epochs", "0"], ["--epochs must be positive", "0"]),
    (["--epochs", "-3"], ["--epochs must be positive"]),
    (["--batch-size", "0"], ["--batch-size must be positive"]),
    (["--old-fraction", "0"], ["--old-fraction must lie in (0, 1]"]),
    (["--old-fraction", "1"], ["MPT_KL acts on the new classes only", "--method MPT_KL_nobias"]),
    (["--old-fraction", "1.5"], ["--old-fraction must lie in (0, 1]"]),
    (["--old-fraction", "nan"], ["--old-fraction must lie in (0, 1]"]),
    (["--old-fraction", "0.01"], ["--old-fraction 0.01 leaves 0 of 10 classes"]),
])
def test_bad_names_and_hyperparameters(call_script, existing, update_args, flags, words):
    check_fails_cleanly(call_script, existing, "main.py", [*update_args, *flags], words)


def test_argparse_type_errors_exit_2(call_script, existing, update_args):
    before = existing.hashes()
    result = call_script("main.py", *update_args, "--epochs", "abc", "--output-dir", existing.fresh_dir)
    assert result.returncode == 2
    assert "argument --epochs: invalid int value: 'abc'" in result.stderr
    assert existing.hashes() == before and not existing.fresh_dir.exists()


# --- output paths ------------------------------------------------------------------------

@pytest.mark.parametrize("case, words", [
    ("output dir is a file", ["--output-dir", "is a file", "give a folder"]),
    ("output dir below a file", ["--output-dir", "cannot be created", "is a file"]),
    ("save is a folder", ["--save", "is a folder", "give a file path"]),
    ("save below a file", ["--save", "cannot be created", "is a file"]),
])
def test_unwritable_output_paths(call_script, existing, tiny_data, case, words):
    out_dir, save = existing.fresh_dir, existing.save
    if case == "output dir is a file":
        out_dir = existing.save
    elif case == "output dir below a file":
        out_dir = existing.save / "run"
    elif case == "save is a folder":
        save = existing.run_dir
    elif case == "save below a file":
        save = existing.save / "ckpt.pth"
    before = existing.hashes()
    result = call_script("train_old_model.py", *common_args(tiny_data), "--output-dir", out_dir,
                         "--save", save)
    assert_user_error(result, *words)
    assert existing.hashes() == before and not existing.fresh_dir.exists()


def test_resume_without_a_saved_run(call_script, existing, tiny_data):
    before = existing.hashes()
    result = call_script("train_old_model.py", *common_args(tiny_data), "--resume",
                         "--output-dir", existing.fresh_dir, "--save", existing.save)
    assert_user_error(result, "--resume: no saved state in", "without --resume")
    assert existing.hashes() == before and not existing.fresh_dir.exists()


# --- --config ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("epochs: [1\n", ["is not valid YAML", "line 2, column 1", "fix the file"]),  # not YAML
    ("- epochs\n- 1\n", ["must be a YAML mapping"]),            # YAML, but a list
    ("epochz: 1\n", ["unknown flags", "epochz"]),               # a typo
    ("epochs: 1.5\n", ["epochs", "1.5"]),                       # a value of the wrong type
    ("update:\n  methd: MPT_KL\n", ["unknown flags", "methd"]),  # a typo in main.py's section
])
def test_malformed_config(call_script, existing, update_args, tmp_path, text, words):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    existing.watched.append(config)
    check_fails_cleanly(call_script, existing, "main.py", [*update_args, "--config", config],
                        [f"--config {config}", *words])


def test_missing_config_file(call_script, existing, update_args, tmp_path):
    check_fails_cleanly(call_script, existing, "main.py",
                        [*update_args, "--config", tmp_path / "nope.yaml"],
                        ["cannot read --config", "No such file", "give an existing YAML file"])


# --- the same from the outside -------------------------------------------------------------

@pytest.mark.parametrize("script, flags, words", [
    ("main.py", ["--old-ckpt", "NEW"], ["10-class head", "old model needs 5 classes"]),
    ("train_old_model.py", ["--data-root", "TRAIN_ONLY"], ["has train/ but no test/"]),
])
def test_errors_of_real_processes(existing, update_args, new_ckpt, tmp_path, tiny_data, script, flags, words):
    train_only = tmp_path / "train-only"
    shutil.copytree(tiny_data / "train", train_only / "train")
    flags = [{"NEW": new_ckpt, "TRAIN_ONLY": train_only}.get(f, f) for f in flags]
    base = update_args if script == "main.py" else common_args(tiny_data)
    before = existing.hashes()
    result = run_script(script, *base, *flags, "--output-dir", existing.run_dir, "--save", existing.save)
    assert_user_error(result, *words)
    assert existing.hashes() == before
