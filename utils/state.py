"""A run's resumable state: written atomically after every epoch, read and restored by --resume."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import atomic_save, atomic_write, unwrap
from utils.errors import UserError
from utils.settings import flag, run_settings

STATE_FILE = "state.pth"      # resumable state, rewritten after every epoch
LOG_FILE = "log.jsonl"        # one JSON record per epoch


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """The random states a run draws from: Python, NumPy, the CPU and this process's own GPU
    (only its own: a resume may see fewer GPUs, e.g. under another CUDA_VISIBLE_DEVICES)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)


def save_state(out_dir: Path, args, device, model, optimizer, scheduler, epoch: int, history: list,
               in_epoch: dict | None = None):
    """The resumable state after ``epoch`` (the last finished one; -1 for none), written
    atomically, and the log rewritten from it. ``in_epoch``: a state saved inside the next epoch
    ({"epoch", "step": the last step done, "sums": utils.engine.EpochSums.snapshot()})."""
    atomic_save({"config": run_settings(args), "epoch": epoch, "in_epoch": in_epoch,
                 "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng_state(device), "history": history},
                out_dir / STATE_FILE)
    write_log(out_dir, history)


def write_log(out_dir: Path, history: list):
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(out_dir / LOG_FILE, lambda f: f.write(text.encode()))


def read_state(out_dir: Path, args, required: bool = True) -> dict | None:
    """The state saved after the last finished epoch, for --resume, once its settings are
    checked against the command's; None where none is saved and none is ``required``."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        if not required:
            return None
        raise UserError(f"--resume: no saved state in {out_dir}; start the run without --resume "
                        "(or with --resume auto)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UserError(f"--resume: {path} is unreadable ({type(err).__name__}); "
                        "delete it to start the run again") from None
    saved, current = state["config"], run_settings(args)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{flag(k)} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise UserError(f"--resume: {out_dir} was run with other settings ({diffs}); "
                        "repeat the original command, or use another --output-dir")
    return state


def restore(state: dict, device, model, optimizer, scheduler) -> tuple[int, list, dict | None]:
    """Continue from a state of ``read_state``; returns (next epoch, history, the state saved
    inside that epoch or None)."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], device)
    return state["epoch"] + 1, state["history"], state.get("in_epoch")
