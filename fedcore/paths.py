"""Places a run writes to, checked before it starts: an hour of training should not end on a
checkpoint path whose parent is a file, a read-only folder or a full disk."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def writable_dir(path: str | Path, what: str) -> Path:
    """`path` as a folder this process can create files in (made if missing); ValueError naming
    `what` (a flag or field) otherwise."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; give a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        # a real write, not os.access: root passes access checks on read-only mounts, and a full disk
        # passes them all
        fd, probe = tempfile.mkstemp(dir=p, prefix=".write-check-")
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r}: cannot write there ({e.strerror or e})") from None
    return p


def writable_file(path: str | Path, what: str) -> Path:
    """`path` as a file this process can write (its folder made if missing; an existing file is
    left as it is); ValueError naming `what` otherwise."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file name")
    writable_dir(p.parent, what + "'s folder")
    return p
