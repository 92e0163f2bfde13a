"""The run records committed under results/ are the README's evidence: they must read the same on
any clone, so no string in them may be a path of the machine that made them."""
import json
import os
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDS = sorted(RESULTS.rglob("results.json"))


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_there_are_committed_records():
    assert len(RECORDS) >= 10


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_records_hold_no_absolute_path(record):
    absolute = [s for s in strings(json.loads(record.read_text())) if os.path.isabs(s) or s.startswith("~")]
    assert not absolute, f"{record}: {absolute[:3]}"
