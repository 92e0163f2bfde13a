"""The lean teachers: ELODI's ensemble as one vmapped computation, and BatchNorm folding."""
import pytest
import torch
from torch import nn

from conftest import busy_batchnorm_model
from utils.engine import EnsembleMean, Teachers, fold_batchnorm, prepare_teacher


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


def test_prepared_teachers_fold_and_batch_together():
    """The runner's CUDA recipe, on the CPU: folded members, then a batched ensemble."""
    raw = [member(seed) for seed in range(2)]
    prepared = [prepare_teacher(member(seed), torch.device("cpu"), fast=True) for seed in range(2)]
    x = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(EnsembleMean(prepared, batched=True)(x), EnsembleMean(raw)(x),
                                   atol=1e-4, rtol=0)
