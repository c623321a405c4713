"""Faults a cluster inflicts on a launch, with real processes and real signals: SIGTERM and SIGKILL of
the driver, a second driver on one launch, and what MLflow holds afterwards (sweeps/guards.py,
sweeps/tracking.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sweeps.guards import LaunchLock, cluster_fits, wait_until_placeable


def _hold_lock(tune_dir) -> subprocess.Popen:
    """Another process that holds the launch lock of `tune_dir` until killed."""
    code = ("import sys, time; from sweeps.guards import LaunchLock; LaunchLock(sys.argv[1]).acquire('x'); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tune_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_refuses_a_second_driver_and_goes_with_a_killed_one(tmp_path):
    holder = _hold_lock(tmp_path / "launch")
    try:
        with pytest.raises(ValueError, match=rf"launch L1 is running in another driver \(pid {holder.pid} on "):
            LaunchLock(str(tmp_path / "launch")).acquire("L1")
        assert LaunchLock(str(tmp_path / "launch")).may_be_running()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = LaunchLock(str(tmp_path / "launch"))
    assert not lock.may_be_running()
    lock.acquire("L1")  # SIGKILL released it
    lock.release()
    assert LaunchLock("s3://bucket/launch").may_be_running()  # remote: cannot tell, so it may be


def test_abandoned_launches_are_marked_killed_with_their_running_trials(tmp_path):
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import mark_abandoned, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    dead_dir, live_dir = tmp_path / "dead", tmp_path / "live"
    exp, dead = start_parent_run(uri, "toy", "smoke", ["toy"], str(dead_dir), str(tmp_path))
    _, live = start_parent_run(uri, "toy", "smoke", ["toy"], str(live_dir), str(tmp_path))
    trial = client.create_run(exp, tags={"mlflow.parentRunId": dead}).info.run_id
    done = client.create_run(exp, tags={"mlflow.parentRunId": dead}).info.run_id
    client.set_terminated(done, "FINISHED")
    live_trial = client.create_run(exp, tags={"mlflow.parentRunId": live}).info.run_id
    holder = _hold_lock(live_dir)
    try:
        marked = mark_abandoned(uri, "toy", lambda run: LaunchLock(run.data.tags["tune_dir"]).may_be_running())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert marked == [dead]
    status = {r: client.get_run(r).info.status for r in (dead, trial, done, live, live_trial)}
    assert status == {dead: "KILLED", trial: "KILLED", done: "FINISHED", live: "RUNNING", live_trial: "RUNNING"}
    assert mark_abandoned(uri, "no_such_study", lambda run: False) == []


def test_placement_wait_says_what_no_node_has():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert cluster_fits({"cpu": 1.0, "gpu": 0.0}, nodes) is None
    why = cluster_fits({"cpu": 1.0, "gpu": 0.25}, nodes)
    assert why == "each trial asks for 1 CPU and 0.25 GPU, and the largest of the cluster's 1 node(s) has 2 CPU and 0 GPU"
    with pytest.raises(ValueError, match=r"no node of the cluster can run a trial after 0 s: each trial asks"):
        wait_until_placeable({"cpu": 1.0, "gpu": 0.25}, lambda: nodes, timeout_s=0)
    # a node that joins while it waits (an autoscaler's) ends the wait
    calls = []

    def growing():
        calls.append(1)
        return nodes + ([{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}] if len(calls) > 1 else [])
    wait_until_placeable({"cpu": 1.0, "gpu": 0.25}, growing, timeout_s=30, poll_s=0.01)
    assert len(calls) == 2


def _mlflow(db):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("fairness_paradox")
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return (client, [r for r in runs if r.data.tags.get("kind") == "launch"],
            [r for r in runs if r.data.tags.get("kind") != "launch"])


def _until_done(proc, k: int, seen: list[str], timeout: float = 300) -> set[str]:
    """Read the launch's progress until k more trials are done; their ids."""
    done, deadline = set(), time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if "] trial" in line and ": done" in line:
            done.add(line.split("trial ")[1].split(":")[0])
            if len(done) >= k:
                return done
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError("the launch ended first:\n" + "".join(seen))


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_loses_nothing_and_repeats_nothing(tmp_path):
    """SIGTERM stops a launch as Ctrl-C does; a resumed driver killed with SIGKILL (two trials running)
    leaves a launch that a second driver may not take while a third resumes it; at the end every
    trial has exactly one MLflow run, FINISHED, each round logged once, and the report reads it."""
    db = tmp_path / "mlflow.db"
    args = [sys.executable, "-m", "sweeps.launch", "fairness_paradox", "--cells", "textcnn-a0.1-fedavg$",
            "--num-samples", "3", "--seeds", "3", "--max-concurrent", "2", "--storage", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{db}"]
    pop = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: list[str] = []

    first = subprocess.Popen(args, **pop)
    done = _until_done(first, 1, seen)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 130, err[-3000:]
    _, parents, _ = _mlflow(db)
    assert [p.info.status for p in parents] == ["KILLED"]

    second = subprocess.Popen(args + ["--resume"], **pop)
    done |= _until_done(second, 1, seen)
    os.kill(second.pid, signal.SIGKILL)  # the driver only, mid-launch, another trial running
    second.communicate(timeout=60)
    _, parents, children = _mlflow(db)
    assert parents[0].info.status == "RUNNING" and any(c.info.status == "RUNNING" for c in children)

    third = subprocess.Popen(args + ["--resume"], **pop)
    for line in third.stdout:
        seen.append(line)
        if line.startswith("resuming launch"):
            break
    fourth = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert fourth.returncode == 2, fourth.stderr[-2000:]
    assert f"is running in another driver (pid {third.pid} on" in fourth.stderr.strip().splitlines()[-1]
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]
    # no round was trained twice into the record: each trial's rounds once, in order, those running at
    # the kill included (restored from a checkpoint older than their last logged round, they rewind
    # their result file to it: sweeps/round_log.py); no trial that had finished trained again
    import json

    results = {p.parent.name.rsplit("_", 1)[-1]: p for p in (tmp_path / "runs").glob("*/trials/*/result.json")}
    assert done <= set(results), (done, sorted(results))  # (and the folder of a trial the kill lost, if any)
    for trial_id, result in results.items():
        rounds = [json.loads(line)["round"] for line in result.read_text().splitlines() if line.strip()]
        assert rounds == list(range(1, len(rounds) + 1)), (trial_id, rounds)

    client, parents, children = _mlflow(db)
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].data.tags["resumed"] == "2"
    names = [c.data.tags["trial_name"] for c in children]
    # a run opened for a trial that the killed driver lost (Tune proposed it again) is deleted, with why
    dropped = [c for c in children if c.info.lifecycle_stage == "deleted"]
    assert all(c.data.tags.get("dropped") for c in dropped)
    children = [c for c in children if c.info.lifecycle_stage == "active"]
    names = [c.data.tags["trial_name"] for c in children]
    assert len(children) == 3 + 3 and len(set(names)) == 6, names
    # every finished trial, those of the killed drivers included, keeps its last checkpoint only
    for trial_id in {n.rsplit("_", 1)[-1] for n in names}:
        kept = [c.name for c in results[trial_id].parent.glob("checkpoint_*")]
        assert len(kept) == 1, (trial_id, kept)
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "worst_client_acc")]
        assert steps == list(range(1, int(child.data.metrics["round"]) + 1)), (child.data.tags["trial_name"], steps)
    report = subprocess.run([sys.executable, "-m", "sweeps.report", "fairness_paradox", "--tracking-uri",
                             f"sqlite:///{db}", "--out", str(tmp_path / "report"), "--no-log"],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (tmp_path / "report" / "table.txt").read_text()
    assert "fedavg" in table and "3 runs checked" in table  # the 3 seed runs, each once


@pytest.fixture
def small_disk(tmp_path):
    """A 1 GiB tmpfs of its own (root only): a disk this test can fill and make read-only."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(disk)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"needs to mount a tmpfs (root): {made.stderr.strip() or made.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_disk_filled_mid_launch_stops_it_resumably_and_a_read_only_one_is_refused(tmp_path, small_disk):
    """The storage fills up while trials run: the launch stops with its state saved and one line
    (exit 1); resumed on the storage made read-only, it is refused in one line (exit 2); resumed once
    it takes writes again, it finishes with every trial's rounds once and one FINISHED run each."""
    import json
    import shutil

    from sweeps.storage import MIN_FREE_MB

    db = tmp_path / "mlflow.db"
    args = [sys.executable, "-m", "sweeps.launch", "fairness_paradox", "--cells", "textcnn-a0.1-fedavg$",
            "--num-samples", "3", "--seeds", "3", "--max-concurrent", "2", "--storage", str(small_disk / "runs"),
            "--tracking-uri", f"sqlite:///{db}"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: list[str] = []
    _until_done(first, 1, seen)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave less than the launch keeps free, but room for Tune's last save
        f.write(b"\0" * int(shutil.disk_usage(small_disk).free - (MIN_FREE_MB - 10) * 2**20))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 1, (out[-2000:], err[-3000:])
    last = err.strip().splitlines()[-1]
    # which comes first is a race: the watch seeing less than MIN_FREE_MB free (it looks every few
    # seconds), or a trial's checkpoint write hitting the full disk; either stops it, saved, in one line
    assert last.startswith("error: storage ") and last.endswith("--resume"), last
    assert "MiB free" in last or "No space left on device" in last, last
    _, parents, _ = _mlflow(db)
    assert [p.info.status for p in parents] == ["KILLED"]

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    refused = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "--storage" in refused.stderr and "Read-only file system" in refused.stderr.strip().splitlines()[-1]

    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = list((small_disk / "runs").glob("*/trials/*/result.json"))
    assert len(results) == 6
    for path in results:  # nothing lost or repeated: each trial's rounds once, in order
        rounds = [json.loads(line)["round"] for line in path.read_text().splitlines() if line.strip()]
        assert rounds == list(range(1, len(rounds) + 1)), (path.parent.name, rounds)
    client, parents, children = _mlflow(db)
    assert [p.info.status for p in parents] == ["FINISHED"]
    children = [c for c in children if c.info.lifecycle_stage == "active"]
    assert len(children) == 6 and {c.info.status for c in children} == {"FINISHED"}


def test_storage_problem_says_what_is_wrong(tmp_path):
    from sweeps.storage import storage_problem

    assert storage_problem(str(tmp_path / "not" / "yet" / "runs")) is None  # made by the launch
    assert storage_problem("s3://bucket/runs") is None  # not this machine's to check
    assert storage_problem(str(tmp_path), min_free_mb=1e9).endswith(
        "MiB free, below the 1000000000 MiB a launch keeps for its checkpoints and state")
    (tmp_path / "f").write_text("x")
    assert storage_problem(str(tmp_path / "f" / "runs")) == f"{tmp_path / 'f'} is a file, not a folder"


def test_checkpoints_are_pruned_only_for_trials_the_saved_state_records_as_finished(tmp_path):
    """sweeps/prune.py reads Tune's newest saved experiment state; a state it cannot read (another
    Ray's format, a file cut short) prunes nothing."""
    import json

    from sweeps.prune import terminated_in_saved_state

    assert terminated_in_saved_state(tmp_path) is None  # nothing saved yet
    entry = lambda tid, status: [json.dumps({"trial_id": tid, "status": status}), "{}"]  # noqa: E731
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [entry("a", "TERMINATED"), entry("b", "RUNNING")]}))
    assert terminated_in_saved_state(tmp_path) == {"a"}
    newer = tmp_path / "experiment_state-2026-01-01_00-00-09.json"
    newer.write_text(json.dumps({"trial_data": [entry("a", "TERMINATED"), entry("b", "TERMINATED")]}))
    # the newest by name is the one a resume reads, whatever the files' times (a sync copies them all)
    os.utime(newer, (time.time() - 60, time.time() - 60))
    assert terminated_in_saved_state(tmp_path) == {"a", "b"}
    newer.write_text('{"trial_data": [["{\\"trial_id\\": \\"a\\"')
    assert terminated_in_saved_state(tmp_path) is None
