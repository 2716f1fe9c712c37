"""The first program inside the sandbox: set limits, give up root, check, then exec the payload.

It runs as `python -I -S -c <this file's text> <json settings> <argv...>`, so it needs nothing but
the standard library and no file of the project inside the sandbox. Untrusted code only starts
after the checks below have passed; if any fails, the stage exits with status 70 and says why on
stderr (fail closed).
"""

import ctypes
import fcntl
import json
import os
import resource
import socket
import struct
import sys

LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sh22x"  # struct ifreq: interface name, then the flags in a 24-byte union
STAGE_FAILED = 70


def fail(why: str) -> None:
    sys.stderr.write(f"sandbox stage: {why}\n")
    sys.stderr.flush()
    os._exit(STAGE_FAILED)


def status_fields() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def loopback_down() -> None:
    """bwrap brings `lo` up in the new network namespace; take it down again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0))
        flags = struct.unpack(IFREQ, got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags & ~IFF_UP))


def main() -> None:
    settings = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    for name, value in settings["rlimits"].items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        # Only lowering is possible without CAP_SYS_RESOURCE; never try to raise.
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as e:
            fail(f"setrlimit {name}={value}: {e}")
    libc = ctypes.CDLL(None, use_errno=True)
    if settings.get("loopback_down"):
        try:
            loopback_down()
        except OSError as e:
            fail(f"cannot take the loopback interface down: {e}")
    uid = settings.get("uid")
    if uid is not None:
        # Empty the bounding set while we still hold CAP_SETPCAP, so that no later exec of any
        # file could ever regain a capability.
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
                fail(f"cannot drop capability {cap} from the bounding set")
        try:
            # Groups first: after setuid we would lack CAP_SETGID. Changing every uid away from 0
            # makes the kernel clear the permitted, effective and ambient capability sets.
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as e:
            fail(f"cannot switch to uid {uid}: {e}")
        # The uid switch leaves the inheritable set alone; empty it too (capset, all zero).
        header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()
        if libc.capset(header, data) != 0:
            fail(f"cannot clear inheritable capabilities: errno {ctypes.get_errno()}")
    try:
        os.chdir(settings["cwd"])
    except OSError as e:
        fail(f"cannot enter {settings['cwd']}: {e}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail(f"prctl(NO_NEW_PRIVS) failed: errno {ctypes.get_errno()}")
    status = status_fields()
    if 0 in os.getresuid() or 0 in os.getresgid():
        fail("still running as root")
    fields = ("CapPrm", "CapEff", "CapInh", "CapAmb") + (("CapBnd",) if uid is not None else ())
    for field in fields:
        if int(status.get(field, "0"), 16) != 0:
            fail(f"capabilities left: {field}={status[field]}")
    if status.get("NoNewPrivs", "0").strip() != "1":
        fail("no_new_privs is not set")
    try:
        # execve with an explicit environment: nothing of the stage's own survives.
        os.execve(argv[0], argv, settings["env"])
    except OSError as e:
        fail(f"cannot exec {argv[0]}: {e}")


if __name__ == "__main__":  # `python -c` runs it as __main__; importing it does nothing
    main()
