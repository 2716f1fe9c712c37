"""Process isolation for untrusted, model-written code, and the sandboxed Jupyter kernel.

`spawn()`/`run()` start a program in a sandbox built with bubblewrap (namespaces, a read-only
minimal filesystem, a writable /mnt/data), an unprivileged uid without capabilities, cgroups or
rlimits and a seccomp deny list; `start_kernel()` runs an ipykernel that way. `probe()` says what
the machine supports and raises `SandboxUnavailable`, naming what is missing, when it cannot
sandbox. `sandbox.process` documents what the sandbox does and does not protect against.
"""

from ._cgroup import CgroupSet
from .config import SandboxConfig
from .kernel import KernelProcess, start_kernel
from .process import SCRATCH, SandboxedProcess, SandboxUnavailable, Support, probe, run, spawn
from .uids import UidLease, lease_uid

__all__ = [
    "SCRATCH",
    "CgroupSet",
    "KernelProcess",
    "SandboxConfig",
    "SandboxUnavailable",
    "SandboxedProcess",
    "Support",
    "UidLease",
    "lease_uid",
    "probe",
    "run",
    "spawn",
    "start_kernel",
]
