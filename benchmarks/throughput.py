"""Throughput of one update epoch (training + the per-epoch evaluation) on generated CIFAR-sized
data (100 classes, 32x32 uint8), in one process on the same data:

  baseline  official-style: per-image PIL DataLoader (--workers processes, respawned every
            epoch), fp32, old and new teachers on every step whatever the method, the loss read
            with .item() every step, the old model re-evaluated on the test set every epoch;
  engine    this repository: device-resident TrainLoader + train_one_epoch, only the teachers
            the method needs (prepared as the runner does), predict() for the evaluation, the
            old model's test predictions computed once before the timed epoch; timed in each
            --precision mode.

Teachers and the student have random weights. Each path gets a warm-up epoch on a few batches,
then the two paths' timed epochs alternate (--repeats each) and their medians are compared. Each
epoch's CPU time (this process and its data-loader workers) is printed too: on a shared machine
it varies much less with the other jobs than the wall-clock time. On a CPU shared with other
jobs, run with OMP_WAIT_POLICY=PASSIVE: the default spin-waiting of OpenMP threads whose cores
are taken can slow every step several-fold. The last line printed is ``speedup N.NNx``
(wall-clock, engine over baseline).

    python benchmarks/throughput.py --method MPT_KL [--device cuda] [--precision fp32|bf16|both]
                                    [--train-size N --test-size N]
    python benchmarks/throughput.py --ensemble    # ELODI's ensemble forward: batched vs a loop

Both paths use the scripts' own device setup (utils/device.py); every GPU clock is read after a
synchronisation.
"""
from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods import get_method, method_names  # noqa: E402
from models import build_model  # noqa: E402
from utils.batches import TrainLoader  # noqa: E402
from utils.data import num_old_classes  # noqa: E402
from utils.device import PRECISIONS, folds_teachers, prefers_channels_last, setup_device  # noqa: E402
from utils.engine import (  # noqa: E402
    EnsembleMean,
    Teachers,
    build_teachers,
    fold_batchnorm,
    predict,
    prepare_teacher,
    train_one_epoch,
)
from utils.inputs import CIFAR_MEAN, CIFAR_STD, ImageSet, Normalize, eval_batches  # noqa: E402
from utils.metrics import flip_metrics  # noqa: E402
from utils.pil_pipeline import official_transform  # noqa: E402

NUM_CLASSES = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="MPT_KL", choices=method_names())
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--precision", default="both", choices=[*PRECISIONS, "both"],
                   help="the engine's mode(s), as the scripts' --precision (the baseline is always fp32); "
                        "the last line's speedup is the default mode's (fp32)")
    p.add_argument("--fast", action="store_true", help="cuDNN autotuning, as the scripts' --fast")
    p.add_argument("--train-size", type=int, help="default: 50000 on CUDA, 2048 on the CPU")
    p.add_argument("--test-size", type=int, help="default: 10000 on CUDA, 1024 on the CPU")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=1024, help="the engine's; the baseline uses 100")
    p.add_argument("--workers", type=int, default=4, help="the baseline's data-loader processes")
    p.add_argument("--ensemble", action="store_true", help="time ELODI's ensemble forward instead")
    p.add_argument("--ensemble-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="--ensemble: forward passes per timed repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per path, alternating; medians compared")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.train_size = args.train_size or (50000 if cuda else 2048)
    args.test_size = args.test_size or (10000 if cuda else 1024)
    return args


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_peak() -> str:
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return (f"peak host memory: {self_mib:.0f} MiB in this process (both paths), "
            f"{children_mib:.0f} MiB in its largest child process (a data-loader worker, or one that "
            "importing torch starts)")


def reset_device_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_mib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def random_images(n: int, g: torch.Generator) -> ImageSet:
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, NUM_CLASSES, (n,), generator=g))


def random_model(arch: str, classes: int, device, seed: int):
    torch.manual_seed(seed)
    return build_model(arch, classes).to(device)


# ----------------------------------------------------------------------------------------------
# (a) The official-style baseline.
# ----------------------------------------------------------------------------------------------
class OfficialCIFAR(Dataset):
    """Like torchvision's CIFAR datasets: HWC uint8 arrays, one PIL image per item."""

    def __init__(self, data: ImageSet, transform):
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = data.targets.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.targets[i]


