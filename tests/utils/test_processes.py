"""What each of several processes does on its own, without starting any: the GPU it takes (and
the one-line error where a node has fewer GPUs than processes), the process group bound to that
GPU, progress bars on rank 0 only, the fewest samples a step may give a process, and a user
error printed by rank 0 at once, by another rank only after torchrun had time to stop it."""
import datetime

import pytest
import torch
from torch import nn

import utils.cli
import utils.distributed
import utils.engine
import utils.errors
from utils.device import local_gpu
from utils.engine import min_share, progress
from utils.errors import UserError, exit_on_user_error


@pytest.fixture
def node(monkeypatch):
    """``node(gpus, local_rank, processes)``: the torchrun variables of one process, and the GPUs
    it sees."""
    def set_up(gpus: int, local_rank: int, processes: int):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus))))
    return set_up


def test_each_process_takes_the_gpu_of_its_local_rank(node):
    node(gpus=4, local_rank=3, processes=4)
    assert local_gpu() == 3


@pytest.mark.parametrize("local_rank", [0, 2])
def test_more_processes_than_gpus_is_one_error_on_every_process_of_the_node(node, local_rank):
    """Rank 0 meets it too (LOCAL_RANK 0 has a GPU), so that it prints it once for all."""
    node(gpus=2, local_rank=local_rank, processes=3)
    with pytest.raises(UserError) as err:
        local_gpu()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("3 processes on this node (LOCAL_RANK up to 2) but only 2 GPU(s) visible "
                              "(CUDA_VISIBLE_DEVICES=0,1)")
    assert message.endswith("start at most 2 per node (torchrun --nproc-per-node 2)")


def test_no_gpu_at_all_is_a_user_error(node):
    node(gpus=0, local_rank=0, processes=1)
    with pytest.raises(UserError, match="--device cuda, but this process sees no CUDA GPU"):
        local_gpu()


def test_the_process_group_is_bound_to_the_process_gpu_with_the_timeout_given(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(utils.distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(utils.distributed.dist, "init_process_group", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(utils.distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(utils.distributed.dist, "get_world_size", lambda: 2)
    gpu = torch.device("cuda", 1)
    assert utils.distributed.init(gpu, timeout_minutes=5) == (1, 2)
    assert utils.distributed.init(torch.device("cpu"), timeout_minutes=0.5) == (1, 2)
    assert calls == [(("nccl",), {"device_id": gpu, "timeout": datetime.timedelta(minutes=5)}),
                     (("gloo",), {"timeout": datetime.timedelta(seconds=30)})]


@pytest.mark.parametrize("main, shown", [(True, True), (False, False)])
def test_progress_bars_on_rank_0_only(monkeypatch, main, shown):
    monkeypatch.setattr(utils.engine.sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(utils.engine, "is_main", lambda: main)
    bar = progress(range(3))
    assert bar.disable is not shown
    bar.close()


def test_a_process_may_hold_one_sample_unless_its_batchnorm_has_its_own_statistics():
    assert min_share(nn.Linear(4, 2)) == 1
    assert min_share(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))) == 2
    assert min_share(nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)))) == 1


@exit_on_user_error
def failing_command():
    raise UserError("the data set is missing")


@pytest.mark.parametrize("rank, line, waited", [
    (0, "error: the data set is missing", []),
    # Printed only if torchrun has not stopped this process meanwhile (rank 0 met no such error).
    (2, "[rank 2] error: the data set is missing", [utils.errors.OTHER_RANKS_WAIT_S]),
])
def test_a_user_error_is_printed_by_rank_0_and_late_by_the_others(monkeypatch, capsys, rank, line, waited):
    slept = []
    monkeypatch.setattr(utils.errors.time, "sleep", slept.append)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", str(rank))
    with pytest.raises(SystemExit) as exit_info:
        failing_command()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert slept == waited


@pytest.mark.parametrize("world, rank, printed", [("1", "0", True), ("3", "0", True), ("3", "2", False)])
def test_a_warning_is_printed_by_rank_0_alone(monkeypatch, capsys, world, rank, printed):
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", rank)
    utils.errors.warn("--method PCT_KL takes no --b")
    assert capsys.readouterr().err.splitlines() == (["warning: --method PCT_KL takes no --b"] if printed else [])


@pytest.mark.parametrize("cpus, local_world, workers", [(16, 2, 7), (64, 1, 8), (2, 4, 1), (2, 1, 1), (9, 1, 8)])
def test_default_workers_share_the_cpus_among_the_node_s_processes(monkeypatch, cpus, local_world, workers):
    monkeypatch.setattr(utils.cli.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    assert utils.cli.default_workers() == workers
