"""matplotlib for the figures of tools/, imported only when a figure is drawn (a tool runs
without it otherwise) and without torch."""
from __future__ import annotations

import sys


def pyplot():
    """matplotlib's pyplot on a file-only backend; exit 2 with one line when it is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: the plots need matplotlib; install it with: pip install matplotlib", file=sys.stderr)
        sys.exit(2)
    return plt
