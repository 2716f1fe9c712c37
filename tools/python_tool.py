"""The built-in `python` tool: a stateful Jupyter kernel running in a sandbox.

One kernel per tool, started on the first call, restarted by `reset()` (a new conversation)
and shut down by `aclose()`. What the model sees follows harmony's description of the tool:
state persists between calls, files in /mnt/data persist, calls time out. The sandbox
(`sandbox` package) keeps the code away from the network, the host's files, processes and
environment, and caps its memory, processes, CPU time and file sizes; read `sandbox.process`
for what it does not protect against.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import queue
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from openai_harmony import ToolNamespaceConfig

from harmony_agent.sandbox import (
    KernelProcess,
    SandboxConfig,
    SandboxUnavailable,
    UidLease,
    host_files,
    lease_uid,
    probe,
    start_kernel,
)

from ._jupyter_output import OutputCollector
from .base import BuiltinTool, ToolCall

log = logging.getLogger(__name__)

_POLL_S = 0.05
"""How often a waiting call checks that the kernel is still alive."""
_MAX_MESSAGE_BYTES = 64 << 20
"""A kernel message larger than this drops the connection (ZeroMQ reconnects at once): the
kernel is the model's, and nothing it sends may cost the host unbounded memory."""
_QUEUED_MESSAGES = 4
"""Messages ZeroMQ may queue per socket on the host before it stops reading the kernel."""
_IMAGE_NAME_TRIES = 1000
_STATE_LOST = (
    "all variables, imports and definitions are lost; files in {data} are kept. "
    "Re-run any setup you still need."
)


class KernelStartError(RuntimeError):
    """The kernel did not come up (it died, or did not answer in time)."""


class KernelSession:
    """One running kernel and its client: start it, run code, notice its death, kill it.

    Separate from `PythonTool` so benchmarks can drive a sandboxed and an unsandboxed kernel
    through the same code.
    """

    def __init__(self, kernel: KernelProcess) -> None:
        self.kernel = kernel
        self.client = self._connect()
        self.loop = asyncio.get_running_loop()
        """The event loop the client's sockets belong to."""
        self.oom_kills_at_start = 0
        self.stale_msg_id: str | None = None
        """An execution abandoned by a cancelled call; the next call waits for it to end."""

    @classmethod
    async def start(cls, launch: Callable[[], KernelProcess], timeout: float) -> KernelSession:
        """Launch a kernel and wait until it answers `kernel_info`; raise `KernelStartError`."""
        deadline = time.monotonic() + timeout
        kernel = launch()
        try:
            await _wait_for_sockets(kernel, deadline)
            session = cls(kernel)
        except BaseException:
            kernel.kill()
            raise
        try:
            await session._wait_ready(timeout, deadline)
        except BaseException:
            session.kill()
            raise
        session.oom_kills_at_start = session.kernel.oom_kills()
        return session

    def _connect(self) -> AsyncKernelClient:
        context = zmq.asyncio.Context()
        # Options a context sets apply to every socket it makes.
        context.setsockopt(zmq.MAXMSGSIZE, _MAX_MESSAGE_BYTES)
        context.setsockopt(zmq.RCVHWM, _QUEUED_MESSAGES)
        client = AsyncKernelClient(context=context)
        # A plain dict with the keys of jupyter_client's KernelConnectionInfo.
        client.load_connection_info(self.kernel.connection_info)  # type: ignore[arg-type]
        client.start_channels()
        return client

    def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()
            self.client.context.destroy(linger=0)

    async def reconnect(self, timeout: float) -> None:
        """Connect anew from the running event loop: the client's asyncio sockets are bound to
        the loop they were made in, the kernel (and its state) to none."""
        self._disconnect()
        self.client = self._connect()
        self.loop = asyncio.get_running_loop()
        # Output of an execution abandoned on the old loop was published to the old client.
        self.stale_msg_id = None
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float, deadline: float | None = None) -> None:
        """Wait for a `kernel_info` reply on shell and for any message on iopub: the reply alone
        does not prove that our iopub subscription is live, and output published before it would
        be lost (ZeroMQ's slow joiner)."""
        if deadline is None:
            deadline = time.monotonic() + timeout
        self.client.kernel_info()
        last_ask = time.monotonic()
        shell_ok = iopub_ok = False
        while not (shell_ok and iopub_ok):
            if not self.kernel.alive():
                raise _exited_while_starting(self.kernel)
            now = time.monotonic()
            if now > deadline:
                raise KernelStartError(f"the Python kernel did not answer within {timeout:g} s")
            if now - last_ask > 0.5:
                # Requests sent before the kernel bound its sockets may be lost: ask again.
                self.client.kernel_info()
                last_ask = now
            with contextlib.suppress(queue.Empty):
                reply = await self.client.get_shell_msg(timeout=0 if shell_ok else _POLL_S)
                shell_ok = shell_ok or reply["msg_type"] == "kernel_info_reply"
            with contextlib.suppress(queue.Empty):
                await self.client.get_iopub_msg(timeout=0 if iopub_ok else _POLL_S)
                iopub_ok = True
        await self._drain()

    async def _drain(self) -> None:
        """Discard queued messages (startup chatter, replies to abandoned executions)."""
        for get in (self.client.get_shell_msg, self.client.get_iopub_msg):
            with contextlib.suppress(queue.Empty):
                while True:
                    await get(timeout=0)

    def interrupt(self) -> None:
        # interrupt_mode "message": a signal would reach bwrap, not the kernel in the sandbox.
        msg = self.client.session.msg("interrupt_request", content={})
        self.client.control_channel.send(msg)

    async def wait_idle(self, msg_id: str, collector: OutputCollector | None, until: float) -> str:
        """Collect `msg_id`'s output until the kernel reports idle for it ("idle"), the kernel
        dies ("dead") or `until` (monotonic) passes ("timeout")."""
        while True:
            if not self.kernel.alive():
                return "dead"
            remaining = until - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                msg = await self.client.get_iopub_msg(timeout=min(_POLL_S, remaining))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"].get("execution_state") == "idle":
                    return "idle"
            elif collector is not None:
                collector.add(msg)

    def died_of_oom(self) -> bool:
        return self.kernel.oom_kills() > self.oom_kills_at_start

    def kill(self) -> None:
        self._disconnect()
        self.kernel.kill()


