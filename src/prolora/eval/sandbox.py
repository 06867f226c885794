"""Run untrusted generated code (HumanEval completions) in a separate, isolated, resource-limited process.

The evaluating process never executes generated code. Each program gets a fresh temporary working
directory, a scrubbed environment, a new session, and is started through :mod:`._sandbox_boot`, which
(in the default ``namespaces`` mode) puts it in new user/mount/network/PID namespaces with every mount
read-only except its working directory and no network, drops all capabilities, applies address-space,
CPU, file-size and open-file limits, and forbids new processes with seccomp. The wall-clock timeout
kills the whole process group. ``rlimits`` mode keeps the limits and the seccomp filter but has no
namespaces: no network or filesystem isolation; use it only inside a disposable container or VM.

A program *passes* when it runs to its end with exit status 0; anything else (an exception, a failed
assertion, ``exit()``, a timeout, a limit) is a failure.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

SANDBOX_MODES = ("namespaces", "rlimits")
_BOOT = Path(__file__).with_name("_sandbox_boot.py")
_SETUP_TIMEOUT_S = 60.0  # interpreter start and isolation, before the program's own timeout starts


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this host (reported before any model generation starts)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits: wall-clock and CPU seconds, address space, size of any file it writes."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    file_size_mb: int = 16


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program: ``status`` is ``passed``, ``failed`` or ``timeout``; ``detail`` is the last
    line of its output (e.g. the exception), ``seconds`` its run time after isolation, ``processes`` how
    new processes were refused (``seccomp``, or ``RLIMIT_NPROC`` on CPUs the filter does not know)."""

    status: str
    detail: str
    seconds: float
    processes: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(output: bytes, limit: int = 300) -> str:
    lines = output.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][-limit:] if lines else ""


@dataclass(frozen=True)
class Sandbox:
    """Runs Python programs under the isolation of ``mode`` (see the module docstring)."""

    mode: str = "namespaces"
    limits: SandboxLimits = SandboxLimits()

    def __post_init__(self):
        if self.mode not in SANDBOX_MODES:
            raise ValueError(f"unknown sandbox mode {self.mode!r}; choose one of {', '.join(SANDBOX_MODES)}")
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable("the code sandbox needs Linux (namespaces, seccomp, rlimits); "
                                     "run HumanEval on Linux or leave it out of --tasks")

    def run(self, program: str) -> RunResult:
        """Run ``program`` (Python source) in a fresh sandbox and report how it ended."""
        with tempfile.TemporaryDirectory(prefix="prolora-sandbox-") as workdir, \
                tempfile.TemporaryFile() as output:
            workdir = os.path.realpath(workdir)
            program_path = os.path.join(workdir, "program.py")
            Path(program_path).write_text(program, encoding="utf-8")
            status_r, status_w = os.pipe()
            cfg = {"mode": self.mode, "workdir": workdir, "program": program_path, "status_fd": status_w,
                   "cpu_seconds": int(self.limits.timeout_s) + 1,
                   "memory_bytes": self.limits.memory_mb << 20, "file_size_bytes": self.limits.file_size_mb << 20}
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                   "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", str(_BOOT), json.dumps(cfg)], cwd=workdir,
                                        env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                        pass_fds=(status_w,), start_new_session=True)
            except OSError:
                os.close(status_r)
                raise
            finally:
                os.close(status_w)
            return self._wait(proc, status_r, output)

    def _wait(self, proc: subprocess.Popen, status_r: int, output) -> RunResult:
        status = _read_status(status_r)
        if not status.startswith("R"):
            _kill(proc)
            raise SandboxUnavailable(f"sandbox setup failed ({self.mode} mode): {status[1:] or 'no report'}. "
                                     + _FIX_HINT)
        processes, start = status[1:], time.monotonic()
        try:
            code = proc.wait(timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return RunResult("timeout", f"timed out after {self.limits.timeout_s:g} s", time.monotonic() - start,
                             processes)
        seconds = time.monotonic() - start
        output.seek(0)
        detail = _tail(output.read())
        return RunResult("passed" if code == 0 else "failed", detail if code else "", seconds, processes)

    def run_many(self, programs: list[str], workers: int | None = None) -> list[RunResult]:
        """Run several programs, ``workers`` at a time (default: the number of CPUs), in input order."""
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            return list(pool.map(self.run, programs))

    def check(self) -> dict:
        """Probe the host once: run a passing and a failing program. Returns :meth:`describe`'s dict plus
        how processes are refused; raises :class:`SandboxUnavailable` with the fix if isolation fails."""
        ok, bad = self.run("assert 1 + 1 == 2"), self.run("raise SystemExit(0)")
        if not ok.passed or bad.passed:
            raise SandboxUnavailable(f"sandbox self-test failed ({ok.status}/{bad.status}: {ok.detail or bad.detail})."
                                     + _FIX_HINT)
        return {**self.describe(), "processes": ok.processes}

    def describe(self) -> dict:
        """The isolation in effect, for the results file."""
        isolation = {
            "namespaces": "user+mount+network+PID namespaces; read-only filesystem except a temporary "
                          "working directory; no network; no capabilities; seccomp forbids new processes",
            "rlimits": "resource limits and seccomp only: NO network or filesystem isolation",
        }[self.mode]
        return {"mode": self.mode, "isolation": isolation, **asdict(self.limits)}


_FIX_HINT = (" The namespaces mode needs unprivileged user namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1,"
             " or on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0; Docker's default seccomp profile"
             " blocks them). Inside a disposable container or VM you may use --sandbox rlimits instead.")


def _read_status(fd: int) -> str:
    """The boot script's report (``R...`` ready or ``E...`` error) read until the pipe closes; empty if
    it died (or took longer than the setup timeout) before reporting. Closes ``fd``."""
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    chunks = []
    try:
        while (remaining := deadline - time.monotonic()) > 0 and select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _kill(proc: subprocess.Popen) -> None:
    """Kill the program's whole process group (it leads its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
