"""Lets `python bench/<script>.py` import the project from a checkout: puts the repository root on the path."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
