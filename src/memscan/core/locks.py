"""One exclusive, non-blocking lock for writers of a folder (a dataset being prepared, a run being scanned).

Rule: a second writer refuses at once with a one-line message (exit 2) instead of waiting or mixing its
output with the first one's; the kernel releases an ``flock`` when its holder dies, so a killed writer
never leaves a lock that blocks the next run.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from memscan.errors import InputError


def lock_or_refuse(fd: int, busy: str, where: Path) -> None:
    """Take an exclusive ``flock`` on ``fd`` without waiting.

    Args:
        fd: an open file or folder descriptor; closed here if the lock cannot be taken.
        busy: the message when another process holds the lock.
        where: the path the message names.

    Raises:
        InputError: another process holds the lock.
        OSError: any other failure of ``flock``.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise InputError(busy, where) from None
        raise
