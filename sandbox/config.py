"""What a sandbox allows: resource limits, identity and extra read-only paths."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and identity of one sandbox. The defaults suit interactive data work."""

    memory_bytes: int = 4 * GiB
    """Memory of all processes together, tmpfs files included (memory cgroup). Without a memory
    cgroup it becomes each process's address-space limit (RLIMIT_AS), which is coarser."""
    max_processes: int = 256
    """Processes and threads together (pids cgroup, and RLIMIT_NPROC for the sandbox uid).
    Threads count: numerical libraries start one per core."""
    cpu_seconds: int = 3600
    """CPU time of each process over its whole life (RLIMIT_CPU). A kernel is long-lived, so this
    is a backstop; per-call wall-clock timeouts belong to the caller."""
    file_size_bytes: int = 1 * GiB
    """Largest file a process may write (RLIMIT_FSIZE)."""
    open_files: int = 1024
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    tmp_size_bytes: int = 512 * MiB
    """Size of the private /tmp and /dev/shm (tmpfs; their pages also count as memory)."""
    uid: int | None = None
    """The unprivileged uid (and gid) code runs as when the host runs the sandbox as root. None
    (the default): a uid of its own for each sandbox, leased from a range no account uses
    (`sandbox.uids`), so that per-user kernel limits (RLIMIT_NPROC) are each sandbox's own. A
    fixed uid is shared by every sandbox given it, and must belong to no account."""
    seccomp: bool = True
    """Deny syscalls sandboxed code has no use for (needs libseccomp through `pyseccomp`)."""
    extra_ro_paths: tuple[str, ...] = ()
    """More host paths to show read-only inside, at the same place (a model cache, a dataset)."""
    loopback: bool = False
    """Keep the sandbox's own loopback interface up, for libraries that talk TCP to themselves
    (a local Dask cluster). It is private to the sandbox either way: the host's 127.0.0.1 is
    never reachable. Off, the sandbox has no usable network interface at all. Only a sandbox
    started as root can take it down; otherwise it stays up."""
    hostname: str = "sandbox"
    """Hostname seen inside (own UTS namespace)."""
