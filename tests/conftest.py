"""Shared test setup: the repository root on sys.path, tiny generated data sets (CIFAR-style
and ImageNet-style folders), helpers that run a script the way a user does or in this process,
and reference checkpoints trained once per session."""
import hashlib
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path setup, like every import of the repository)
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from models import build_model  # noqa: E402
from utils.settings import flag  # noqa: E402

# The tests run tiny models on a small shared CPU: more threads than one only fight over it.
torch.set_num_threads(1)

NUM_CLASSES = 10   # cifar10's class count: the tiny data set stands in for it
NUM_OLD = 5        # the first half (--old-fraction 0.5)


def write_png(image: torch.Tensor, path: Path):
    """A uint8 (3, H, W) image as a PNG, with PIL (torchvision 0.29 deprecates its encoders)."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_tiny_dataset(root: Path, num_classes: int = NUM_CLASSES, train: int = 8, test: int = 4,
                       seed: int = 0) -> Path:
    """An image-folder data set root/{train,test}/<class>/*.png of 32x32 RGB images; each class
    has its own mean colour so that a model can learn something in a few steps."""
    g = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", train), ("test", test)):
        for c in range(num_classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = torch.tensor([25 * c, 255 - 25 * c, (80 * c) % 256]).view(3, 1, 1)
            for i in range(per_class):
                noise = torch.randint(-40, 41, (3, 32, 32), generator=g)
                write_png((colour + noise).clamp(0, 255).to(torch.uint8), folder / f"{i:03d}.png")
    return root


def write_cifar_pickles(root: Path, name: str, train_batches: int = 2, per_batch: int = 20, test: int = 10):
    """torchvision's pickled CIFAR layout with random images (no checksums match)."""
    import pickle

    import numpy as np

    folder_name, labels_key = {"cifar10": ("cifar-10-batches-py", "labels"),
                               "cifar100": ("cifar-100-python", "fine_labels")}[name]
    classes = 10 if name == "cifar10" else 100
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"data_batch_{i + 1}" for i in range(train_batches)] if name == "cifar10" else ["train"]
    written = {}
    for file, n in [*((f, per_batch) for f in files), ("test_batch" if name == "cifar10" else "test", test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 labels_key: rng.integers(0, classes, n).tolist()}
        (folder / file).write_bytes(pickle.dumps(batch))
        written[file] = batch
    names = [f"class{c}" for c in range(classes)]
    meta_file, names_key = ("batches.meta", "label_names") if name == "cifar10" else ("meta", "fine_label_names")
    (folder / meta_file).write_bytes(pickle.dumps({names_key: names}))
    return folder, written, names


def write_tiny_imagenet(root: Path, num_classes: int = 4, train: int = 6, val: int = 2, seed: int = 0) -> Path:
    """An ImageNet-style folder root/{train,val}/<wnid>/*.JPEG of small JPEGs of a few sizes
    (crops and resizes must cope), each class with its own mean colour."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", train), ("val", val)):
        for c in range(num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = torch.tensor([60 * c, 255 - 60 * c, 128]).view(3, 1, 1)
            for i in range(per_class):
                h, w = 36 + 4 * (i % 3), 44 - 4 * (i % 2)
                noise = torch.randint(-30, 31, (3, h, w), generator=g)
                image = (colour + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(image).save(folder / f"{c}_{i}.JPEG", format="JPEG")
    return root


def augmented_by_index(loader, epoch: int) -> dict:
    """sample index -> its augmented image in ``epoch`` (a SeededLoader; the loader yields the
    rows of its batch sampler's items in order)."""
    loader.set_epoch(epoch)
    order = [index for batch in loader.batches for _, _, index in batch]
    images = torch.cat([x for x, _ in loader])
    return dict(zip(order, images))


def agreement(a: dict, b: dict) -> float:
    """The share of samples augmented identically in two epochs or runs."""
    assert a.keys() == b.keys()
    return sum(torch.equal(a[i], b[i]) for i in a) / len(a)


def random_set(n: int, seed: int = 0, size: int = 32):
    """An ``ImageSet`` of ``n`` random uint8 images (targets 0..n-1)."""
    from utils.inputs import ImageSet

    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                    torch.arange(n))


def epochs_of(loader, *epochs):
    """Every batch of each epoch, as (images, targets) lists."""
    out = []
    for e in epochs:
        loader.set_epoch(e)
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out


def common_args(data_root, epochs: int = 1, **flags) -> list[str]:
    """The flags of a fast CPU run on the tiny data set; ``flags`` add or override
    (``batch_size=8`` -> ``--batch-size 8``)."""
    settings = {"dataset": "cifar10", "data_root": data_root, "epochs": epochs, "batch_size": 16,
                "device": "cpu", **flags}
    return [a for k, v in settings.items() for a in (flag(k), str(v))]


def script_env() -> dict:
    """The environment of a script run by the tests: one thread, and every HTTP(S) request sent
    to a closed local port, so that a download attempt fails at once and never reaches the network."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    dead = "http://127.0.0.1:9"
    env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead,
               no_proxy="", NO_PROXY="")
    return env


def script_command(script: str, *args) -> list[str]:
    return [sys.executable, str(REPO / script), *map(str, args)]


def run_script(script: str, *args, cwd=None, timeout: float = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repository, as a user would (``env``: variables
    added to ``script_env()``); returns the completed process (text stdout/stderr, returncode)."""
    return subprocess.run(script_command(script, *args), cwd=cwd or REPO, env={**script_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def run_inline(script: str, *args):
    """Run a script's ``main(argv)`` in this process (no interpreter start-up: for the tests
    that only need the run's files, or that watch its internals); returns its metrics."""
    return importlib.import_module(Path(script).stem).main([str(a) for a in args])


def file_hashes(*paths) -> dict:
    """SHA-256 of every file at or under ``paths`` (missing paths map to None): compare a
    snapshot before and after a command to show that it changed nothing."""
    out = {}
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return out


def kill_after_first_epoch(command: list, run_dir: Path, env: dict, timeout: float = 300, settle: float = 0.0):
    """Start ``command`` (its run folder ``run_dir``) and SIGKILL it once the state of epoch 1 is
    saved (``settle`` seconds later: into epoch 2's steps); check that it really was cut short."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not (run_dir / "state.pth").exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, f"no state.pth after {timeout:.0f} s"
            time.sleep(0.005)
        time.sleep(settle)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists(), "the run finished before it was killed"


def busy_batchnorm_model(seed: int, arch: str = "resnet18", num_classes: int = 10):
    """A random model in eval mode whose BatchNorm layers are far from the identity, so that a
    wrong use of their statistics or affine parameters shows (folding, vmapped ensembles)."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval().requires_grad_(False)


def error_of(ckpt, role: str, num_classes: int, images_u8: torch.Tensor, targets: torch.Tensor) -> float:
    """The error (percent) of the model saved at ``ckpt`` on uint8 CIFAR-sized images, computed
    here from the checkpoint alone: a run's reported metric recomputed outside the run."""
    from utils.checkpoint import load_model
    from utils.inputs import Normalize

    model, _ = load_model(ckpt, role, num_classes=num_classes, dataset="cifar10")
    with torch.no_grad():
        pred = model.eval()(Normalize()(images_u8)).argmax(1)
    return 100.0 * (pred != targets).double().mean().item()


def assert_figure(path, min_width: int = 300, min_height: int = 200):
    """A PNG figure that shows data: at least ``min_width`` x ``min_height`` pixels, and more
    than a blank canvas with axes (hundreds of pixels in colour, as matplotlib draws data, even a
    sparse scatter; axes, ticks and text are black or grey)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", path
        assert image.width >= min_width and image.height >= min_height, (path, image.size)
        rgb = np.asarray(image.convert("RGB")).astype(int)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 60).sum() >= 400, f"{path}: no data drawn in colour"


def assert_ok(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def assert_user_error(result, *words) -> str:
    """Exit code 2, no traceback, and exactly one "error:" line, the last one, with ``words``;
    returns that line."""
    assert result.returncode == 2, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    for word in words:
        assert word in lines[-1], f"{word!r} not in: {lines[-1]}"
    return lines[-1]


# The fixtures that train models (seconds each, once per session): a test that uses one is slow.
TRAINING_FIXTURES = {"old_ckpt", "new_ckpt", "gentle_refs", "tiny_sweep"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> Path:
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny-imagenet") / "data")


def train_reference(role: str, data_root: Path, tmp_path_factory) -> Path:
    """A reference model ("old" or "new") trained for one epoch on ``data_root``; its checkpoint."""
    out = tmp_path_factory.mktemp(role)
    assert_ok(run_script(f"train_{role}_model.py", *common_args(data_root), "--output-dir", out / "run",
                         "--save", out / f"ckpt_{role}.pth"))
    return out / f"ckpt_{role}.pth"


@pytest.fixture(scope="session")
def old_ckpt(tiny_data, tmp_path_factory) -> Path:
    """An old model (5 classes) trained for one epoch."""
    return train_reference("old", tiny_data, tmp_path_factory)


@pytest.fixture(scope="session")
def new_ckpt(tiny_data, tmp_path_factory) -> Path:
    """A new reference model (10 classes) trained for one epoch."""
    return train_reference("new", tiny_data, tmp_path_factory)


# The shared reference fixtures above train at lr 0.1 for a few steps, which leaves their
# BatchNorm statistics unsettled and their eval-mode logits huge (|z| ~ 1e5): fine for
# cross-entropy and KL, but the logit-matching terms of ELODI and *_LM would diverge, and a
# non-finite loss is blamed on them. These references train gently.
GENTLE = ("--lr", 0.01, "--batch-size", 32)


@pytest.fixture(scope="session")
def gentle_refs(tiny_data, tmp_path_factory):
    """(old checkpoint, new checkpoint, folder of a 2-member ensemble whose ckpt_0.pth is the new
    checkpoint), trained gently (GENTLE) for one epoch."""
    folder = tmp_path_factory.mktemp("gentle-refs")
    run_inline("train_old_model.py", *common_args(tiny_data), *GENTLE, "--save", folder / "old.pth",
               "--output-dir", folder / "old")
    for i in range(2):
        run_inline("train_new_model.py", *common_args(tiny_data), *GENTLE, "--seed", i,
                   "--save", folder / "ensemble" / f"ckpt_{i}.pth", "--output-dir", folder / f"new{i}")
    return folder / "old.pth", folder / "ensemble" / "ckpt_0.pth", folder / "ensemble"


@pytest.fixture
def fake_run():
    """Write a results.json like that of a finished run, without training: ``fake_run(folder,
    role="update", method=..., b=..., seed=..., old_ckpt=..., val={...}, setting={...}, nfr=..., ...)``;
    keyword arguments the function does not name become the test metrics."""
    import json

    def make(folder, role="update", method="MPT_KL", b=4.0, seed=42, dataset="cifar10",
             arch="resnet18", old_ckpt="checkpoint/ckpt_old.pth", checkpoint=None, val=None,
             config=None, setting=None, **metrics):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"dataset": dataset, "arch": arch, "seed": seed, "epochs": 1, "lr": 0.1,
               "output_dir": str(folder)}
        if role == "update":
            cfg.update(method=method, b=b, old_ckpt=str(old_ckpt), new_ckpt="checkpoint/ckpt_new.pth")
        cfg.update(config or {})
        results = {"role": role, **metrics, "checkpoint": str(checkpoint or folder / "checkpoint.pth"),
                   "config": cfg}
        if val is not None:
            results["val"] = val
        if setting is not None:
            results["setting"] = setting
        (folder / "results.json").write_text(json.dumps(results))
        return folder
    return make


@pytest.fixture(scope="session")
def tiny_sweep(tiny_data, tmp_path_factory) -> Path:
    """tools/sweep_b.sh over b in {0, 2} for MPT_KL: one-epoch runs of a --embed-dim 2 model with
    a --val-fraction 0.25 hold-out (so the sweep trains its own reference models on the same
    split, under refs/), then its tables, figure and selected b. Run from a folder other than the
    repository, as a user may."""
    work = tmp_path_factory.mktemp("sweep")
    env = dict(script_env(), BS="0 2", METHODS="MPT_KL", PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "sweep_b.sh"), str(work / "sweep"),
         *common_args(tiny_data, embed_dim=2, val_fraction=0.25)],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert_ok(proc)
    return work / "sweep"


@pytest.fixture
def call_script(capsys):
    """Run a script's ``main(argv)`` in this process, as its command line would (much faster than
    a subprocess when the command fails before training); returns a CompletedProcess."""
    def call(script: str, *args) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        module = importlib.import_module(Path(script).stem)
        capsys.readouterr()
        try:
            module.main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([script, *argv], code, out, err)
    return call
