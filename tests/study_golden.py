"""What a built-in study plans, as plain data: its cells (names, recorded factors), every cell's
config overrides and tuned space, its budget, objectives and scheduler, per profile.

tests/golden/studies.json holds this for the five studies as they were defined in Python, recorded
at commit 69c057f (their definitions as at 982cd10, apart from --data-dir now reaching fed_lpfm's and
fedpurel's smoke profiles), before they became study files; test_study_files.py checks that the
files plan exactly the same. (Smoke launches at 982cd10 and after the change gave identical trials.)
Re-recorded on purpose since: fairness_paradox's local profile, re-sized for 2 CPU cores (issue 16), twice
(the second time to 24 tokens and 7 MiniLM steps, to fit 90 minutes with --controls).

    python -m tests.study_golden > tests/golden/studies.json   # only to re-record, on purpose
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from search_spaces.distributions import format_distribution

CONTROLLED = ("fairness_paradox", "fed_lpfm", "fedpurel")
DATA = "<DATA>"  # the --data-dir of the image profiles, which the golden file cannot hold


def data_dir_for(study: str, profile: str, root: Path) -> str | None:
    """A folder with the layout a paper profile reads (nothing for the others)."""
    from tests.conftest import image_folders

    if profile != "paper" or study in ("fairness_paradox", "rank_collapse"):
        return None
    d = root / f"{study}-data"
    if not d.exists():
        if study == "lora_fair":
            image_folders(d, ("cat", "dog"), 1, ("clipart", "real"))
        else:
            image_folders(d, [f"c{i}" for i in range(10)], 1)
    return str(d)


def describe(study_name: str, profile_name: str, controls: bool, data_dir: str | None) -> dict:
    from sweeps.launch import find_study, plan
    from sweeps.studies import get_profile
    from fedcore.resolve import make_config

    study = find_study(study_name, profile_name, controls)
    profile = get_profile(study, profile_name, data_dir)
    args = argparse.Namespace(controls=controls, cells=None, device="cpu", set=[], space=[])
    entries = plan(args, study, profile)

    def clean(value):
        text = json.dumps(value, sort_keys=True, default=str)
        return json.loads(text.replace(data_dir, DATA) if data_dir else text)

    plain_model = make_config().model  # the default model, its tuning resolved (textcnn: full)

    def config_of(cfg):
        out = cfg.model_dump(mode="json", exclude_defaults=True)
        if cfg.model == plain_model:  # a resolved default is a default (as this file was recorded)
            out.pop("model", None)
        return clean(out)
    # what a trial runs: the validated config (where it differs from the defaults; the space's keys at
    # its probe values) and the space, in order (each cell's sampler draws in that order)
    return {
        "num_samples": profile.num_samples, "seeds": profile.seeds,
        "grace_rounds": profile.grace_rounds, "objectives": list(study.objectives), "asha_metric": study.asha_metric,
        "cpus_per_trial": profile.cpus_per_trial, "gpus_per_trial": profile.gpus_per_trial,
        "zero_shot_row": study.zero_shot_row, "data_files": list(profile.data_files),
        "cells": [{"name": e["name"], "cell": clean(e["cell"]), "rounds": e["overrides"]["rounds"],
                   "config": config_of(e["cfg"]),
                   "space": [[k, format_distribution(d)] for k, d in e["space"].items()]} for e in entries],
    }


def record(root: Path) -> dict:
    from sweeps.studies import builtin_studies
    from sweeps.study_file import read

    out = {}
    for name, path in builtin_studies().items():
        for profile in read(path)[0]["profiles"]:
            for controls in (False, True) if name in CONTROLLED else (False,):
                key = f"{name}/{profile}" + ("/controls" if controls else "")
                out[key] = describe(name, profile, controls, data_dir_for(name, profile, root))
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        golden = record(Path(d))
    # one study/profile a line: a change shows as the lines it touches
    print("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(golden.items()))
          + "\n}")
