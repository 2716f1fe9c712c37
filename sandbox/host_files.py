"""File operations the host (often root) makes inside directories the sandbox can write.

Every name in such a directory is the sandboxed code's to choose, at any moment: a name that was
absent when checked can be a symlink to `/etc/...`, a FIFO or a link loop by the time it is
opened. So nothing here looks a name up and then acts on it: each operation is one syscall
relative to a directory descriptor opened without following links, that creates exclusively or
refuses links, and ownership changes go through the descriptor, never the name again.
"""

from __future__ import annotations

import contextlib
import itertools
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


_SUBDIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_OPEN_DIRS = 64
"""Directories a walk holds open at once. The sandbox can nest folders thousands deep: walks go
without recursion, and never take a descriptor per level."""


def _split(dir_fd: int) -> tuple[list[str], list[os.DirEntry[str]]]:
    """The subdirectories of `dir_fd` (by name) and its other entries; links are not followed."""
    dirs, others = [], []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            try:
                (dirs if entry.is_dir(follow_symlinks=False) else others).append(entry)
            except OSError:
                continue
    return [d.name for d in dirs], others


def _open_subdir(dir_fd: int, name: str) -> int | None:
    # O_DIRECTORY|O_NOFOLLOW: a name swapped for a link or a FIFO meanwhile is refused at once.
    try:
        return os.open(name, _SUBDIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None


def chown_tree(dir_fd: int, uid: int, *, only: Callable[[int], bool]) -> int:
    """Give `uid` (and gid) every entry under `dir_fd` whose owner satisfies `only`; links are
    changed themselves, never followed. Entries deeper than `_MAX_OPEN_DIRS` levels are left as
    they are. Returns how many entries changed owner."""
    changed = 0
    frames: list[tuple[int, list[str]]] = []

    def enter(fd: int) -> None:
        nonlocal changed
        dirs, others = _split(fd)
        for entry in others:
            with contextlib.suppress(OSError):
                if only(entry.stat(follow_symlinks=False).st_uid):
                    os.chown(entry.name, uid, uid, dir_fd=fd, follow_symlinks=False)
                    changed += 1
        frames.append((fd, dirs))

    enter(os.dup(dir_fd))
    while frames:
        fd, pending = frames[-1]
        if not pending:
            frames.pop()
            os.close(fd)
            continue
        child = _open_subdir(fd, pending.pop())
        if child is None:
            continue
        with contextlib.suppress(OSError):
            if only(os.fstat(child).st_uid):
                os.fchown(child, uid, uid)
                changed += 1
        if len(frames) >= _MAX_OPEN_DIRS:
            os.close(child)
            continue
        enter(child)
    return changed


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove the directory `path` and all it holds, best effort, following no link. `path`
    itself is the host's; what is inside may be the sandbox's, nested any depth: deeper than
    `_MAX_OPEN_DIRS` levels, subtrees are first moved up to the top to be removed there."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        top = _open_subdir(parent_fd, name)
        if top is None:
            return
        frames: list[tuple[int, str, list[str]]] = []
        moved = itertools.count()

        def enter(fd: int, entry_name: str) -> None:
            dirs, others = _split(fd)
            for entry in others:
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)
            frames.append((fd, entry_name, dirs))

        enter(top, name)
        while frames:
            fd, entry_name, pending = frames[-1]
            if pending:
                child_name = pending.pop()
                if len(frames) >= _MAX_OPEN_DIRS:
                    fresh = f".harmony-removing-{next(moved)}"
                    with contextlib.suppress(OSError):
                        os.rename(child_name, fresh, src_dir_fd=fd, dst_dir_fd=frames[0][0])
                        frames[0][2].append(fresh)
                    continue
                child = _open_subdir(fd, child_name)
                if child is not None:
                    enter(child, child_name)
                continue
            frames.pop()
            os.close(fd)
            with contextlib.suppress(OSError):
                os.rmdir(entry_name, dir_fd=frames[-1][0] if frames else parent_fd)
    finally:
        os.close(parent_fd)
