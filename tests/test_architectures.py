"""Architecture updates (Table 2), a frozen ViT-B/32 trained on cached features (Table 4),
pretrained weights that cannot be loaded (an error unless --allow-random-weights), and a 2-d
embedding (Figure 3)."""
import json
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torchvision.models import VisionTransformer

import utils.runner
from conftest import NUM_OLD, common_args, run_inline
from models import build_model
from models.zoo import Classifier, WeightsUnavailable
from utils.checkpoint import atomic_save, load_model, model_checkpoint, read_checkpoint
from utils.errors import UserError


def test_resnet18_old_to_resnet50_new_and_updated(tiny_data, old_ckpt, tmp_path):
    """The teachers are rebuilt from their own checkpoints, whatever the updated model's --arch."""
    run_inline("train_new_model.py", *common_args(tiny_data, arch="resnet50"),
               "--output-dir", tmp_path / "new", "--save", tmp_path / "new50.pth")
    run_inline("main.py", *common_args(tiny_data, arch="resnet50"), "--method", "MPT_KL",
               "--old-ckpt", old_ckpt, "--new-ckpt", tmp_path / "new50.pth", "--output-dir", tmp_path / "update")
    assert read_checkpoint(old_ckpt)["arch"] == "resnet18"
    assert read_checkpoint(tmp_path / "update" / "checkpoint.pth")["arch"] == "resnet50"
    assert "nfr" in json.loads((tmp_path / "update" / "results.json").read_text())


@pytest.mark.slow
def test_frozen_vit_runs_its_backbone_once_per_image(tiny_data, tmp_path, capsys):
    """Two epochs of a random-weight ViT-B/32 head (32-pixel inputs: one patch): the backbone
    sees every old-class image once, for the feature cache, and never again."""
    seen = []

    def count(module, inputs, output):
        if isinstance(module, VisionTransformer):
            seen.append(len(inputs[0]))

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        run_inline("train_old_model.py", *common_args(tiny_data, epochs=2, arch="vit_b_32", image_size=32),
                   "--freeze-backbone", "--output-dir", tmp_path / "old", "--save", tmp_path / "old.pth")
    finally:
        hook.remove()
    assert sum(seen) == NUM_OLD * (8 + 4)  # the tiny data set: 8 train and 4 test images per class
    assert "RANDOM weights" in capsys.readouterr().err
    assert len((tmp_path / "old" / "log.jsonl").read_text().splitlines()) == 2
    model, ckpt = load_model(tmp_path / "old.pth", "old", num_classes=NUM_OLD, dataset="cifar10")
    assert ckpt["inputs"]["image_size"] == 32 and isinstance(model.backbone, VisionTransformer)


def test_frozen_head_refuses_a_reference_trained_on_another_backbone(tiny_data, old_ckpt, new_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_inline("main.py", *common_args(tiny_data), "--freeze-backbone", "--old-ckpt", old_ckpt,
                   "--new-ckpt", new_ckpt, "--output-dir", tmp_path / "update")
    assert exit_info.value.code == 2
    assert "frozen backbone" in capsys.readouterr().err


@pytest.fixture
def offline_weights(monkeypatch):
    """torchvision's weights cannot be had (as without network and without a cached copy)."""
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)


def test_pretrained_weights_unavailable_are_an_error(offline_weights, capsys):
    with pytest.raises(WeightsUnavailable) as err:
        build_model("resnet18", 3, pretrained=True)
    message = str(err.value)
    assert "cannot load the pretrained resnet18 weights" in message and "no network" in message
    assert "RANDOM" not in capsys.readouterr().err
    # The run words it for its user: how to fetch the weights, or the flag that goes on without.
    args = SimpleNamespace(arch="resnet18", embed_dim=None, image_size=None, pretrained=True,
                           allow_random_weights=False, freeze_backbone=False, seed=0)
    with pytest.raises(UserError,
                       match="cannot load the pretrained resnet18.*get_model_weights.*--allow-random-weights"):
        utils.runner.build_trained_model(args, 3, torch.device("cpu"), 1)


def test_pretrained_weights_unavailable_allowed_start_random(offline_weights, capsys):
    """With --allow-random-weights the run warns once and starts from the random weights that the
    same command without --pretrained draws (seeded alike, whatever the failed load consumed)."""
    flags = dict(arch="resnet18", embed_dim=None, image_size=None, allow_random_weights=True,
                 freeze_backbone=False, seed=3)
    model = utils.runner.build_trained_model(SimpleNamespace(**flags, pretrained=True), 3, torch.device("cpu"), 1)
    assert isinstance(model, Classifier) and model.weights is None
    assert capsys.readouterr().err.count("RANDOM weights") == 1
    plain = utils.runner.build_trained_model(SimpleNamespace(**flags, pretrained=False), 3, torch.device("cpu"), 1)
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_loaded_pretrained_weights_are_named(monkeypatch):
    """Weights that load are recorded by name (results.json and the checkpoint say "weights")."""
    from torchvision.models._api import WeightsEnum

    monkeypatch.setattr(WeightsEnum, "get_state_dict",
                        lambda self, *a, **k: torchvision.models.resnet18().state_dict())
    model = build_model("resnet18", 3, pretrained=True)
    assert model.weights == "ResNet18_Weights.IMAGENET1K_V1"


def test_pretrained_vit_needs_its_input_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_inline("train_old_model.py", "--arch", "vit_b_32", "--pretrained", "--image-size", "32",
                   "--device", "cpu", "--output-dir", tmp_path)
    assert "--image-size 224" in capsys.readouterr().err


def test_two_dimensional_embedding_survives_the_checkpoint(tmp_path):
    """Figure 3's models: a 2-d embedding before the classifier, exposed by ``features``, and
    rebuilt with it from the checkpoint (no training needed to check either)."""
    model = build_model("resnet18", 10, 2)
    atomic_save(model_checkpoint(model, arch="resnet18", num_classes=10, embed_dim=2, dataset="cifar10", num_old=5,
                                 role="new", epoch=0, metrics={}, config={}), tmp_path / "new.pth")
    loaded, ckpt = load_model(tmp_path / "new.pth", "new", num_classes=10, dataset="cifar10")
    x = torch.randn(3, 3, 32, 32)
    assert ckpt["embed_dim"] == 2 and loaded.features(x).shape == (3, 2)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
