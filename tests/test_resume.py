"""Reliability: a killed run continues with --resume to exactly the results of an uninterrupted
one; checkpoint writes are atomic; --resume refuses other settings; a non-finite loss stops the
run and names the last good checkpoint; distinct settings get distinct run folders."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import main
import utils.checkpoint
import utils.runner
from conftest import (
    REPO,
    assert_ok,
    common_args,
    file_hashes,
    kill_after_first_epoch,
    run_script,
    script_command,
    script_env,
)
from methods import get_method, method_names
from methods.baseline import NoTreatment
from utils.checkpoint import atomic_save, read_checkpoint
from utils.cli import default_output_dir, parse, take_method_flags
from utils.engine import NonFiniteLoss
from utils.settings import flag

EPOCHS = 3


def results(run_dir):
    """results.json without what names the run's own files (--output-dir, --save, --resume)."""
    out = json.loads((run_dir / "results.json").read_text())
    for name in ("checkpoint", "config", "command"):
        out.pop(name)
    return out


def epoch_records(run_dir):
    """log.jsonl without the wall-clock times."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def run_killed_in_epoch_2(script, args, run_dir):
    kill_after_first_epoch(script_command(script, *args, "--output-dir", run_dir), run_dir, script_env(),
                           settle=0.1)  # into epoch 2's training steps
    state = torch.load(run_dir / "state.pth", map_location="cpu", weights_only=False)
    assert state["epoch"] < EPOCHS - 1


def assert_same_checkpoint(a, b):
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def update_args(tiny_data, old_ckpt, new_ckpt):
    return [*common_args(tiny_data, epochs=EPOCHS), "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt,
            "--method", "MPT_KL"]


@pytest.fixture(scope="module")
def uninterrupted_update(update_args, tmp_path_factory):
    """main.py run for EPOCHS epochs in one go: the reference for the resumed run."""
    run_dir = tmp_path_factory.mktemp("update") / "run"
    assert_ok(run_script("main.py", *update_args, "--output-dir", run_dir))
    return run_dir


def test_resumed_update_equals_uninterrupted_run(update_args, uninterrupted_update, tmp_path):
    run_dir = tmp_path / "run"
    run_killed_in_epoch_2("main.py", update_args, run_dir)
    resumed = run_script("main.py", *update_args, "--output-dir", run_dir, "--resume")
    assert_ok(resumed)
    assert "epoch 1/3" not in resumed.stdout  # it continued, it did not start over

    reference = uninterrupted_update
    assert results(run_dir) == results(reference)
    assert epoch_records(run_dir) == epoch_records(reference)
    with np.load(run_dir / "predictions.npz") as got, np.load(reference / "predictions.npz") as want:
        assert set(got.files) == set(want.files) == {"targets", "old_pred", "pred", "num_old", "margin",
                                                     "old_margin", "logits", "old_logits"}
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name])
    assert_same_checkpoint(run_dir / "checkpoint.pth", reference / "checkpoint.pth")


def test_resume_auto_starts_afresh_continues_a_killed_run_and_leaves_a_finished_one(update_args,
                                                                                     uninterrupted_update, tmp_path):
    """A requeued job repeats its command unchanged: the first start finds no state, the second
    continues where a kill -9 left it (its half-written save removed), the third finds it done."""
    run_dir = tmp_path / "run"
    command = [*update_args, "--output-dir", run_dir, "--resume", "auto"]
    kill_after_first_epoch(script_command("main.py", *command), run_dir, script_env(), settle=0.1)
    stale = run_dir / ".state.pth.4242-0badf00d.tmp"   # what a save killed mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    resumed = run_script("main.py", *command)
    assert_ok(resumed)
    assert "epoch 1/3" not in resumed.stdout and "epoch 3/3" in resumed.stdout
    assert not stale.exists()
    assert results(run_dir) == results(uninterrupted_update)
    assert epoch_records(run_dir) == epoch_records(uninterrupted_update)
    before = file_hashes(run_dir)
    again = run_script("main.py", *command)
    assert_ok(again)
    assert "finished" in again.stdout and "epoch" not in again.stdout
    assert file_hashes(run_dir) == before


# main.py, killed (SIGKILL) right after the first state it saves inside epoch 2.
KILLED_INSIDE_EPOCH_2 = """
import os, runpy, signal, sys
import utils.runner
save = utils.runner.save_state
def save_then_die(*args, in_epoch=None, **kwargs):
    save(*args, in_epoch=in_epoch, **kwargs)
    if in_epoch is not None and in_epoch["epoch"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
utils.runner.save_state = save_then_die
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
"""


def test_a_run_killed_inside_an_epoch_resumes_at_its_saved_step(update_args, uninterrupted_update, tmp_path):
    """--save-every-steps 2 (5 steps an epoch): killed after step 2 of epoch 2, the run continues
    at step 3 of epoch 2 and ends with the uninterrupted run's per-epoch losses and metrics."""
    run_dir = tmp_path / "run"
    command = [*update_args, "--output-dir", run_dir, "--save-every-steps", 2, "--resume", "auto"]
    killed = subprocess.run([sys.executable, "-c", KILLED_INSIDE_EPOCH_2, *map(str, command)], cwd=REPO,
                            env=script_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = torch.load(run_dir / "state.pth", map_location="cpu", weights_only=False)
    assert (state["epoch"], state["in_epoch"]["epoch"], state["in_epoch"]["step"]) == (0, 1, 1)
    resumed = run_script("main.py", *command)
    assert_ok(resumed)
    assert "epoch 1/3" not in resumed.stdout and "epoch 2/3" in resumed.stdout
    assert results(run_dir) == results(uninterrupted_update)
    assert epoch_records(run_dir) == epoch_records(uninterrupted_update)
    assert_same_checkpoint(run_dir / "checkpoint.pth", uninterrupted_update / "checkpoint.pth")


@pytest.mark.slow
def test_resumed_old_model_equals_uninterrupted_run(tiny_data, tmp_path):
    args = common_args(tiny_data, epochs=EPOCHS)
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert_ok(run_script("train_old_model.py", *args, "--output-dir", reference,
                         "--save", reference / "ckpt_old.pth"))
    run_killed_in_epoch_2("train_old_model.py", [*args, "--save", run_dir / "ckpt_old.pth"], run_dir)
    assert not (run_dir / "ckpt_old.pth").exists()  # --save is written only by a finished run
    assert_ok(run_script("train_old_model.py", *args, "--output-dir", run_dir,
                         "--save", run_dir / "ckpt_old.pth", "--resume"))

    assert results(run_dir) == results(reference)
    assert epoch_records(run_dir) == epoch_records(reference)
    assert_same_checkpoint(run_dir / "ckpt_old.pth", reference / "ckpt_old.pth")


@pytest.mark.parametrize("changed", [["--lr", "0.05"], ["--b", "2"], ["--epochs", "4"], ["--seed", "1"]])
def test_resume_with_other_settings_fails_clearly(call_script, update_args, uninterrupted_update, changed):
    run_dir = uninterrupted_update
    before = file_hashes(run_dir)
    result = call_script("main.py", *update_args, *changed, "--output-dir", run_dir, "--resume")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: --resume:") and "\n" not in line
    assert "other settings" in line and changed[0] in line and "use another --output-dir" in line
    assert file_hashes(run_dir) == before


def test_resume_ignores_flags_that_do_not_change_results(call_script, update_args, uninterrupted_update,
                                                          tmp_path):
    """A finished run resumed with another --eval-batch-size and --save: nothing to train, the
    final files are written again, with the same results."""
    run_dir = shutil.copytree(uninterrupted_update, tmp_path / "run")
    result = call_script("main.py", *update_args, "--eval-batch-size", "7", "--output-dir", run_dir,
                         "--save", tmp_path / "again.pth", "--resume")
    assert result.returncode == 0, result.stderr
    assert results(run_dir) == results(uninterrupted_update)
    assert_same_checkpoint(tmp_path / "again.pth", uninterrupted_update / "checkpoint.pth")


# --- atomic writes -----------------------------------------------------------------------

@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt.pth"
    atomic_save({"format": utils.checkpoint.FORMAT, "weights": torch.arange(1000)}, path)
    before = file_hashes(tmp_path)
    real_save = torch.save

    def half_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise failure

    monkeypatch.setattr(utils.checkpoint.torch, "save", half_then_fail)
    with pytest.raises(type(failure)):
        atomic_save({"format": utils.checkpoint.FORMAT, "weights": torch.zeros(1000)}, path)
    assert file_hashes(tmp_path) == before  # the same bytes, and no temporary file left
    assert torch.equal(read_checkpoint(path)["weights"], torch.arange(1000))


SLOW_SAVE = """
import sys, time
from pathlib import Path
import torch
from utils.checkpoint import atomic_save

class Slow:  # pickled in the middle of the save: signals, then hangs there
    def __reduce__(self):
        Path(sys.argv[2]).touch()
        time.sleep(60)
        return (int, ())

atomic_save({"weights": torch.zeros(1000), "slow": Slow()}, sys.argv[1])
"""


@pytest.mark.slow
def test_save_killed_midway_keeps_the_previous_checkpoint(tmp_path):
    path, started = tmp_path / "ckpt.pth", tmp_path / "started"
    atomic_save({"format": utils.checkpoint.FORMAT, "weights": torch.arange(1000)}, path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path), str(started)], cwd=REPO,
                            env=script_env())
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert path.read_bytes() == before
    assert torch.equal(read_checkpoint(path)["weights"], torch.arange(1000))


