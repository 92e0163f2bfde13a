"""User-facing errors: one line, exit code 2, no traceback; and warnings, one line each."""
import os
import sys
import time
from functools import wraps

# Under torchrun a process other than rank 0 waits this long before it prints its error. Most
# mistakes every process meets alike (they read the same command and files): rank 0 prints it
# and exits, and torchrun stops the others while they wait, so the error is printed once. A
# mistake that only some processes meet (an image of their shard) is still printed, this late.
OTHER_RANKS_WAIT_S = 10.0


class UserError(Exception):
    """A mistake in the command or its inputs; the message says what is wrong and what to do."""


def exit_on_user_error(main):
    """Run ``main``; a UserError becomes a one-line message on stderr and exit code 2.
    Other exceptions are bugs and keep their traceback."""
    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            rank = _rank()
            if rank:
                time.sleep(OTHER_RANKS_WAIT_S)
            print(f"{f'[rank {rank}] ' if rank else ''}error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
    return wrapper


def listing(names, most: int = 10) -> str:
    """``names`` for a message: the first ``most`` of them, then " ..." where there are more."""
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def warn(message: str):
    """One line on stderr; under torchrun from rank 0 alone (every process meets the same)."""
    if _rank() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _rank() -> int:
    """This process's rank under torchrun (0 in a single process), read from the environment:
    errors and warnings may come before the process group starts."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
