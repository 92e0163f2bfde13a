"""Your own model, your own data: any torchvision classifier (--arch torchvision:NAME), image
folders in your class order (--dataset folder --classes FILE), and reference models trained
elsewhere (plain state_dicts, --old-arch / --old-classes): the model inside the repository
predicts exactly what the plain torchvision model predicts outside."""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

import main
from conftest import REPO, assert_ok, assert_user_error, run_inline, script_env, write_tiny_dataset
from models import build_model
from models.zoo import Classifier, WeightsUnavailable, arch_problem, from_torchvision_state_dict
from utils import image_files
from utils.cli import parse, take_method_flags, validate
from utils.data import load_dataset, old_data_subset
from utils.errors import UserError
from utils.external import External, head_order, load_external, read_state_dict
from utils.image_files import IMAGE_SUFFIXES
from utils.metrics import flip_metrics

TV = "torchvision:"


# ---------------------------------------------------------------------------------------------
# Any torchvision classifier
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"),
                                        ("efficientnet_b0", "classifier.1"), ("shufflenet_v2_x0_5", "fc"),
                                        ("googlenet", "fc")])
def test_a_torchvision_model_gets_a_head_of_the_run_s_classes(name, head):
    torch.manual_seed(0)
    model = build_model(TV + name, 5).eval()
    assert isinstance(model, Classifier) and model.torchvision_head == head and model.weights is None
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    embedded = build_model(TV + name, 5, embed_dim=7).eval()
    with torch.no_grad():
        assert embedded.features(torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name, kwargs, size", [("resnet18", {}, 32), ("mobilenet_v3_small", {}, 64),
                                                ("googlenet", {"aux_logits": False, "init_weights": True}, 64),
                                                ("vit_b_32", {"image_size": 64}, 64)])
def test_a_plain_state_dict_gives_the_plain_model_s_logits(name, kwargs, size):
    """torchvision's keys (fc.weight, layer1...) map onto the wrapped model: the same function."""
    torch.manual_seed(1)
    plain = torchvision.models.get_model(name, num_classes=4, **kwargs).eval()
    model = build_model(TV + name, 4, image_size=size).eval()
    model.load_state_dict(from_torchvision_state_dict(model, plain.state_dict()))
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)


def test_the_paper_s_architectures_take_a_plain_torchvision_state_dict():
    torch.manual_seed(2)
    plain = torchvision.models.resnet18(num_classes=3).eval()
    model = build_model("resnet18", 3).eval()
    model.load_state_dict(from_torchvision_state_dict(model, plain.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)


def test_architecture_names_are_checked_in_one_line():
    assert arch_problem(TV + "resnet18") is None and arch_problem("resnet50") is None
    assert "torchvision has no classification model 'resnet19'" in arch_problem(TV + "resnet19")
    assert TV + "resnet18" in arch_problem(TV + "resnet19")  # the names it may have meant
    assert "SqueezeNet" in arch_problem(TV + "squeezenet1_0")
    assert "torchvision:NAME" in arch_problem("convnext")
    with pytest.raises(UserError, match="resnet19"):
        validate(parse(main.build_parser(), ["--arch", TV + "resnet19"], section="update"))
    with pytest.raises(UserError, match="--old-arch"):
        validate(parse(main.build_parser(), ["--old-arch", TV + "nope", "--old-classes", "x"], section="update"))
    with pytest.raises(UserError, match="needs both --old-arch and --old-classes"):
        validate(parse(main.build_parser(), ["--old-arch", TV + "resnet18"], section="update"))


@pytest.fixture
def offline_weights(monkeypatch):
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)


def test_pretrained_torchvision_weights_unavailable_are_the_usual_error(offline_weights):
    import utils.runner

    with pytest.raises(WeightsUnavailable, match="cannot load the pretrained torchvision:mobilenet_v3_small"):
        build_model(TV + "mobilenet_v3_small", 3, pretrained=True)
    args = argparse.Namespace(arch=TV + "mobilenet_v3_small", embed_dim=None, image_size=None, pretrained=True,
                              allow_random_weights=False, freeze_backbone=False, seed=0, sync_bn=True)
    with pytest.raises(UserError, match=r"get_model_weights\('mobilenet_v3_small'\)\.IMAGENET1K_V1.*"
                                        "--allow-random-weights"):
        utils.runner.build_trained_model(args, 3, torch.device("cpu"), 1)


