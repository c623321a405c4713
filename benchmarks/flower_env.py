"""Flower's own virtual environment for the W1 comparison, created on first use.

Flower (flwr[simulation] 1.41, which pins its own Ray) never enters the product's environment: it
gets benchmarks/.flower-venv (git-ignored) with the product's torch pin. On the project's machines
pip takes torch from local disk (a few minutes, once); elsewhere it downloads that release.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".flower-venv"
REQUIREMENTS = ("flwr[simulation]==1.41.0", "torch==2.14.1")  # torch: the product's pin (pyproject.toml)
STAMP = VENV / ".installed"


def flower_python(log=print) -> str:
    python = VENV / "bin" / "python"
    if STAMP.is_file() and STAMP.read_text().split() == list(REQUIREMENTS) and python.is_file():
        return str(python)
    log(f"creating Flower's environment in {VENV} ({', '.join(REQUIREMENTS)}); once, a few minutes")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    STAMP.write_text(" ".join(REQUIREMENTS) + "\n")
    return str(python)
