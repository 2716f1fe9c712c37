"""Where Chromium runs under a root host: an unprivileged uid, its own sandbox on, limited memory.

Chromium refuses its sandbox as root, and pages are untrusted, so a root host does not run it as
root: Playwright is given a small launcher (written here, in a root-only directory) that puts
its own process into a memory cgroup, then drops to an unprivileged uid with no groups, no
capabilities and no_new_privs (`setpriv`, util-linux) and execs Chromium. Playwright talks to
Chromium over the pipe fds it hands down (`--remote-debugging-pipe`), which survive the exec.
Chromium's sandbox (user namespaces, seccomp) then works as for any user.

Chromium writes only its profile, a directory the uid owns inside one it can only traverse.
The host never opens names inside it; it goes with `host_files.remove_tree`, which works through
directory fds, follows no link and copes with any depth.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import weakref

from harmony_agent.sandbox import CgroupSet, UidLease, host_files, lease_uid


class JailUnavailable(Exception):
    """The launcher cannot be set up; the message says what is missing."""


class ChromiumJail:
    """The launcher, the profile directory and the memory group of one Chromium."""

    def __init__(self, chromium: str, *, uid: int | None, memory_bytes: int | None) -> None:
        """`uid` None: one leased for this browser alone (`sandbox.uids`), so that no other
        sandbox or browser shares its processes' uid (signals, ptrace, per-user limits)."""
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise JailUnavailable(
                "running as root, the browser drops to an unprivileged user with `setpriv` "
                "(util-linux), which is not installed"
            )
        self.cgroup: CgroupSet | None = None
        self.lease: UidLease | None = None
        if uid is None:
            self.lease = lease_uid()
            uid = self.lease.uid
        self.uid = uid
        self.dir = tempfile.mkdtemp(prefix="harmony-browser-")  # ours alone: root, 0700
        try:
            os.chmod(self.dir, 0o711)  # the uid may pass through to its profile, not write here
            self.profile = os.path.join(self.dir, "profile")
            os.mkdir(self.profile, 0o700)
            os.chown(self.profile, uid, uid)
            if memory_bytes is not None:
                self.cgroup = CgroupSet(memory_bytes, None)
            join = "".join(f"echo $$ > {shlex.quote(f)} || exit 71\n" for f in self._procs())
            drop = [
                setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
            ]  # fmt: skip
            # Playwright refuses `--user-data-dir` among the arguments and passes a profile of
            # its own, root's and so unwritable; Chromium takes the last one given.
            launch = " ".join(map(shlex.quote, [*drop, chromium])) + ' "$@" '
            launch += shlex.quote(f"--user-data-dir={self.profile}")
            self.executable = os.path.join(self.dir, "chromium")
            fd = os.open(self.executable, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write(f"#!/bin/sh\n{join}exec {launch}\n")
        except BaseException:
            _clean_up(self.dir, self.cgroup, self.lease)
            raise
        # Also at exit, for a host that never closes the browser.
        self._cleanup = weakref.finalize(self, _clean_up, self.dir, self.cgroup, self.lease)

    def _procs(self) -> list[str]:
        return self.cgroup.procs_files() if self.cgroup is not None else []

    def env(self) -> dict[str, str]:
        """Chromium's whole environment: nothing of the host's (API keys live there)."""
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.profile, "LANG": "C.UTF-8"}

    def oom_kills(self) -> int:
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    def close(self) -> None:
        self._cleanup()


def _clean_up(directory: str, cgroup: CgroupSet | None, lease: UidLease | None) -> None:
    """Kill whatever of Chromium is left (its crash handlers leave the process tree), remove
    its group and its profile, give its uid back."""
    if cgroup is not None:
        cgroup.destroy()
    host_files.remove_tree(directory)
    if lease is not None:
        lease.release()
