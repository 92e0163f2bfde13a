"""Model checkpoints: round trip, loading on the CPU, and the errors of a file that does not fit."""
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from models import build_model
from utils import checkpoint as ckpt_mod
from utils.checkpoint import atomic_save, load_model, model_checkpoint, read_checkpoint
from utils.errors import UserError


def save_model(path, *, arch="resnet18", num_classes=5, embed_dim=None, dataset="cifar10",
               num_old=5, role="old", seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, embed_dim)
    # Non-trivial BatchNorm statistics, so that the round trip must restore the buffers too.
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))
    atomic_save(model_checkpoint(model, arch=arch, num_classes=num_classes, embed_dim=embed_dim,
                                 dataset=dataset, num_old=num_old, role=role, epoch=2,
                                 metrics={"er_old": 12.5}, config={"seed": seed}), path)
    return model.eval()


@pytest.mark.parametrize("arch, embed_dim", [("resnet18", None), ("resnet18_cifar", 8)])
def test_round_trip_rebuilds_identical_model(tmp_path, arch, embed_dim):
    path = tmp_path / "ckpt.pth"
    original = save_model(path, arch=arch, embed_dim=embed_dim)
    model, ckpt = load_model(path, "old", num_classes=5, dataset="cifar10", num_old=5)

    assert (ckpt["arch"], ckpt["num_classes"], ckpt["embed_dim"]) == (arch, 5, embed_dim)
    assert (ckpt["role"], ckpt["epoch"], ckpt["metrics"]) == ("old", 2, {"er_old": 12.5})
    expected = original.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # Ready to serve as a reference model: eval mode, no gradients.
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_checkpoints_are_read_onto_the_cpu(tmp_path, monkeypatch):
    """A checkpoint saved on a GPU must load on a CPU-only machine: torch.load gets
    map_location="cpu". (A real CUDA-saved file is only tried where a GPU exists.)"""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model("resnet18", 5).to(device)
    path = tmp_path / "ckpt.pth"
    atomic_save(model_checkpoint(model, arch="resnet18", num_classes=5, embed_dim=None,
                                 dataset="cifar10", num_old=5, role="old", epoch=0, metrics={},
                                 config={}), path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "load", spy)
    loaded, _ = load_model(path, "old", num_classes=5, dataset="cifar10")
    assert calls == ["cpu"]
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())


def test_saved_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"x": 1}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_every_final_file_is_written_through_a_temporary_name_of_its_own(tmp_path, monkeypatch):
    """results.json, log.jsonl, predictions.npz and checkpoints all go through atomic_write:
    a temporary file of a name no other write shares, in the same folder, renamed at the end; a
    write that fails leaves the previous file as it was and no temporary file behind."""
    from types import SimpleNamespace

    import numpy as np

    import utils.checkpoint
    from utils.outputs import write_json, write_predictions
    from utils.state import write_log

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(utils.checkpoint.os, "replace", lambda src, dst: (renamed.append((src, dst)),
                                                                           real_replace(src, dst)))
    scores = SimpleNamespace(old_pred=np.zeros(2), pred=np.ones(2), logits=torch.zeros(2, 3),
                             old_logits=torch.zeros(2, 2))
    for _ in range(2):
        write_json(tmp_path / "results.json", {"nfr": 1.0})
        write_log(tmp_path, [{"epoch": 0}])
        write_predictions(tmp_path / "predictions.npz", [0, 1], scores, 2)
        atomic_save({"x": 1}, tmp_path / "checkpoint.pth")
    sources = [Path(src) for src, _ in renamed]
    assert len(renamed) == 8 and len(set(sources)) == 8
    assert {Path(dst).name for _, dst in renamed} == {"results.json", "log.jsonl", "predictions.npz",
                                                       "checkpoint.pth"}
    assert all(src.parent == tmp_path for src in sources)
    assert json.loads((tmp_path / "results.json").read_text()) == {"nfr": 1.0}

    before = (tmp_path / "log.jsonl").read_bytes()
    with pytest.raises(ZeroDivisionError):  # a crash half-way through the write
        utils.checkpoint.atomic_write(tmp_path / "log.jsonl", lambda f: (f.write(b"half"), 1 / 0))
    assert (tmp_path / "log.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "log.jsonl", "predictions.npz",
                                                          "results.json"]


@pytest.mark.parametrize("role, num_classes, words", [
    # a 10-class new-model file given as the old model (5 old classes), and the reverse
    ("old", 5, ["10-class head", "old model needs 5 classes", "right file"]),
    ("ensemble", 20, ["10-class head", "needs 20 classes"]),
])
def test_class_count_that_does_not_fit_the_role(tmp_path, role, num_classes, words):
    path = tmp_path / "ckpt_new.pth"
    save_model(path, num_classes=10, role="new")
    with pytest.raises(UserError) as err:
        load_model(path, role, num_classes=num_classes, dataset="cifar10")
    for w in words:
        assert w in str(err.value)


def test_old_model_with_another_class_split(tmp_path):
    path = tmp_path / "ckpt_old.pth"
    save_model(path, num_classes=5, num_old=5)
    with pytest.raises(UserError, match="old classes.*--old-fraction"):
        load_model(path, "old", num_classes=5, dataset="cifar10", num_old=3)


def test_checkpoint_of_another_data_set(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_model(path, dataset="cifar100")
    with pytest.raises(UserError, match="trained on cifar100, not on cifar10"):
        load_model(path, "old", num_classes=5, dataset="cifar10")


@pytest.mark.parametrize("arch", ["resnet50", "no_such_arch"])
def test_weights_that_do_not_fit_the_architecture(tmp_path, arch):
    path = tmp_path / "ckpt.pth"
    save_model(path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["arch"] = arch
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=f"do not fit architecture '{arch}'"):
        load_model(path, "old", num_classes=5, dataset="cifar10")


def test_missing_file_names_the_script_that_makes_it(tmp_path):
    with pytest.raises(UserError, match="not found; create it with train_new_model.py"):
        read_checkpoint(tmp_path / "nope.pth", "new")


def test_truncated_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_model(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="truncated: re-create it with train_old_model.py"):
        read_checkpoint(path, "old")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n"])
def test_file_that_is_no_checkpoint_at_all(tmp_path, content):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(path, "old")


@pytest.mark.parametrize("obj", [{"model": {}}, [1, 2], {"format": "someone-else/3"}])
def test_torch_file_that_is_not_a_checkpoint_of_this_repository(tmp_path, obj):
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    with pytest.raises(UserError, match="not a checkpoint of this repository.*train_old_model.py"):
        read_checkpoint(path, "old")
