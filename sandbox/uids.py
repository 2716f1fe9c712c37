"""One unprivileged uid per sandbox, leased from a range no account uses.

Per-user kernel limits (RLIMIT_NPROC above all, also signals pending and inotify instances) count
every process of a uid machine-wide: sandboxes sharing a uid share them, so one that holds all
its processes would starve the others. Each lease is an exclusive `flock` on a file named for
the uid in a root-only directory; the kernel drops it when its holder exits, however it exits,
so a crashed host leaks nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import random
import signal
import time

FIRST_UID = 1_879_048_192
"""Start of the leased range: systemd's documented unused uids (1879048192-2147483647)."""
UID_COUNT = 65_536
LEASE_DIR = "/run/harmony-agent/sandbox-uids"


def in_range(uid: int) -> bool:
    return FIRST_UID <= uid < FIRST_UID + UID_COUNT


class UidLease:
    """An exclusively held uid; `release()` (idempotent) gives it back."""

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self._fd: int | None = lock_fd

    def release(self) -> None:
        """Kill whatever still runs as the uid (a process that escaped its group, say: the uid
        is ours alone, and its next holder must not share it), then give the uid back."""
        if self._fd is not None:
            kill_processes_of(self.uid)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def lease_uid() -> UidLease:
    """A uid of the range that no other sandbox on this machine holds and no account names.
    Root only (it runs sandboxes as other uids)."""
    os.makedirs(LEASE_DIR, mode=0o700, exist_ok=True)
    dir_fd = os.open(LEASE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # A random start keeps concurrent hosts from contending for the same first uids.
        start = random.randrange(UID_COUNT)
        for i in range(UID_COUNT):
            uid = FIRST_UID + (start + i) % UID_COUNT
            if _has_account(uid):
                continue
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(str(uid), flags, 0o600, dir_fd=dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return UidLease(uid, fd)
    finally:
        os.close(dir_fd)
    raise RuntimeError(f"all {UID_COUNT} sandbox uids from {FIRST_UID} are in use")


def kill_processes_of(uid: int, rounds: int = 5) -> None:
    """SIGKILL every process whose real uid is `uid`, until none is left (a few rounds, for
    processes forked meanwhile)."""
    for _ in range(rounds):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    real = next(line for line in f if line.startswith("Uid:")).split()[1]
                if int(real) == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
                    found = True
            except (OSError, StopIteration, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


def _has_account(uid: int) -> bool:
    with contextlib.suppress(KeyError):
        pwd.getpwuid(uid)
        return True
    return False