# --- non-finite loss -----------------------------------------------------------------------

@pytest.mark.slow
def test_exploding_loss_stops_before_the_first_checkpoint(tiny_data, tmp_path):
    save = tmp_path / "ckpt_old.pth"
    save.write_bytes(b"the previous good model")
    before = file_hashes(save)
    result = run_script("train_old_model.py", *common_args(tiny_data, epochs=2), "--lr", "1e30",
                        "--log-every", "1", "--output-dir", tmp_path / "run", "--save", save)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the training loss became non-finite in epoch 1/2, step ")
    assert "(terms on that batch: ce " in line  # the reference models train with plain cross-entropy, one term
    assert "no good checkpoint yet" in line and "Lower --lr" in line
    assert file_hashes(save) == before
    assert not (tmp_path / "run" / "state.pth").exists()


def non_finite(method, num_classes=10, terms=None, teacher_max=None, history=(), tmp_path=Path("run")):
    """The message of a non-finite loss at step 6 of 10 in epoch 1 of 5 for ``method``."""
    return utils.runner.non_finite_message(
        NonFiniteLoss(0, 5, terms, teacher_max), tmp_path, list(history), SimpleNamespace(epochs=5), 10,
        get_method(method), torch.arange(num_classes))


@pytest.mark.parametrize("method", method_names())
def test_non_finite_message_names_the_flags_that_weigh_the_method_terms(method):
    """Logit-matching methods diverge at lr 0.1 with few classes; the message says what to lower,
    every flag it names is one that main.py takes, and the --lm-weight advice for 10 classes
    appears for the logit-matching methods alone."""
    flags = tuple(flag(w) for w in get_method(method).term_weights)
    message = non_finite(method)
    assert message.startswith("the training loss became non-finite in epoch 1/5, step 6/10; ")
    options = {opt for action in main.build_parser()._actions for opt in action.option_strings}
    assert set(flags) <= options
    for named in ("--lr", *flags):
        assert named in message
    logit_matching = "LM" in method and "ELODI" not in method
    assert ("--lm-weight 0.04" in message) == logit_matching
    assert "--lm-weight 0.04" not in non_finite(method, num_classes=100)  # CIFAR-100: the official 0.4