def test_pretrained_torchvision_weights_are_its_default_ones_and_named(monkeypatch):
    from torchvision.models._api import WeightsEnum

    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: torchvision.models.resnet50().state_dict())
    assert build_model(TV + "resnet50", 3, pretrained=True).weights == "ResNet50_Weights.IMAGENET1K_V2"


def test_a_pretrained_vit_at_another_size_is_a_user_error(call_script, tmp_path):
    result = call_script("train_new_model.py", "--arch", TV + "vit_b_16", "--pretrained", "--image-size", "32",
                         "--dataset", "cifar10", "--data-root", write_tiny_dataset(tmp_path / "data"),
                         "--device", "cpu", "--epochs", "1", "--output-dir", tmp_path / "run")
    assert_user_error(result, "--arch torchvision:vit_b_16", "image_size")


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------
def write_folder(root, classes=("cat", "dog", "emu", "fox"), train=4, val=2, test_split="val"):
    """root/train/<class>/ and root/<test_split>/<class>/ images of several formats and sizes,
    one class with a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    formats = [("png", "PNG"), ("JPG", "JPEG"), ("bmp", "BMP"), ("tif", "TIFF"), ("webp", "WEBP")]
    for split, count in (("train", train), (test_split, val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                suffix, fmt = formats[(i + c) % len(formats)]
                sub = folder / "more" if (name == classes[-1] and i == 0) else folder
                sub.mkdir(exist_ok=True)
                pixels = rng.integers(0, 256, (20 + 4 * i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(sub / f"{i:02d}.{suffix}", format=fmt)
            (folder / "notes.txt").write_text("not an image")
    return root


def test_the_image_suffixes_are_torchvision_s():
    assert tuple(IMAGE_SUFFIXES) == tuple(IMG_EXTENSIONS)


def test_a_folder_reads_every_format_in_the_class_order_of_its_file(tmp_path):
    root = write_folder(tmp_path / "data")
    order = tmp_path / "classes.txt"
    order.write_text("emu\n dog \n\nfox\ncat\n")
    data = load_dataset("folder", root, classes=order)
    assert data.name == "folder" and data.classes == ["emu", "dog", "fox", "cat"]
    index = {c: i for i, c in enumerate(data.classes)}
    assert data.test.samples == make_dataset(str(root / "val"), index, extensions=IMG_EXTENSIONS)
    assert len(data.train) == 16 and sorted(data.train.targets.tolist()) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    # The flip analysis lists the same test images in the same order, with the run's class indices.
    images = image_files.TestImages("folder", root, classes=data.classes)
    assert [str(root / p) for p in images.paths] == [p for p, _ in data.test.samples]
    assert images.targets.tolist() == data.test.targets.tolist()
    assert images.image(0).shape[2] == 3
    default = load_dataset("folder", root)
    assert default.classes == ["cat", "dog", "emu", "fox"]


def test_a_folder_s_test_split_may_be_test(tmp_path):
    root = write_folder(tmp_path / "data", test_split="test")
    assert len(load_dataset("folder", root).test) == 8
    (root / "val").mkdir()
    with pytest.raises(UserError, match="both val/ and test/"):
        load_dataset("folder", root)


@pytest.mark.parametrize("lines, words", [("cat\ndog\nemu\n", ["leaves out", "fox"]),
                                          ("cat\ndog\nemu\nfox\nyak\n", ["does not hold", "yak"]),
                                          ("cat\ndog\ncat\nemu\nfox\n", ["more than once", "cat"]),
                                          ("\n\n", ["names no class"])])
def test_a_class_file_that_does_not_fit_the_folders_is_refused(tmp_path, lines, words):
    root = write_folder(tmp_path / "data")
    (tmp_path / "c.txt").write_text(lines)
    with pytest.raises(UserError) as err:
        load_dataset("folder", root, classes=tmp_path / "c.txt")
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def parsed(*argv):
    args = parse(main.build_parser(), list(argv), section="update")
    take_method_flags(args)
    return args


def test_a_folder_has_its_own_recipe_not_imagenet_s():
    a = parsed("--dataset", "folder")
    assert (a.image_size, a.embed_dim, a.lr_schedule, a.epochs, a.weight_decay, a.lr, a.batch_size, a.b) == (
        224, None, "cosine", 100, 5e-4, 0.1, 128, 4.0)
    assert parsed("--dataset", "folder", "--image-size", "32").image_size == 32
    text = main.build_parser().format_help()
    assert "folder:" in text and "random" in text and "ImageNet normalisation" in text


def test_classes_only_orders_a_folder(tmp_path):
    with pytest.raises(UserError, match="--dataset folder"):
        validate(parsed("--dataset", "cifar10", "--classes", "c.txt"))
    with pytest.raises(UserError, match="--data-pipeline pil"):
        validate(parsed("--dataset", "folder", "--data-pipeline", "pil"))


def test_folder_inputs_crop_at_the_image_size_with_imagenet_normalisation(tmp_path):
    data = load_dataset("folder", write_folder(tmp_path / "data"))
    args = argparse.Namespace(image_size=16, batch_size=4, seed=0, workers=0, eval_batch_size=8)
    inputs = data.inputs(args, torch.device("cpu"))
    x, y = next(iter(inputs.train_loader))
    assert x.shape == (4, 3, 16, 16)
    x, y = next(iter(inputs.eval_batches("test")))
    assert x.shape == (8, 3, 16, 16) and y.tolist() == data.test.targets.tolist()


def test_old_data_fraction_keeps_an_image_of_every_class_or_refuses(tmp_path):
    targets = torch.tensor([0] * 4 + [1] * 40)
    with pytest.raises(UserError) as err:
        old_data_subset(targets, torch.arange(44), 0.1, 42, classes=["small", "large"])
    message = str(err.value)
    assert "small (4 images)" in message and "n - round((1 - F) * n)" in message and "0.25" in message
    assert "large" not in message and "\n" not in message
    kept, record = old_data_subset(targets, torch.arange(44), 0.25, 42, classes=["small", "large"])
    assert torch.bincount(targets[kept]).tolist() == [1, 10]
    assert record["old_data_fraction"] == 0.25 and record["split_seed"] == 42


# ---------------------------------------------------------------------------------------------
# Reference models from outside
# ---------------------------------------------------------------------------------------------
RUN = ["apple", "banana", "cherry", "kiwi", "grape", "plum"]


def test_head_rows_are_put_in_the_run_s_class_order():
    assert head_order(["cherry", "apple", "banana"], RUN, 3, "old", "f") == [1, 2, 0]
    assert head_order(RUN[::-1], RUN, 6, "new", "f") == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("names, rows, role, words", [
    (["cherry", "apple", "durian"], 3, "old", ["does not hold", "durian"]),
    (["cherry", "apple", "kiwi"], 3, "old", ["first 3 classes", "kiwi", "--classes"]),
    (["cherry", "apple"], 3, "old", ["names 2 classes", "3 old classes", "--old-fraction"]),
    (["apple", "banana", "cherry", "kiwi", "grape"], 6, "new", ["all 6 classes", "plum"]),
])
def test_head_classes_that_do_not_fit_the_run_are_refused_in_one_line(names, rows, role, words):
    with pytest.raises(UserError) as err:
        head_order(names, RUN, rows, role, "f.txt", hint=" (--old-fraction 0.5 of its 6)")
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def plain_old_model(tmp_path, rows=("cherry", "apple", "banana"), arch="resnet18", **save_as):
    torch.manual_seed(3)
    plain = torchvision.models.get_model(arch, num_classes=len(rows)).eval()
    state = plain.state_dict()
    if save_as.get("prefix"):
        state = {save_as["prefix"] + k: v for k, v in state.items()}
    if save_as.get("wrap"):
        state = {save_as["wrap"]: state}
    torch.save(state, tmp_path / "old.pth")
    (tmp_path / "old.txt").write_text("\n".join(rows) + "\n")
    return plain, tmp_path / "old.pth", External(TV + arch, str(tmp_path / "old.txt"))


@pytest.mark.parametrize("save_as", [{}, {"prefix": "module."}, {"wrap": "state_dict"}])
def test_the_old_model_inside_predicts_what_it_predicts_outside(tmp_path, save_as):
    """Its logits inside are the plain model's, the columns in the run's class order."""
    plain, path, source = plain_old_model(tmp_path, **save_as)
    model, record = load_external(path, "old", source, RUN, 3, image_size=32)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        inside, outside = model(x), plain(x)
    assert torch.allclose(inside, outside[:, [1, 2, 0]], atol=1e-5)  # apple, banana, cherry
    assert record["source"] == "state_dict" and record["head_classes"] == ["cherry", "apple", "banana"]
    assert record["arch"] == TV + "resnet18" and len(record["sha256"]) == 16 and record["old_data"] is None


def test_a_file_that_is_not_a_state_dict_of_the_architecture_is_named(tmp_path):
    _, path, source = plain_old_model(tmp_path)
    with pytest.raises(UserError, match=r"does not fit --old-arch torchvision:resnet50: keys .*missing.*"
                                        r"layer1.0.conv3.weight"):
        load_external(path, "old", External(TV + "resnet50", source.classes), RUN, 3)
    (tmp_path / "four.txt").write_text("cherry\napple\nbanana\nkiwi\n")
    with pytest.raises(UserError, match="names 4 classes"):
        load_external(path, "old", External(TV + "resnet18", str(tmp_path / "four.txt")), RUN, 3)
    torch.save(torchvision.models.resnet18(num_classes=3), tmp_path / "module.pth")  # a pickled module
    with pytest.raises(UserError, match=r"not a plain state_dict .*torch.save\(model.state_dict\(\)"):
        read_state_dict(tmp_path / "module.pth", "old")
    torch.save({"format": "mpt-checkpoint/1", "model": {}}, tmp_path / "ours.pth")
    with pytest.raises(UserError, match="checkpoint of this repository.*without --old-arch"):
        read_state_dict(tmp_path / "ours.pth", "old")
    with pytest.raises(UserError, match="not found"):
        read_state_dict(tmp_path / "none.pth", "old")


def test_an_old_class_name_the_data_does_not_hold_exits_2_in_one_line(tmp_path, call_script):
    root = write_tiny_dataset(tmp_path / "data", num_classes=6, train=2, test=1)
    names = sorted(p.name for p in (root / "train").iterdir())
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    plain, path, _ = plain_old_model(tmp_path, rows=(names[2], names[0], "durian"))
    result = call_script("main.py", "--dataset", "folder", "--data-root", root, "--classes", tmp_path / "classes.txt",
                         "--arch", TV + "resnet18", "--image-size", "32", "--epochs", "1", "--device", "cpu",
                         "--workers", "0", "--old-ckpt", path, "--old-arch", TV + "resnet18",
                         "--old-classes", tmp_path / "old.txt", "--output-dir", tmp_path / "run")
    assert_user_error(result, "--old-classes", "durian", "does not hold")
    assert not (tmp_path / "run").exists()


def test_a_plain_state_dict_without_its_flags_says_which_to_give(tmp_path, call_script):
    root = write_tiny_dataset(tmp_path / "data", num_classes=6, train=2, test=1)
    _, path, _ = plain_old_model(tmp_path)
    result = call_script("main.py", "--dataset", "folder", "--data-root", root, "--arch", TV + "resnet18",
                         "--image-size", "32", "--epochs", "1", "--device", "cpu", "--workers", "0",
                         "--old-ckpt", path, "--output-dir", tmp_path / "run")
    assert_user_error(result, "not a checkpoint of this repository", "--old-arch ARCH", "--old-classes FILE")


def test_results_record_where_the_references_came_from(tmp_path):
    """reference_record: an old model's data subset (fraction, split seed, hash of its indices),
    so that updates from old models trained on different subsets can be told apart."""
    from utils.checkpoint import old_model_setting, reference_record

    subset = {"old_data_fraction": 0.5, "split_seed": 7, "subset_sha256": "abc"}
    ckpt = {"arch": "resnet18", "role": "old", "old_data": subset, "split": None}
    torch.save(ckpt, tmp_path / "old.pth")
    assert old_model_setting(ckpt) == {"old_arch": "resnet18", "old_data_fraction": 0.5}
    record = reference_record(tmp_path / "old.pth", ckpt)
    assert record["source"] == "checkpoint" and record["old_data"] == subset and len(record["sha256"]) == 16
    assert json.loads(json.dumps(record)) == record


# ---------------------------------------------------------------------------------------------
# docs/own-model.md, every command of it
# ---------------------------------------------------------------------------------------------
DOC = REPO / "docs" / "own-model.md"
LINKED = ("main.py", "train_old_model.py", "train_new_model.py", "methods", "models", "utils", "tools", "docs")


def doc_steps() -> list[tuple[str, str]]:
    """The page's code blocks in order: (language, code) for bash, python and console blocks."""
    return re.findall(r"```(bash|python|console)\n(.*?)```", DOC.read_text(), re.S)


