"""Put the repository root on sys.path so that the tests can import its packages."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
