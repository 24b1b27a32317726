"""A fresh Jupyter kernel for one learner's notebook: no network, a time limit on every piece of code it runs.

The kernel talks to the grader over Unix sockets (jupyter's "ipc" transport), so it can live in a network
namespace of its own (`unshare --net --map-root-user`, no privileges needed where the system allows user
namespaces): there it has no network interface but loopback. Where `unshare` is missing or refused, the
kernel starts without it and `Sandbox.isolation` says so; the grade report prints it. A time limit is kept
from outside the kernel: past it, the kernel is interrupted (a KeyboardInterrupt), and killed if it does
not answer, so an endless loop costs at most its limit.

This keeps a submission from reaching the network and from running forever; it does not keep it from
reading or writing files as the grader's user. Grade learners' code inside a container or as a throwaway
account (INSTRUCTORS.md, "Running homework").
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import subprocess
import sys
import time

from jupyter_client import KernelManager

NO_NETWORK = ["unshare", "--net", "--map-root-user"]


@functools.lru_cache(maxsize=1)
def network_isolation() -> list[str]:
    """The command prefix that starts a process without network, or [] where this system refuses it."""
    if shutil.which("unshare") is None:
        return []
    try:
        result = subprocess.run([*NO_NETWORK, sys.executable, "-c", "pass"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return NO_NETWORK if result.returncode == 0 else []


class _IsolatedKernel(KernelManager):
    """A python3 kernel whose command line starts with `network_isolation()`'s prefix."""

    def format_kernel_cmd(self, extra_arguments=None):
        return network_isolation() + super().format_kernel_cmd(extra_arguments)


class Sandbox:
    """One fresh python3 kernel in `cwd`; `run(code, limit)` -> ("ok" | "error" | "timeout", what it printed)."""

    def __init__(self, cwd: str, env: dict[str, str]):
        self.isolation = "no network (own network namespace)" if network_isolation() else "NONE: unshare unavailable"
        ipc = os.path.join(os.path.abspath(cwd), "kernel")  # the sockets' path, absolute: the kernel starts in cwd
        self.manager = _IsolatedKernel(kernel_name="python3", transport="ipc", ip=ipc)
        self.manager.start_kernel(cwd=cwd, env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)
        self.alive = True

    def run(self, code: str, limit: float) -> tuple[str, str]:
        """Execute `code`; interrupt it after `limit` seconds (kill the kernel if it will not stop)."""
        texts = []

        def collect(message):
            if message["msg_type"] == "stream":
                texts.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                texts.append(f"{message['content']['ename']}: {message['content']['evalue']}\n")

        try:
            reply = self.client.execute_interactive(code, timeout=limit, output_hook=collect, allow_stdin=False,
                                                    stop_on_error=False)  # an error never aborts what comes next
        except TimeoutError:
            self._stop_runaway()
            return "timeout", "".join(texts)
        return ("ok" if reply["content"]["status"] == "ok" else "error"), "".join(texts)

    def _stop_runaway(self, grace: float = 10.0) -> None:
        """Interrupt the running code and wait for its reply; a kernel that does not stop is killed."""
        self.manager.interrupt_kernel()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                message = self.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                break
            if message["msg_type"] == "execute_reply":
                return
        self.close()

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=True)


def kernel_env(fast: bool = True) -> dict[str, str]:
    """The kernel's environment: the grader's, on one CPU thread, fast mode, no display, no proxies."""
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", DIFFUSION_COURSE_DEVICE="cpu",
               PYTHONDONTWRITEBYTECODE="1")
    if fast:
        env["DIFFUSION_COURSE_FAST"] = "1"
    return env
