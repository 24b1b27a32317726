"""Guarding what the commands write: nothing a user made earlier is lost, and no work is done that cannot be saved.

| function          | what it guards against                                                        |
| ----------------- | ----------------------------------------------------------------------------- |
| `check_writable`  | a folder that cannot be written, found only after minutes of training or sampling |
| `RunLock`         | two trainings writing into one folder at once (their files would interleave)  |
| `check_new_run`   | a fresh run overwriting a finished model that has no training state to resume |
| `clean_temporary` | half-written `*.tmp` files left behind by a run that was killed mid-save       |
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

LOCK_FILE = ".lock"


class OutputError(ValueError):
    """An output location that cannot be used as asked; the message says what to do instead."""


def check_writable(folder: str | Path) -> Path:
    """Create `folder` if needed and prove that a file can be written in it; raise OutputError if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose a folder name for the output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write into {folder} ({error.strerror or error}): choose a folder you can write to")
    return folder


def check_new_run(folder: Path, model_file: str, state_file: str, overwrite: bool) -> None:
    """Refuse to start a run from scratch where a finished model, with no state to resume from, would be overwritten."""
    if (folder / model_file).exists() and not (folder / state_file).exists() and not overwrite:
        raise OutputError(
            f"{folder} already holds a model ({model_file}) and no training state to resume from, so training would "
            f"overwrite it: choose a new --out folder, or pass --overwrite to replace that model")


class RunLock:
    """An exclusive lock on an output folder, held for the length of a run (`with RunLock(folder): ...`).

    The lock is a file holding the owner's process id and host name. A lock whose process no longer
    runs on this host is stale (its run was killed) and is taken over; a live one is an error.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise OutputError(f"another training run ({owner}) is writing to {self.path.parent}: wait for it "
                                      f"to finish or choose another --out folder (if no such run exists, delete "
                                      f"{self.path})") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return self
        raise OutputError(f"could not take the lock {self.path}: delete it if no run is using {self.path.parent}")

    def _owner(self) -> str | None:
        """'process N on HOST' if the lock's owner may still run, None if it is stale."""
        try:
            pid_text, host = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None  # unreadable or half-written: its writer died before finishing one line
        if host != socket.gethostname():
            return f"process {pid} on {host}"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, owned by someone else
        return f"process {pid}"

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def clean_temporary(folder: Path) -> list[Path]:
    """Remove the `*.tmp` files that atomic saves leave when killed mid-write (call it while holding the lock)."""
    removed = [p for p in [*folder.glob("*.tmp"), *folder.glob("snapshots/*.tmp")] if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
