"""One live run per command and output folder: a lock file holding the owner's pid.

The file is created with ``O_EXCL``; a lock whose process is gone (killed, crashed) is taken
over. A process may take the same lock again (a study runs its analyses in-process).
"""

from __future__ import annotations

import os
from pathlib import Path

from vitprobe.errors import UserError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def acquire(path: Path, what: str) -> bool:
    """Take the lock at ``path``; False when this process holds it already. A UserError
    when another live process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner == os.getpid():
                return False
            if owner is not None and _alive(owner):
                raise UserError(f"{path.parent} is in use by another vitprobe {what} run (pid {owner}); "
                                "wait for it or choose another --out") from None
            path.unlink(missing_ok=True)  # its owner is gone: take it over
            continue
        except OSError as error:
            raise UserError(f"cannot write in --out {path.parent}: {error.strerror}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return True


def release(path: Path) -> None:
    if _owner(path) == os.getpid():
        path.unlink(missing_ok=True)
