"""The cluster files: the `ray up` file is valid for Ray's own schema and keeps token authentication
on; the `ray submit` entry script refuses, with one line, what would break a cluster run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "sweeps" / "cluster"


def test_cluster_yaml_follows_rays_schema_and_keeps_auth_on():
    import jsonschema  # a dependency of ray
    import ray.autoscaler

    config = yaml.safe_load((CLUSTER / "gpu_cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "disabled" not in start
    assert "--dashboard-host=127.0.0.1" in start and "--num-gpus=0" in start
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"GPU": 0}


@pytest.mark.parametrize("env, message", [
    ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled: this cluster runs with token authentication"),
    ({"RAY_AUTH_TOKEN": "t"}, "FEDSWEEP_STORAGE is not set"),
    ({"RAY_AUTH_TOKEN": "t", "FEDSWEEP_STORAGE": "runs"}, "a path must be absolute and mounted on every node"),
    ({"RAY_AUTH_TOKEN": "t", "FEDSWEEP_STORAGE": "s3://YOUR-BUCKET/x"}, "replace the placeholder bucket"),
])
def test_entry_script_refuses_bad_setups(env, message):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "FEDSWEEP_"))}
    out = subprocess.run([sys.executable, str(CLUSTER / "run_study.py"), "fairness_paradox", "--profile", "paper"],
                         env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_entry_script_sets_address_storage_and_tracking_itself():
    out = subprocess.run([sys.executable, str(CLUSTER / "run_study.py"), "fairness_paradox", "--storage", "/x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--storage is set by this script" in out.stderr
