"""Architecture updates (Table 2), a frozen ViT-B/32 trained on cached features (Table 4),
pretrained weights without network, and a 2-d embedding (Figure 3)."""
import json

import pytest
import torch
from torchvision.models import VisionTransformer

from conftest import NUM_OLD, common_args, run_inline
from models import build_model
from models.zoo import Classifier
from utils.checkpoint import load_model, read_checkpoint


def test_resnet18_old_to_resnet50_new_and_updated(tiny_data, old_ckpt, tmp_path):
    """The teachers are rebuilt from their own checkpoints, whatever the updated model's --arch."""
    run_inline("train_new_model.py", *common_args(tiny_data, arch="resnet50"),
               "--output-dir", tmp_path / "new", "--save", tmp_path / "new50.pth")
    run_inline("main.py", *common_args(tiny_data, arch="resnet50"), "--method", "MPT_KL",
               "--old-ckpt", old_ckpt, "--new-ckpt", tmp_path / "new50.pth", "--output-dir", tmp_path / "update")
    assert read_checkpoint(old_ckpt)["arch"] == "resnet18"
    assert read_checkpoint(tmp_path / "update" / "checkpoint.pth")["arch"] == "resnet50"
    assert "nfr" in json.loads((tmp_path / "update" / "results.json").read_text())


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


def test_pretrained_weights_unavailable_warn_and_start_random(monkeypatch, capsys):
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    torch.manual_seed(0)
    model = build_model("resnet18", 3, pretrained=True)
    assert isinstance(model, Classifier) and "RANDOM weights" in capsys.readouterr().err


def test_pretrained_vit_needs_its_input_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_inline("train_old_model.py", "--arch", "vit_b_32", "--pretrained", "--image-size", "32",
                   "--device", "cpu", "--output-dir", tmp_path)
    assert "--image-size 224" in capsys.readouterr().err


def test_two_dimensional_embedding(tiny_data, tmp_path):
    """Figure 3's models: a 2-d embedding before the classifier, exposed by ``features``."""
    run_inline("train_new_model.py", *common_args(tiny_data, embed_dim=2),
               "--output-dir", tmp_path / "new", "--save", tmp_path / "new.pth")
    model, ckpt = load_model(tmp_path / "new.pth", "new", num_classes=10, dataset="cifar10")
    assert ckpt["embed_dim"] == 2
    assert model.features(torch.zeros(3, 3, 32, 32)).shape == (3, 2)
