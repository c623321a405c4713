"""What a launch checks about the machine and the cluster before it runs a trial, and what it holds
while it runs.

Without these, a request no node can place (a GPU share on a CPU-only machine, more CPUs per trial
than a node has) leaves every trial PENDING forever, and an address where no Ray head listens keeps
ray.init retrying for minutes. Each is one ValueError line instead, saying what to do. The launch
lock keeps a second driver (`--resume` while the first still runs) off one launch's Tune state.
"""
from __future__ import annotations

import fcntl
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

LOCK_FILE = "launch.lock"


def check_resources(resources: dict[str, float], local: bool, dry_run: bool = False) -> None:
    """Per-trial CPUs and GPUs are finite and in range; on a local Ray (no --address) they fit this
    machine, since a local Ray never grows."""
    cpu, gpu = resources["cpu"], resources["gpu"]
    if not (math.isfinite(cpu) and cpu > 0):
        raise ValueError(f"--cpus-per-trial {cpu:g}: allowed a number > 0 (e.g. 1, or 0.5 to share a core)")
    if not (math.isfinite(gpu) and gpu >= 0):
        raise ValueError(f"--gpus-per-trial {gpu:g}: allowed a number >= 0 (0.25: four trials share a GPU)")
    if gpu > 1 and gpu != int(gpu):
        raise ValueError(f"--gpus-per-trial {gpu:g}: above 1, a trial takes whole GPUs (2, 3, ...)")
    if not local:
        return
    cores = os.cpu_count() or 1
    if cpu > cores:
        raise ValueError(f"--cpus-per-trial {cpu:g}: this machine has {cores} CPU{'s' * (cores != 1)}, so no trial "
                         f"could start; allowed up to {cores} (or run on a cluster with --address)")
    if gpu > 0:
        have = gpu_count()
        if gpu > have:
            why = (f"--gpus-per-trial {gpu:g}: this machine has {have or 'no'} GPU{'s' * (have != 1)}, so no trial "
                   f"could start; drop it (train on the CPU) or run on a cluster with GPUs (--address)")
            if not dry_run:
                raise ValueError(why)
            print(f"note: {why}", file=sys.stderr)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A host:port (or ray://host:port) address has something listening; 'auto' and 'local' are
    Ray's to resolve (it fails fast there)."""
    if not address or address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--address {address!r}: allowed host:port (the head's GCS port, 6379 by default), "
                         f"ray://host:port (Ray client, 10001) or auto")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ValueError(f"--address {address}: nothing answers there ({e.strerror or e}); start the head "
                         f"(ray start --head --node-ip-address 127.0.0.1 --port {port}) or give the address "
                         f"it printed") from None


def cluster_fits(resources: dict[str, float], nodes: list[dict[str, Any]]) -> str | None:
    """None where some live node can hold one trial, else why not (from ray.nodes())."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    need = {"CPU": resources["cpu"], "GPU": resources["gpu"]}
    if any(all(r.get(k, 0.0) >= v for k, v in need.items() if v > 0) for r in alive):
        return None
    most = {k: max((r.get(k, 0.0) for r in alive), default=0.0) for k in need}
    return (f"each trial asks for {need['CPU']:g} CPU and {need['GPU']:g} GPU, and the largest of the cluster's "
            f"{len(alive)} node(s) has {most['CPU']:g} CPU and {most['GPU']:g} GPU")


def wait_until_placeable(resources: dict[str, float], nodes: Callable[[], list], timeout_s: float,
                         poll_s: float = 5.0) -> None:
    """Block until a node can hold one trial (an autoscaling cluster adds nodes on demand, so this
    waits); ValueError after `timeout_s` with what is missing."""
    deadline, said = time.monotonic() + timeout_s, False
    while True:
        why = cluster_fits(resources, nodes())
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise ValueError(f"no node of the cluster can run a trial after {timeout_s:.0f} s: {why}; lower "
                             f"--cpus-per-trial / --gpus-per-trial, add nodes, or wait longer (--placement-timeout)")
        if not said:
            print(f"note: {why}; waiting up to {timeout_s:.0f} s for a node that fits (an autoscaler may add one)",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


class LaunchLock:
    """An exclusive lock on a launch's Tune folder for the driver's life (fcntl.flock, so it goes when
    the process does, even under SIGKILL). Remote storage (a URI) is not locked."""

    def __init__(self, tune_dir: str):
        self.path = None if "://" in tune_dir else Path(tune_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, launch_id: str) -> "LaunchLock":
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(f"launch {launch_id} is running in another driver ({holder}); wait for it to end, "
                             f"or stop it (Ctrl-C there, or kill -INT its pid) and resume again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def may_be_running(self) -> bool:
        """Whether a live driver may hold this launch (for a RUNNING parent run found later): False only
        where its lock is free; a launch on remote storage cannot be told, so it may be."""
        if self.path is None:
            return True
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def stop_like_ctrl_c() -> None:
    """SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) stop the launch as Ctrl-C does:
    Tune saves its state, the parent run is marked KILLED, and --resume continues it."""
    def forward(signum, frame):
        os.kill(os.getpid(), signal.SIGINT)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
