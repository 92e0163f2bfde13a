"""User-facing errors: one line, exit code 2, no traceback; and warnings, one line each."""
import os
import sys
from functools import wraps


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
            # Under torchrun every rank may fail: say which one (the others are often the same).
            rank = f"[rank {os.environ.get('RANK', '?')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
            print(f"{rank}error: {err}", file=sys.stderr)
            sys.exit(2)
    return wrapper


def warn(message: str):
    print(f"warning: {message}", file=sys.stderr)