def test_non_finite_message_gives_the_terms_and_blames_huge_teacher_logits():
    message = non_finite("MPT_KL", terms={"ce_b": 2.5, "distill_old": float("inf"), "distill_new": 0.75},
                         teacher_max={"old": 3.0e6, "new": 4.0})
    assert "(terms on that batch: ce_b 2.5, distill_old inf, distill_new 0.75)" in message
    assert "the old reference model's" in message and "|z| = 3e+06" in message
    assert "the new reference model's" not in message  # its logits were of ordinary size
    assert "Lower --lr" not in message
    calm = non_finite("MPT_KL", teacher_max={"old": 30.0, "new": 4.0})
    assert "reference model" not in calm and "Lower --lr" in calm


@pytest.mark.parametrize("method, lm_advice", [("MPT_LM", True), ("PCT_KL", False)])
def test_diverging_update_names_its_step_and_terms(call_script, tiny_data, gentle_refs, tmp_path, method, lm_advice):
    """An update pushed to diverge (--lr 1e30) with gently trained references: the message gives
    the step and each term's value, blames no reference model, and advises --lm-weight 0.04 only
    for a logit-matching method on 10 classes."""
    old_ckpt, new_ckpt, _ = gentle_refs
    result = call_script("main.py", *common_args(tiny_data), "--method", method, "--lr", "1e30",
                         "--log-every", "1", "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt,
                         "--output-dir", tmp_path / "run")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("error: the training loss became non-finite in epoch 1/1, step ")
    terms = {"MPT_LM": ("ce_b", "distill_old", "distill_new"), "PCT_KL": ("ce", "distill_old")}[method]
    assert f"(terms on that batch: {terms[0]} " in line and all(f" {t} " in line for t in terms)
    assert "reference model" not in line and "Lower --lr" in line
    assert ("--lm-weight 0.04" in line) == lm_advice
    assert not (tmp_path / "run" / "results.json").exists()


