"""The built-in studies are study files (studies/*.yaml) that plan exactly what their Python
definitions planned (tests/golden/studies.json): the same cells in the same order, recording the
same factors, each with the same validated config, the same space in the same order, budget,
objectives and scheduler. Same plan and same sampler seed give the same trials."""
import json
from pathlib import Path

import pytest

from tests.study_golden import describe, data_dir_for

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "studies.json").read_text())


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_study_file_plans_what_the_python_study_planned(key, tmp_path):
    name, profile, *controls = key.split("/")
    path = ROOT / "studies" / f"{name}.yaml"
    got = describe(str(path), profile, bool(controls), data_dir_for(name, profile, tmp_path))
    want = GOLDEN[key]
    assert [c["name"] for c in got["cells"]] == [c["name"] for c in want["cells"]]
    for g, w in zip(got["cells"], want["cells"]):
        assert g == w, g["name"]
    assert {k: v for k, v in got.items() if k != "cells"} == {k: v for k, v in want.items() if k != "cells"}
