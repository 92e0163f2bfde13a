"""The lean teachers (ELODI's ensemble as one vmapped computation, BatchNorm folding) and one
training epoch in one process: its mean loss and error, its first non-finite step, warm-up."""
import pytest
import torch
from torch import nn

from conftest import busy_batchnorm_model
from methods import get_method
from utils.batches import TrainLoader
from utils.engine import (
    EnsembleMean,
    NonFiniteLoss,
    Teachers,
    build_teachers,
    fold_batchnorm,
    prepare_teacher,
    train_one_epoch,
)
from utils.inputs import ImageSet, no_transform
from utils.runner import warmup


def member(seed: int, num_classes: int = 10, arch: str = "resnet18") -> nn.Module:
    return busy_batchnorm_model(seed, arch, num_classes)


@pytest.fixture(scope="module")
def members():
    return [member(seed) for seed in range(3)]


def inputs(n: int = 4, seed: int = 0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_batched_ensemble_equals_the_loop(members):
    x = inputs()
    with torch.inference_mode():
        loop = EnsembleMean(members)(x)
        batched = EnsembleMean(members, batched=True)(x)
        by_hand = torch.stack([m(x) for m in members]).mean(0)
    assert batched.shape == loop.shape == (4, 10) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
    torch.testing.assert_close(loop, by_hand, atol=1e-5, rtol=0)


def test_batched_ensemble_through_teachers_leaves_the_members_alone(members):
    """In eval mode BatchNorm must not update running statistics, batched or not."""
    before = [m.state_dict()["backbone.bn1.running_mean"].clone() for m in members]
    ensemble = EnsembleMean(members, batched=True)
    out = Teachers(new=ensemble)(inputs(), "fp32")["new_logits"]
    assert out.shape == (4, 10) and not out.requires_grad
    for m, b in zip(members, before):
        assert torch.equal(m.state_dict()["backbone.bn1.running_mean"], b)
    assert all(not t.requires_grad for t in ensemble.buffers())
    # The meta-device skeleton is no part of the module's state.
    assert all(t.device.type == "cpu" for t in ensemble.state_dict().values())


def test_batched_ensemble_moves_with_to(members):
    """The stacked weights are the module's buffers: .to() converts them."""
    ensemble = EnsembleMean(members, batched=True).to(torch.float64)
    assert all(t.dtype == torch.float64 for t in ensemble.buffers() if t.is_floating_point())
    x = inputs().double()
    with torch.inference_mode():
        expected = torch.stack([member(seed).double()(x) for seed in range(3)]).mean(0)
        torch.testing.assert_close(ensemble(x), expected.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet18_cifar"])
def test_folded_batchnorm_gives_the_same_logits(arch):
    model = member(0, arch=arch)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())   # the original is kept
    x = inputs(8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=0)


def test_folding_keeps_a_prepared_teachers_memory_format_and_inference_state():
    """build_teachers folds models prepared once: the copy must stay as prepared (on CUDA,
    channels-last), else a folded teacher would convert every batch."""
    prepared = member(0).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(prepared)
    weights = [p for p in folded.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())


def test_teachers_are_the_prepared_models_unless_folded():
    old, new = member(0, num_classes=5), member(1)
    plain = build_teachers({"old", "new"}, False, old, new)
    assert plain.old is old and plain.new is new     # the scored old model is the teacher
    folded = build_teachers({"old", "new"}, True, old, new)
    assert folded.old is not old and not any(isinstance(m, nn.BatchNorm2d) for m in folded.old.modules())


def test_prepared_teachers_fold_and_batch_together():
    """The runner's CUDA recipe, on the CPU: folded members, then a batched ensemble."""
    raw = [member(seed) for seed in range(2)]
    prepared = [fold_batchnorm(prepare_teacher(member(seed), torch.device("cpu"))) for seed in range(2)]
    x = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(EnsembleMean(prepared, batched=True)(x), EnsembleMean(raw)(x),
                                   atol=1e-4, rtol=0)


# --- train_one_epoch, in one process --------------------------------------------------------
def feature_loader(features: torch.Tensor, targets: torch.Tensor, batch_size: int = 8) -> TrainLoader:
    """Shuffled unaugmented batches of ``features`` (as the --freeze-backbone cache feeds a head)."""
    return TrainLoader(ImageSet(features, targets), batch_size, seed=3, normalize=no_transform, augment=False)


def linear_problem(n: int = 30, dims: int = 5, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, dims, generator=g), torch.randint(0, classes, (n,), generator=g), nn.Linear(dims, classes)


def test_an_epoch_reports_the_mean_loss_and_training_error_over_its_samples():
    """At lr 0 the model stays fixed, so the epoch's mean loss and error are those of the whole
    set: 30 samples in batches of 8, 8, 8, 6 (the short last batch weighs 6 / 30)."""
    x, y, model = linear_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, feature_loader(x, y), optimizer, get_method("No_Treatment"), Teachers(), 0,
                            log_every=2)
    with torch.no_grad():
        logits = model(x)
    assert stats["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert stats["terms"]["ce"] == pytest.approx(stats["loss"], rel=1e-12)
    assert stats["train_er"] == pytest.approx(100.0 * (logits.argmax(1) != y).float().mean().item())


def test_the_first_non_finite_step_is_named_with_its_terms():
    x, y, model = linear_problem()
    loader = feature_loader(x, y)
    order = loader.epoch_randomness()[0]
    x[order[19]] = float("nan")    # the 20th sample of the epoch: step 2 (0-based) in batches of 8
    with pytest.raises(NonFiniteLoss) as err:
        train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), get_method("No_Treatment"),
                        Teachers(), 0, log_every=100)
    assert (err.value.epoch, err.value.step) == (0, 2)
    assert list(err.value.terms) == ["ce"] and not torch.isfinite(torch.tensor(err.value.terms["ce"]))


def test_warm_up_scales_each_step_and_leaves_the_schedule_its_own_rate():
    x, y, model = linear_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    used = []
    optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["lr"]))
    loader = feature_loader(x, y)   # 4 steps an epoch
    for epoch in (0, 1):
        train_one_epoch(model, loader, optimizer, get_method("No_Treatment"), Teachers(), epoch,
                        lr_scale=warmup(1.5, epoch, len(loader)))
        assert optimizer.param_groups[0]["lr"] == 0.4
    assert used == pytest.approx([0.4 * k / 6 for k in range(1, 7)] + [0.4, 0.4])
    assert warmup(1.5, 2, 4) is None and warmup(0, 0, 4) is None
