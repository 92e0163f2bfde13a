"""--config FILE: shared keys, per-script sections, command-line overrides, and the shipped
configs/*.yaml."""
from pathlib import Path

import pytest

import main
import train_new_model
import train_old_model
from utils.cli import method_from_args, parse, take_method_flags, validate
from utils.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SCRIPTS = {"old": train_old_model, "new": train_new_model, "update": main}


def shipped(name: str) -> Path:
    return CONFIGS[[p.stem for p in CONFIGS].index(name)]


def parsed(section, config, *argv):
    return parse(SCRIPTS[section].build_parser(), ["--config", str(config), *argv], section=section)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(
        "epochs: 3\n"
        "lr: 1e-3\n"            # YAML reads this as a string: converted like the command line
        "weight-decay: 0\n"     # dashes work too
        "fast: true\n"
        "old:\n  arch: resnet50\n  save: ck/old.pth\n"
        "update:\n  method: PCT_KL\n  b: 2\n  epochs: 5\n  old_ckpt: ck/old.pth\n")
    return path


def test_sections_and_overrides(config):
    a = parsed("update", config)
    assert (a.method, a.b, a.epochs, a.lr, a.weight_decay, a.fast) == ("PCT_KL", 2.0, 5, 0.001, 0.0, True)
    assert isinstance(a.b, float) and a.old_ckpt == "ck/old.pth"
    a = parsed("update", config, "--epochs", "7", "--method", "MPT_LM", "--lr", "0.5")
    assert (a.method, a.epochs, a.lr, a.b) == ("MPT_LM", 7, 0.5, 2.0)   # the command line wins
    a = parsed("old", config)
    assert (a.arch, a.epochs, a.save, a.fast) == ("resnet50", 3, "ck/old.pth", True)
    a = parsed("new", config, "--arch", "resnet18_cifar")   # main.py's keys never reach it
    assert (a.arch, a.epochs, a.save) == ("resnet18_cifar", 3, "checkpoint/ckpt_new.pth")


@pytest.mark.parametrize("text, words", [
    ("method: MPT_KL\n", ["unknown flags: method", "update: for main.py"]),  # main.py-only, shared
    ("old:\n  b: 2\n", ["unknown flags: old: b"]),
    ("fast: 1\n", ["fast must be true or false"]),
    ("precision: fp16\n", ["precision must be one of fp32, bf16", "fp16"]),
    ("epochs: [1, 2]\n", ["epochs must be a single value"]),
    ("new: 3\n", ["section new: must be a mapping"]),
])
def test_mistakes_are_named(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        parsed("old", path)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_null_sets_a_flag_back_to_none(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("embed_dim: 2\nnew:\n  embed_dim: null\n")
    assert parsed("old", path).embed_dim == 2 and parsed("new", path).embed_dim is None


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid_for_every_script(config):
    args = {section: parsed(section, config, "--device", "cpu") for section in SCRIPTS}
    for a in args.values():
        validate(a)
    assert take_method_flags(args["update"]) == {}  # no flag of another method
    method_from_args(args["update"])
    # The updated model reads the reference models where the other two scripts save them.
    assert args["update"].old_ckpt == args["old"].save
    assert args["update"].new_ckpt == args["new"].save
    assert args["update"].arch == args["new"].arch
    assert len({a.dataset for a in args.values()}) == 1


def test_the_shipped_configs_cover_the_paper():
    assert {p.stem for p in CONFIGS} >= {"cifar100_resnet18", "cifar100_resnet18_to_resnet50",
                                         "imagenet_resnet18", "cifar100_vit_b32", "cifar10_embed2"}
    table2 = {s: parsed(s, shipped("cifar100_resnet18_to_resnet50")) for s in SCRIPTS}
    assert (table2["old"].arch, table2["new"].arch, table2["update"].arch) == ("resnet18", "resnet50", "resnet50")