def scaled_head(ckpt, path, scale):
    """A copy of checkpoint ``ckpt`` whose classifier weights and bias are multiplied by ``scale``."""
    saved = read_checkpoint(ckpt)
    weights = dict(saved["model"])
    heads = [k for k in weights if k.split(".")[-2:-1] == ["fc"]]
    assert heads, list(weights)
    for k in heads:
        weights[k] = weights[k] * scale
    atomic_save({**saved, "model": weights}, path)
    return path


def test_huge_reference_logits_are_named(call_script, tiny_data, gentle_refs, tmp_path):
    """An old model whose logits are a million times too large: the logit-matching loss
    diverges, and the message names that model's |logit| instead of advising a lower --lr."""
    old_ckpt, new_ckpt, _ = gentle_refs
    huge = scaled_head(old_ckpt, tmp_path / "huge_old.pth", 1e6)
    result = call_script("main.py", *common_args(tiny_data), "--method", "MPT_LM", "--log-every", "1",
                         "--old-ckpt", huge, "--new-ckpt", new_ckpt, "--output-dir", tmp_path / "run")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("error: the training loss became non-finite")
    assert "the old reference model's" in line and "|z| = " in line
    assert "the new reference model's" not in line
    assert "Lower --lr" not in line and "--lm-weight 0.04" not in line


@pytest.mark.slow
def test_nan_loss_names_the_last_good_checkpoint(call_script, tiny_data, tmp_path, monkeypatch):
    """The loss turns NaN at the second step of epoch 2 (of 3): the run stops there, the state
    saved after epoch 1 stays as it was, and so does the checkpoint at --save."""
    run_dir, save = tmp_path / "run", tmp_path / "ckpt_old.pth"
    save.write_bytes(b"the previous good model")
    before_save = file_hashes(save)
    state_at_failure = {}
    real_terms = NoTreatment.loss_terms  # the reference models' loss
    steps = {"n": 0}

    def terms_nan_in_epoch_2(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        terms = real_terms(self, logits, targets, old_logits, new_logits, epoch)
        if epoch == 1:
            steps["n"] += 1
            if steps["n"] == 2:
                state_at_failure.update(file_hashes(run_dir / "state.pth"))
                return {"ce": terms["ce"] * float("nan")}
        return terms

    monkeypatch.setattr(NoTreatment, "loss_terms", terms_nan_in_epoch_2)
    result = call_script("train_old_model.py", *common_args(tiny_data, epochs=3), "--log-every", "1",
                         "--output-dir", run_dir, "--save", save)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line == (f"error: the training loss became non-finite in epoch 2/3, step 2/3 (terms on that "
                    f"batch: ce nan); the last good checkpoint is {run_dir / 'state.pth'} (after epoch "
                    "1/3); nothing was overwritten. Lower --lr, or check the data and hyperparameters, "
                    "and start the run again")
    assert state_at_failure and file_hashes(run_dir / "state.pth") == state_at_failure
    assert torch.load(run_dir / "state.pth", weights_only=False)["epoch"] == 0
    assert file_hashes(save) == before_save
    assert not (run_dir / "results.json").exists()


# --- run folders -----------------------------------------------------------------------------

def default_dir(argv):
    import main

    args = parse(main.build_parser(), [str(a) for a in argv])
    take_method_flags(args)  # as main.py: the flags of other methods are no setting
    return default_output_dir("update", args, "name")


@pytest.mark.parametrize("other", [
    ["--b", "2"], ["--lr", "0.01"], ["--seed", "1"], ["--method", "PCT_KL"], ["--epochs", "2"],
    ["--old-ckpt", "elsewhere/ckpt_old.pth"], ["--data-root", "/elsewhere"], ["--fast"],
])
def test_distinct_settings_get_distinct_default_run_folders(other):
    base = ["--dataset", "cifar10", "--b", "4"]
    assert default_dir(base) != default_dir([*base, *other])


@pytest.mark.parametrize("same", [
    ["--device", "cpu"], ["--output-dir", "x"], ["--resume"], ["--eval-batch-size", "7"],
])
def test_settings_that_do_not_change_results_share_the_run_folder(same):
    base = ["--dataset", "cifar10", "--b", "4"]
    folder = default_dir(base)
    assert folder == default_dir([*base, *same])
    assert folder.parent.as_posix() == "runs/update" and folder.name.startswith("name-")