def baseline_epoch(model, optimizer, loss_fn, old, new, train: ImageSet, test: ImageSet, args, device,
                   num_old: int, epoch: int = 0):
    test_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train_loader = DataLoader(OfficialCIFAR(train, official_transform()), batch_size=args.batch_size,
                              shuffle=True, num_workers=args.workers)
    test_loader = DataLoader(OfficialCIFAR(test, test_transform), batch_size=100, shuffle=False,
                             num_workers=args.workers)
    model.train()
    train_loss = 0.0
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            old_logits, new_logits = old(x), new(x)
        logits = model(x)
        loss = loss_fn(logits, y, old_logits=old_logits, new_logits=new_logits, epoch=epoch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train_loss += loss.item()
    model.eval()
    pred, old_pred = [], []
    with torch.no_grad():
        for x, _ in test_loader:
            x = x.to(device)
            pred.append(model(x).argmax(1).cpu())
            old_pred.append(old(x).argmax(1).cpu())
    return flip_metrics(test.targets.numpy(), torch.cat(old_pred).numpy(), torch.cat(pred).numpy(), num_old)


# ----------------------------------------------------------------------------------------------
# (b) This repository's engine.
# ----------------------------------------------------------------------------------------------
def engine_epoch(model, optimizer, loss_fn, teachers, train: ImageSet, test: ImageSet, old_test_pred,
                 args, normalize, num_old: int, precision: str, epoch: int = 0):
    loader = TrainLoader(train, args.batch_size, args.seed, normalize)
    loader.set_epoch(epoch)
    train_one_epoch(model, loader, optimizer, loss_fn, teachers, epoch, precision=precision)
    pred = predict(model, eval_batches(test, args.eval_batch_size, normalize)).argmax(1).numpy()
    return flip_metrics(test.targets.cpu().numpy(), old_test_pred, pred, num_old)


def ensemble_members(args, device) -> list:
    return [prepare_teacher(random_model(args.arch, NUM_CLASSES, "cpu", args.seed + 10 + i), device)
            for i in range(args.ensemble_size)]


def cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the baseline's
    data-loader workers, which exit at the end of each epoch)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage,
                                                    (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def repeat(teacher, x, precision: str, steps: int) -> list:
    """``steps`` forward passes of ``teacher`` on ``x``."""
    return [teacher(x, precision) for _ in range(steps)]


def timed(fn, device) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of ``fn()``. On a shared machine the CPU time, the work
    done, varies much less with the other jobs than the wall-clock time does."""
    sync(device)
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    sync(device)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def student(args, device, initial: dict, channels_last: bool = False):
    """The updated model, from the same initial weights for both paths, and its optimiser."""
    model = random_model(args.arch, NUM_CLASSES, device, args.seed)
    model.load_state_dict(initial)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def setup_baseline(args, device, loss_fn, num_old: int, initial: dict):
    """(a) plain fp32 teachers, both always (the ensemble as the new one where the method has one)."""
    old = random_model(args.arch, num_old, device, args.seed + 1).eval()
    if "ensemble" in loss_fn.references:
        new = EnsembleMean([random_model(args.arch, NUM_CLASSES, device, args.seed + 10 + i).eval()
                            for i in range(args.ensemble_size)])
    else:
        new = random_model(args.arch, NUM_CLASSES, device, args.seed + 2).eval()
    model, optimizer = student(args, device, initial)
    return lambda train, test: baseline_epoch(model, optimizer, loss_fn, old, new, train, test, args,
                                              device, num_old)


def setup_engine(args, device, loss_fn, num_old: int, initial: dict, test: ImageSet, precision: str):
    """(b) set up as the scripts are (utils/runner.py's load_references, utils/device.py's policy);
    the old model's test predictions once, untimed."""
    fast, channels_last = folds_teachers(device, precision), prefers_channels_last(device)
    normalize = Normalize(channels_last=channels_last)
    old = prepare_teacher(random_model(args.arch, num_old, "cpu", args.seed + 1), device)
    uses = loss_fn.references
    new = prepare_teacher(random_model(args.arch, NUM_CLASSES, "cpu", args.seed + 2), device) if "new" in uses else None
    members = ensemble_members(args, device) if "ensemble" in uses else []
    teachers = build_teachers(uses, fast, old, new, members)
    test = test.to(device)
    old_test_pred = predict(old, eval_batches(test, args.eval_batch_size, normalize)).argmax(1).numpy()
    model, optimizer = student(args, device, initial, channels_last=channels_last)

    def epoch(train: ImageSet, test: ImageSet):
        # .to() is a no-op for the timed, device-resident sets; the warm-up test set is a
        # prefix of the test set.
        return engine_epoch(model, optimizer, loss_fn, teachers, train.to(device), test.to(device),
                            old_test_pred[:len(test)], args, normalize, num_old, precision)
    return epoch


def epoch_benchmark(args, device):
    g = torch.Generator().manual_seed(args.seed)
    train, test = random_images(args.train_size, g), random_images(args.test_size, g)
    num_old = num_old_classes(NUM_CLASSES, 0.5)
    loss_fn = get_method(args.method, num_old=num_old)
    print(f"device {device} ({torch.get_num_threads()} CPU threads) | {args.arch} | {args.method} "
          f"(teachers: {', '.join(sorted(loss_fn.references)) or 'none'}) | {args.train_size} train / "
          f"{args.test_size} test images, batch {args.batch_size} | {args.repeats} repeats")
    initial = random_model(args.arch, NUM_CLASSES, "cpu", args.seed).state_dict()
    base = "baseline (official-style)"
    precisions = PRECISIONS if args.precision == "both" else (args.precision,)
    engines = {p: f"engine --precision {p}" for p in precisions}
    paths = {base: setup_baseline(args, device, loss_fn, num_old, initial),
             **{name: setup_engine(args, device, loss_fn, num_old, initial, test, p) for p, name in engines.items()}}
    warm_train = ImageSet(train.images[:2 * args.batch_size], train.targets[:2 * args.batch_size])
    warm_test = ImageSet(test.images[:100], test.targets[:100])
    train_d, test_d = train.to(device), test.to(device)
    data = {name: (train, test) if name == base else (train_d, test_d) for name in paths}
    walls, cpus, device_peak = {name: [] for name in paths}, {name: [] for name in paths}, {}
    for epoch in paths.values():
        epoch(warm_train, warm_test)
    # Alternating the paths spreads slow drifts of a shared machine's load over all of them.
    for _ in range(args.repeats):
        for name, epoch in paths.items():
            reset_device_peak(device)
            wall, cpu = timed(functools.partial(epoch, *data[name]), device)
            walls[name].append(wall)
            cpus[name].append(cpu)
            device_peak[name] = max(device_peak.get(name, 0), device_peak_mib(device))
    wall, cpu = ({name: statistics.median(t) for name, t in d.items()} for d in (walls, cpus))
    for name in paths:
        memory = f" | peak device {device_peak[name]:.0f} MiB" if device.type == "cuda" else ""
        print(f"{name:26s} {wall[name]:6.2f} s median of [{', '.join(f'{x:.2f}' for x in walls[name])}], "
              f"{args.train_size / wall[name]:.1f} images/s | {cpu[name]:.2f} CPU-s{memory}")
    print(host_peak())
    # The default mode's speedup comes last, where scripts read it.
    for p in sorted(precisions, key=lambda p: p == "fp32"):
        print(f"CPU-time ratio {p} {cpu[base] / cpu[engines[p]]:.2f}x")
        print(f"speedup {p} {wall[base] / wall[engines[p]]:.2f}x")
    print(f"speedup {wall[base] / wall[engines[precisions[0] if len(precisions) == 1 else 'fp32']]:.2f}x")


def ensemble_benchmark(args, device):
    """ELODI's teacher step, the ensemble-mean logits of one training batch: a loop over the
    members against one vmapped computation (EnsembleMean(batched=True))."""
    precision = "bf16" if args.precision == "both" else args.precision
    fast = folds_teachers(device, precision)
    members = [fold_batchnorm(m) if fast else m for m in ensemble_members(args, device)]
    teachers = {"loop": Teachers(new=EnsembleMean(members)),
                "batched": Teachers(new=EnsembleMean(members, batched=True))}
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    if prefers_channels_last(device):
        x = x.contiguous(memory_format=torch.channels_last)
    print(f"device {device} ({torch.get_num_threads()} CPU threads) | --precision {precision} | "
          f"{args.ensemble_size} x {args.arch} "
          f"ensemble | batch {args.batch_size} | {args.repeats} x {args.steps} steps")
    logits = {name: teacher(x, precision)["new_logits"] for name, teacher in teachers.items()}  # warm-up
    times, device_peak = {name: [] for name in teachers}, {}
    for _ in range(args.repeats):
        for name, teacher in teachers.items():
            reset_device_peak(device)
            wall, _ = timed(functools.partial(repeat, teacher, x, precision, args.steps), device)
            times[name].append(wall / args.steps)
            device_peak[name] = max(device_peak.get(name, 0), device_peak_mib(device))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in teachers:
        memory = f" | peak device {device_peak[name]:.0f} MiB" if device.type == "cuda" else ""
        print(f"{name:8s} {1000 * median[name]:8.1f} ms/step median, "
              f"{args.batch_size / median[name]:.1f} images/s{memory}")
    print(f"max |batched - loop| = {(logits['batched'] - logits['loop']).abs().max().item():.2e}")
    print(host_peak())
    print(f"speedup {median['loop'] / median['batched']:.2f}x")


def main(argv=None):
    args = parse_args(argv)
    device = setup_device(args.device, args.fast)  # the scripts' own device setup
    (ensemble_benchmark if args.ensemble else epoch_benchmark)(args, device)


if __name__ == "__main__":
    main()