def run_step(language: str, code: str, cwd, env) -> list[subprocess.CompletedProcess]:
    """A bash block as one script, a python block as one program, a console block line by line:
    each "$ COMMAND" run, and the lines after it are the one-line error it must end with."""
    def shell(command):
        return subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)

    if language == "bash":
        done = shell(code)
        assert_ok(done)
        return [done]
    if language == "python":
        done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)
        assert_ok(done)
        return [done]
    results = []
    for command, shown in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", code, re.M):
        done = shell(command)
        if shown.strip():
            assert assert_user_error(done) == shown.strip()  # the page shows the message as printed
        else:
            assert_ok(done)
        results.append(done)
    return results


@pytest.mark.slow  # trains two plain models, a new reference model and an update
def test_the_own_model_page_runs_as_written(tmp_path):
    """docs/own-model.md, run in a fresh folder with the repository's scripts: the update from an
    old ResNet-18 trained by a plain script (three classes, head rows not sorted) ends with a
    results.json consistent with its predictions.npz; the old model's error inside the repository
    is the one its own script printed, and its predictions are the plain model's; a class name
    the data does not hold exits 2 in one line; tools.flips and tools.evaluate read the results,
    and a folder written by save_predictions."""
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    env = {**script_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    outputs = [done for language, code in doc_steps() for done in run_step(language, code, tmp_path, env)]
    plain = next(d.stdout for d in outputs if "old-class error" in d.stdout)
    outside_error = float(re.search(r"old-class error: ([\d.]+) %", plain).group(1))

    run = tmp_path / "runs" / "own" / "mpt_kl"
    results = json.loads((run / "results.json").read_text())
    arrays = np.load(run / "predictions.npz")
    assert results["classes"] == ["apple", "banana", "cherry", "kiwi", "grape", "plum"] and results["num_old"] == 3
    assert results["method"]["name"] == "MPT_KL" and results["config"]["arch"] == TV + "resnet18"
    recomputed = flip_metrics(arrays["targets"], arrays["old_pred"], arrays["pred"], int(arrays["num_old"]))
    for key in ("er_old", "er_all", "nfr", "pfr", "er_old_model"):
        assert results[key] == pytest.approx(recomputed[key], abs=1e-9), key
    assert results["er_old_model"] == pytest.approx(outside_error, abs=0.01)
    old = results["references"]["old"]
    assert old["source"] == "state_dict" and old["head_classes"] == ["cherry", "apple", "banana"]
    assert old["arch"] == TV + "resnet18" and old["old_data"] is None
    assert results["references"]["new"]["source"] == "checkpoint"
    assert results["setting"]["old_source"] == "state_dict" and results["setting"]["old_sha256"] == old["sha256"]

    # The old model's predictions inside are the plain torchvision model's outside, same preprocessing.
    size = 32
    preprocess = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    val = torchvision.datasets.ImageFolder(tmp_path / "my_images" / "val", transform=preprocess)
    x = torch.stack([image for image, _ in val])
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(torch.load(tmp_path / "old" / "model.pth", weights_only=True))
    with torch.no_grad():
        outside = model.eval()(x)[:, [1, 2, 0]]  # rows cherry, apple, banana -> the run's apple, banana, cherry
    assert np.array_equal(outside.argmax(1).numpy(), arrays["old_pred"])
    assert np.allclose(outside.numpy(), arrays["old_logits"].astype(np.float32), atol=0.02, rtol=1e-2)

    assert (tmp_path / "runs" / "own" / "flips" / "flips.json").is_file()
    assert (tmp_path / "elsewhere" / "flips" / "flips.json").is_file()
    evaluated = json.loads((tmp_path / "runs" / "own" / "new_as_update" / "results.json").read_text())
    assert evaluated["references"]["old"]["source"] == "state_dict"
    assert evaluated["er_old_model"] == results["er_old_model"]
    # Two plain models scored by tools.evaluate: the predictions that the page's own code saved.
    saved = np.load(tmp_path / "elsewhere" / "update" / "predictions.npz")
    scored = np.load(tmp_path / "elsewhere" / "evaluated" / "predictions.npz")
    for key in ("targets", "old_pred", "pred", "num_old"):
        assert np.array_equal(saved[key], scored[key]), key
    plain_scored = json.loads((tmp_path / "elsewhere" / "evaluated" / "results.json").read_text())
    assert plain_scored["evaluated"]["source"]["head_classes"] == ["apple", "banana", "cherry", "kiwi", "grape", "plum"]


def test_a_folder_model_of_another_class_order_is_refused(tmp_path):
    from utils.checkpoint import load_model, model_checkpoint

    model = build_model(TV + "resnet18", 2)
    torch.save(model_checkpoint(model, arch=TV + "resnet18", num_classes=2, embed_dim=None, dataset="folder",
                                num_old=2, role="old", epoch=0, metrics={}, config={}, classes=["cat", "dog"]),
               tmp_path / "old.pth")
    loaded, ckpt = load_model(tmp_path / "old.pth", "old", num_classes=2, num_old=2, dataset="folder",
                              classes=["cat", "dog", "emu", "fox"])
    assert ckpt["classes"] == ["cat", "dog"] and isinstance(loaded, Classifier)
    with pytest.raises(UserError, match="its class 0 is 'cat', this run's is 'dog'.*--classes"):
        load_model(tmp_path / "old.pth", "old", num_classes=2, num_old=2, dataset="folder",
                   classes=["dog", "cat", "emu", "fox"])


@pytest.mark.slow  # trains three models for an epoch
def test_an_old_model_of_this_repository_on_a_share_of_a_folder(tmp_path, call_script):
    """The three scripts on image folders with a torchvision architecture: the old model trained
    on half of each old class's images is rebuilt by the update, whose results.json records that
    subset (fraction, split seed, hash) in its references."""
    root = write_tiny_dataset(tmp_path / "data", num_classes=4, train=4, test=2)
    order = tmp_path / "classes.txt"
    order.write_text("class03\nclass01\nclass00\nclass02\n")
    flags = ["--dataset", "folder", "--data-root", root, "--classes", order, "--arch", TV + "resnet18",
             "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "0.01", "--device", "cpu",
             "--workers", "0"]
    run_inline("train_old_model.py", *flags, "--old-data-fraction", "0.5", "--save", tmp_path / "old.pth",
               "--output-dir", tmp_path / "old")
    run_inline("train_new_model.py", *flags, "--save", tmp_path / "new.pth", "--output-dir", tmp_path / "new")
    run_inline("main.py", *flags, "--method", "MPT_KL", "--old-ckpt", tmp_path / "old.pth",
               "--new-ckpt", tmp_path / "new.pth", "--output-dir", tmp_path / "update")
    old = json.loads((tmp_path / "old" / "results.json").read_text())
    update = json.loads((tmp_path / "update" / "results.json").read_text())
    subset = old["old_data"]
    assert subset["old_data_fraction"] == 0.5 and subset["split_seed"] == 42 and subset["subset_sha256"]
    assert old["train_size"] == 4 and old["classes"] == ["class03", "class01", "class00", "class02"]
    assert update["references"]["old"]["old_data"] == subset
    assert update["setting"]["old_arch"] == TV + "resnet18" and update["setting"]["old_data_fraction"] == 0.5
    assert update["references"]["old"]["command"][0] == "train_old_model.py"
    # The same old model under another class order is refused.
    order.write_text("class01\nclass03\nclass00\nclass02\n")
    result = call_script("main.py", *flags, "--method", "MPT_KL", "--old-ckpt", tmp_path / "old.pth",
                         "--new-ckpt", tmp_path / "new.pth", "--output-dir", tmp_path / "update2")
    assert_user_error(result, "other classes, or in another order", "--classes")
