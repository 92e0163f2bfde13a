"""A run's settings as the command line names them: how a setting is spelt as a flag, and which
settings make a run's identity (its default folder's hash, the --resume check)."""
from __future__ import annotations

# Flags that do not change what a run computes: left out of the run's identity.
NOT_IDENTITY = {"config", "output_dir", "device", "workers", "resume", "log_every", "save",
                "eval_batch_size", "save_logits", "command", "dist_timeout", "save_every_steps"}


def flag(setting: str) -> str:
    """The flag of a setting (an attribute of the parsed arguments): lm_weight -> --lm-weight."""
    return "--" + setting.replace("_", "-")


def run_settings(args) -> dict:
    """The settings that define what a run computes."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IDENTITY}