async def _wait_for_sockets(kernel: KernelProcess, deadline: float) -> None:
    """Wait until the kernel has made (and the host pinned) its sockets."""
    while True:
        try:
            if kernel.sockets_ready():
                return
        except OSError as e:
            raise KernelStartError(f"the kernel's sockets were tampered with ({e})") from None
        if not kernel.alive():
            raise _exited_while_starting(kernel)
        if time.monotonic() > deadline:
            raise KernelStartError("the Python kernel did not make its sockets in time")
        await asyncio.sleep(_POLL_S / 5)


def _exited_while_starting(kernel: KernelProcess) -> KernelStartError:
    tail = kernel.stderr_tail().strip().splitlines()
    why = tail[-1] if tail else f"exit status {kernel.exit_status()}"
    return KernelStartError(f"the Python kernel exited while starting: {why}")


class PythonTool(BuiltinTool):
    """Runs the model's Python in a stateful, sandboxed Jupyter kernel.

    Args:
        timeout: seconds one call may run; then it is interrupted (the kernel restarted if the
            interrupt does not work) and the model is told it timed out.
        sandbox: limits and identity of the sandbox (`SandboxConfig`); defaults suit data work.
        data_dir: host directory shown to the code as /mnt/data. By default a temporary
            directory, removed by `aclose()`; a directory you pass is kept.
        max_output_chars: longer output keeps its head and tail, with a marker saying how much
            was cut; the rest is dropped as it streams, so a flood costs no host memory.
        startup_timeout: seconds the kernel may take to start.
        interrupt_grace: seconds a timed-out call has to stop after the interrupt.
        dangerously_allow_unsandboxed: where the sandbox cannot run, run the model's code as an
            ordinary local process with all of your user's rights (files, network, processes)
            instead of refusing. Only for code you would run yourself.

    Raises `SandboxUnavailable` (naming what is missing) when the machine cannot sandbox and
    `dangerously_allow_unsandboxed` is false. The sandbox does not protect against kernel
    exploits, disk filling under `data_dir`, or reading what the Python installation holds;
    `sandbox.process` lists what it does and does not stop.
    """

    name = "python"

    def __init__(
        self,
        timeout: float = 120.0,
        *,
        sandbox: SandboxConfig | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        max_output_chars: int = 16_000,
        startup_timeout: float = 60.0,
        interrupt_grace: float = 5.0,
        dangerously_allow_unsandboxed: bool = False,
    ) -> None:
        # `timeout` is enforced here, per call; the agent's own `BuiltinTool.timeout` stays None
        # so that it never cuts a call short before the kernel is interrupted.
        self.call_timeout = timeout
        self.sandbox_config = sandbox or SandboxConfig()
        self.max_output_chars = max_output_chars
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self.unsandboxed = False
        try:
            probe(self.sandbox_config)
        except SandboxUnavailable as e:
            if not dangerously_allow_unsandboxed:
                raise SandboxUnavailable(
                    f"{e}. To run model-written code without isolation anyway, pass "
                    "PythonTool(dangerously_allow_unsandboxed=True)."
                ) from None
            self.unsandboxed = True
            message = (
                f"PythonTool is running model-written code UNSANDBOXED, with your user's full "
                f"rights, because the sandbox is unavailable: {e}"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log.warning(message)
        self._uid_lease: UidLease | None = None
        """The uid this tool's kernels run as, kept across restarts so /mnt/data stays theirs."""
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._data_dir: Path | None = None
        self._session: KernelSession | None = None
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._image_numbers = itertools.count(1)
        self._finalizer: weakref.finalize | None = None
        self._data_dir_cleanup: weakref.finalize | None = None

    def namespace_config(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig.python()

    @property
    def data_dir(self) -> Path:
        """The host directory the code sees as /mnt/data (created on first use)."""
        if self._data_dir is None:
            if self._given_data_dir is not None:
                self._given_data_dir.mkdir(parents=True, exist_ok=True)
                # Resolved once: later opens refuse a link as the last component.
                self._data_dir = self._given_data_dir.resolve()
            else:
                self._data_dir = Path(tempfile.mkdtemp(prefix="harmony-data-"))
                # Removed by aclose(), or when the tool is garbage-collected or Python exits.
                self._data_dir_cleanup = weakref.finalize(
                    self, host_files.remove_tree, self._data_dir
                )
        return self._data_dir

    async def call(self, call: ToolCall) -> str:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Used from a new event loop (a second `asyncio.run`, another agent): asyncio
            # objects of the old loop cannot be awaited here.
            self._loop, self._lock = loop, asyncio.Lock()
        async with self._lock:
            before: list[str] = []
            try:
                session = await self._ensure_session(before)
            except KernelStartError as e:
                return f"The Python tool is unavailable: {e}."
            output, after = await self._run(session, call.arguments)
            parts = [p for p in (*before, output, *after) if p]
            return "\n\n".join(parts) if parts else "[no output]"

    async def reset(self) -> None:
        """Restart the kernel: the next call starts a fresh one, without the variables, imports
        and definitions of earlier calls. Files in /mnt/data are kept."""
        # No lock, as in aclose(): killing the kernel also ends a call in progress.
        self._kill_session()

    async def aclose(self) -> None:
        """Kill the kernel and everything it started; remove the default data directory."""
        # No lock: closing must work from any loop, and killing the kernel ends any call.
        self._kill_session()
        if self._uid_lease is not None:
            self._uid_lease.release()
            self._uid_lease = None
        if self._data_dir_cleanup is not None:
            self._data_dir_cleanup()
            self._data_dir_cleanup = None
        self._data_dir = None

    # -- internals ----------------------------------------------------------------------------

    @property
    def sandbox_uid(self) -> int | None:
        """The host uid the model's code runs as (None when it is this process's own)."""
        return self._session.kernel.uid if self._session is not None else None

    def _launch(self) -> KernelProcess:
        config = self.sandbox_config
        if not self.unsandboxed and config.uid is None and probe(config).as_root:
            if self._uid_lease is None:
                self._uid_lease = lease_uid()
            config = replace(config, uid=self._uid_lease.uid)
        return start_kernel(
            self.data_dir,
            config=config,
            dangerously_unsandboxed=self.unsandboxed,
            stream_chars=self.max_output_chars,
        )

    async def _ensure_session(self, notes: list[str]) -> KernelSession:
        session = self._session
        if session is not None and session.stale_msg_id is not None:
            # A cancelled call left code running: give it the grace an interrupt gets.
            outcome = await session.wait_idle(
                session.stale_msg_id, None, time.monotonic() + self.interrupt_grace
            )
            session.stale_msg_id = None
            if outcome == "dead":
                notes.append(self._death_note(session))
                self._kill_session()
            elif outcome == "timeout":
                self._kill_session()
                notes.append(
                    "[The previous call was cancelled and did not stop, so the kernel was "
                    f"restarted: {self._state_lost()}]"
                )
        if self._session is not None and self._session.loop is not asyncio.get_running_loop():
            try:
                await self._session.reconnect(self.startup_timeout)
            except KernelStartError:
                notes.append(self._death_note(self._session))
                self._kill_session()
        if self._session is None:
            self._session = await KernelSession.start(self._launch, self.startup_timeout)
            kernel = self._session.kernel
            # If the tool is dropped without aclose(), still leave nothing running.
            self._finalizer = weakref.finalize(self, kernel.kill)
        return self._session

    def _kill_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.kill()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _state_lost(self) -> str:
        inside = "/mnt/data" if not self.unsandboxed else str(self.data_dir)
        return _STATE_LOST.format(data=inside)

    def _save_image(self, data: bytes, ext: str) -> str:
        # The code may have planted any name here (links to host files, FIFOs, loops): create
        # exclusively, relative to the directory, never following a link; skip taken names.
        # The file belongs to the sandbox's uid, like the code's own files.
        owner = self.sandbox_uid
        dir_fd = host_files.open_dir(self.data_dir)
        try:
            for _ in range(_IMAGE_NAME_TRIES):
                name = f"output_{next(self._image_numbers)}.{ext}"
                try:
                    host_files.write_new_file(dir_fd, name, data, owner=owner)
                except FileExistsError:
                    continue
                inside = "/mnt/data" if not self.unsandboxed else str(self.data_dir)
                return f"{inside}/{name}"
        finally:
            os.close(dir_fd)
        raise OSError(errno.EEXIST, f"{_IMAGE_NAME_TRIES} output names in a row were taken")

    async def _run(self, session: KernelSession, code: str) -> tuple[str, list[str]]:
        """The call's output, and notes on what went wrong (timeout, kernel death)."""
        notes: list[str] = []
        await session._drain()
        collector = OutputCollector(self._save_image, max_chars=self.max_output_chars)
        msg_id = session.client.execute(code, store_history=True, allow_stdin=False)
        try:
            outcome = await session.wait_idle(
                msg_id, collector, time.monotonic() + self.call_timeout
            )
            if outcome == "timeout":
                session.interrupt()
                outcome = await session.wait_idle(
                    msg_id, collector, time.monotonic() + self.interrupt_grace
                )
                collector.drop_keyboard_interrupt()
                if outcome == "idle":
                    notes.append(
                        f"[Execution timed out after {self.call_timeout:g} s and was interrupted; "
                        "the kernel's state from before this call is kept.]"
                    )
                else:
                    self._kill_session()
                    notes.append(
                        f"[Execution timed out after {self.call_timeout:g} s and did not stop when "
                        f"interrupted, so the kernel was restarted: {self._state_lost()}]"
                    )
            elif outcome == "dead":
                notes.append(self._death_note(session))
                self._kill_session()
        except asyncio.CancelledError:
            # The caller gave up (Ctrl-C, a turn limit): stop the code, settle on the next call.
            with contextlib.suppress(Exception):
                session.interrupt()
            session.stale_msg_id = msg_id
            raise
        return collector.text(), notes

    def _death_note(self, session: KernelSession) -> str:
        status = session.kernel.exit_status()
        if session.died_of_oom():
            limit = self.sandbox_config.memory_bytes / (1 << 30)
            cause = f"ran out of memory (limit {limit:g} GiB)"
        elif status is not None and status < 0:
            cause = f"was killed by signal {-status}"
        elif status is not None and status > 128:
            cause = f"was killed by signal {status - 128}"
        else:
            cause = f"exited (status {status})"
        return f"[The Python kernel {cause} and was restarted: {self._state_lost()}]"
