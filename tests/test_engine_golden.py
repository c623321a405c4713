"""The engine computes what it computed before its refactor: for every built-in method (and both
executors where both run it), a short fixed-seed run's per-round metrics and final model, against
tests/golden/engine.json (recorded by tests/engine_golden.py, which says when and how to re-record).

Bit for bit where torch runs the kernels the recording ran (same CPU capability and torch release);
elsewhere the last bits of a float may differ, and the metrics and the model's norm are compared to
float32 rounding instead."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedcore.methods import METHODS
from tests.engine_golden import cases, run_case

GOLDEN = json.loads((Path(__file__).parent / "golden" / "engine.json").read_text())
SAME_KERNELS = (GOLDEN["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
                and GOLDEN["torch"] == torch.__version__)


def test_every_method_and_case_is_recorded():
    assert set(cases()) == set(GOLDEN["cases"]), "a new method or case: record it (tests/engine_golden.py)"
    assert {name.rsplit("-", 1)[0] for name in GOLDEN["cases"]} == set(METHODS)


@pytest.mark.parametrize("name", sorted(cases()))
def test_the_engine_computes_the_recorded_run(name):
    want, got = GOLDEN["cases"][name], json.loads(json.dumps(run_case(cases()[name])))
    assert [sorted(r) for r in got["rounds"]] == [sorted(r) for r in want["rounds"]], "the metric keys changed"
    for t, (g, w) in enumerate(zip(got["rounds"], want["rounds"]), 1):
        for key, value in w.items():
            if value is None or not SAME_KERNELS:
                assert (g[key] is None) == (value is None) and (value is None or g[key] == pytest.approx(
                    value, rel=1e-4, abs=1e-6)), f"round {t}: {key}"
            else:
                assert g[key] == value, f"round {t}: {key} is {g[key]!r}, recorded {value!r}"
    if SAME_KERNELS:
        assert got["model_sha256"] == want["model_sha256"], "the final model differs from the recorded one"
    else:
        assert math.isclose(got["model_sq_norm"], want["model_sq_norm"], rel_tol=1e-4)
