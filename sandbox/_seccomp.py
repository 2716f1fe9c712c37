"""A seccomp deny list, compiled to BPF with libseccomp (through the `pyseccomp` binding).

The filter allows everything by default and fails the listed syscalls with EPERM: a deny list keeps
ordinary Python, numpy and ipykernel working (an allow list breaks on every new libc release),
while removing the kernel interfaces that sandbox escapes and privilege escalations use. Sockets
of the families ipykernel and libc use stay allowed, and the network namespace is what cuts the
network; every other family is refused, since some reach past the namespace (AF_VSOCK talks to
the hypervisor) and the rest (packet, Bluetooth, crypto, XDP...) are attack surface only.
"""

from __future__ import annotations

import contextlib
import errno
import platform
import tempfile
from typing import BinaryIO

# Syscalls that untrusted code has no use for. Names the running libseccomp or architecture
# does not know are skipped.
DENIED_SYSCALLS = (
    # debugging / reading other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # filesystems and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "name_to_handle_at", "open_by_handle_at", "quotactl", "quotactl_fd",
    # kernel programming and large attack surfaces
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "fanotify_init", "lookup_dcookie",
    # keyrings
    "add_key", "request_key", "keyctl",
    # modules, kexec, machine state
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "syslog", "iopl", "ioperm", "vhangup", "nfsservctl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "personality",
)  # fmt: skip

# Unix, IPv4, IPv6 and netlink (glibc's getaddrinfo asks the interfaces through it).
ALLOWED_SOCKET_FAMILIES = (1, 2, 10, 16)
_FAMILY_LIMIT = 64
"""Families from here up are refused in one rule (the kernel knows fewer than 50 today)."""

# clone() flags that create namespaces; clone3 passes its flags in memory, which a filter cannot
# read, so clone3 answers ENOSYS and libc falls back to clone().
_CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)


def seccomp_available() -> str | None:
    """None when a filter can be built here, else what is missing."""
    try:
        import pyseccomp

        pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    except (ImportError, OSError, RuntimeError, AttributeError) as e:
        return f"libseccomp via pyseccomp ({type(e).__name__}: {e})"
    return None


def build_filter_file() -> BinaryIO:
    """The compiled BPF program in an unlinked file at offset 0, for `bwrap --seccomp FD`."""
    import pyseccomp

    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except (ValueError, OSError, RuntimeError):
            continue  # unknown on this architecture or libseccomp version
    clone_no = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "clone")
    # On s390 clone's flags are the second argument; everywhere else the first.
    flags_arg = 1 if platform.machine().startswith("s390") else 0
    for flag in _CLONE_NAMESPACE_FLAGS:
        f.add_rule(
            pyseccomp.ERRNO(errno.EPERM),
            clone_no,
            pyseccomp.Arg(flags_arg, pyseccomp.MASKED_EQ, flag, flag),
        )
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    # libseccomp cannot test one argument twice in a rule: one rule per refused family.
    refused = pyseccomp.ERRNO(errno.EAFNOSUPPORT)
    for name in ("socket", "socketpair"):
        for family in range(_FAMILY_LIMIT):
            if family not in ALLOWED_SOCKET_FAMILIES:
                f.add_rule(refused, name, pyseccomp.Arg(0, pyseccomp.EQ, family))
        f.add_rule(refused, name, pyseccomp.Arg(0, pyseccomp.GE, _FAMILY_LIMIT))
    # Where socketcall(2) exists (i386, s390x, ppc) it passes the family in memory, out of the
    # filter's sight: refuse it, and libc calls socket(2) itself.
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "socketcall")
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to bwrap, closed by the caller
    f.export_bpf(out)
    out.flush()
    out.seek(0)
    return out
