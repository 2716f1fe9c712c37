"""File operations the host (often root) makes inside directories the sandbox can write.

Every name in such a directory is the sandboxed code's to choose, at any moment: a name that was
absent when checked can be a symlink to `/etc/...`, a FIFO or a link loop by the time it is
opened. So nothing here looks a name up and then acts on it: each operation is one syscall
relative to a directory descriptor opened without following links, that creates exclusively or
refuses links, and ownership changes go through the descriptor, never the name again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path: str | os.PathLike[str]) -> int:
    """A descriptor of directory `path`; its last component must not be a symlink. The parents
    of `path` must be the host's own (the sandbox never writes them)."""
    return os.open(path, _DIR_FLAGS)


def write_new_file(dir_fd: int, name: str, data: bytes, *, owner: int | None) -> None:
    """Create `name` in `dir_fd` holding `data`, owned by `owner` (uid and gid) when given.

    Raises FileExistsError when the name is taken by anything: a file, a symlink (dangling or
    looping), a FIFO. O_EXCL never opens what exists and never follows a final symlink.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, owner, owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def pin_socket(dir_fd: int, name: str) -> int | None:
    """An O_PATH descriptor of the Unix socket `name` in `dir_fd`, or None while it does not
    exist. Raises OSError when the name is anything but a socket (a planted link, say).

    Connecting through `/proc/self/fd/N` of this descriptor reaches that socket's inode whatever
    the sandbox later does to the name.
    """
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISSOCK(mode):
        os.close(fd)
        raise OSError(f"{name} is not a socket (mode {stat.filemode(mode)})")
    return fd


def chown_tree(dir_fd: int, uid: int, *, only: Callable[[int], bool]) -> int:
    """Give `uid` (and gid) every entry under `dir_fd` whose owner satisfies `only`; links are
    changed themselves, never followed. Returns how many entries changed owner."""
    changed = 0
    # fwalk holds a descriptor of each directory it enters and checks it is the one it listed.
    for _, dirs, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        if only(os.fstat(fd).st_uid):
            os.fchown(fd, uid, uid)
            changed += 1
        for name in files + [d for d in dirs if _is_link(name=d, dir_fd=fd)]:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if only(st.st_uid):
                    os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
                    changed += 1
            except FileNotFoundError:
                continue
    return changed


def _is_link(*, name: str, dir_fd: int) -> bool:
    # fwalk lists symlinks to directories among `dirs` without entering them.
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False
