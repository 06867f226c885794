"""Run untrusted generated code (HumanEval completions) in separate, isolated, resource-limited processes.

The evaluating process never executes generated code. Each process gets its code and configuration on
standard input (never in a file, ``argv`` or the environment), a scrubbed environment, a new session and
a fresh empty folder, and is started through :mod:`._sandbox_boot`, which (in the default
``namespaces`` mode) puts it in new user/mount/network/PID/IPC namespaces with a new read-only root that
holds only the interpreter's shared-library and standard-library folders, a private ``/proc`` and a
size-capped ``tmpfs`` on ``/tmp`` as its working folder (nothing of the host's files otherwise, the data
set included; nothing it writes reaches the host's disk), no network, drops all capabilities, applies
address-space, CPU, file-size and open-file limits, and with seccomp forbids new processes and threads,
signals to or debugging of other processes, changes to its view of files, memory outside its address
space and leaving its process group; every process dies with the evaluator. The wall-clock timeout
kills the whole process group. ``rlimits`` mode keeps the limits and the seccomp filter but has no namespaces: NO
network or filesystem isolation (the folder cap is enforced by polling), and a completion can read the
data set's tests; use it only inside a disposable container or VM. :meth:`Sandbox.describe` (written to
``results.json``: ``tests_hidden``) and a warning on stderr say so whenever it is chosen.

For HumanEval (:class:`Program` with an ``entry_point``) the completion and the test run in two
processes started apart, which share nothing but the two pipes of the calls: the *candidate* only ever
receives the problem's prompt and the completion and answers calls with plain data; the *checker*
receives the prompt and the test and calls ``check``. A program *passes* only when the harness proves
that it (for HumanEval: ``check(entry_point)``) returned: after that, the harness reads the run's random
nonce from a pipe that only it holds and hands it back; the evaluator compares it with the nonce it
generated. Leaving early with status 0 (``os._exit``, ``sys.exit``, ``SystemExit`` in an ``atexit``
handler, killing a parent), an exception, a failed assertion, a timeout or a limit is a failure.
docs/security.md says what this does and does not guarantee.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

SANDBOX_MODES = ("namespaces", "rlimits")
_BOOT = Path(__file__).with_name("_sandbox_boot.py")
_SETUP_TIMEOUT_S = 60.0  # interpreter start and isolation, before the program's own timeout starts
_POLL_S = 0.1  # how often the rlimits mode measures the working folder
_READY = ("Rseccomp\n", "RRLIMIT_NPROC\n")  # the boot script's ready reports

RLIMITS_WARNING = (
    "sandbox mode 'rlimits' has NO filesystem or network isolation: generated code runs as this "
    "user, can read and write any file this user can (the benchmark's data set, tests included: a "
    "completion written to cheat can pass) and reach the network; use it only inside a "
    "disposable container or VM, for completions you trust (docs/security.md)"
)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this host (reported before any model generation starts)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits: wall-clock and CPU seconds, address space, size of any file it writes, and the
    total size (MB) and number of files of its working folder."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    folder_mb: int = 32
    folder_files: int = 1000

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "file_size_mb", "folder_mb", "folder_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name}={getattr(self, name)!r} must be positive")


@dataclass(frozen=True)
class Program:
    """A program to run.

    Without ``entry_point``: ``source``, then ``test`` (compiled on its own, so that no text in
    ``source`` can swallow it), in one process; it passes when both ran to their end.

    With ``entry_point`` (HumanEval): two processes, started apart. The candidate gets ``source`` alone
    (the problem's prompt and the untrusted completion), runs it and answers calls of ``entry_point`` with
    plain data; the checker, which the candidate can neither see nor touch, gets ``prompt`` (the
    problem's prompt alone, from the dataset) and ``test``, runs them and calls
    ``check(<proxy of entry_point>)``; it passes when ``check`` returned.
    """

    source: str
    test: str = ""
    entry_point: str | None = None
    prompt: str = ""


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program: ``status`` is ``passed``, ``failed`` or ``timeout``; ``detail`` is the last
    line of its output (e.g. the exception) or why it failed, ``seconds`` its run time after isolation,
    ``processes`` how new processes were refused (``seccomp``, or ``RLIMIT_NPROC`` on CPUs the filter
    does not know)."""

    status: str
    detail: str
    seconds: float
    processes: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class _Process:
    """One started boot process: its status pipe, output file and folder."""

    proc: subprocess.Popen
    status_r: int
    output: object
    folder: str

    def read_output(self) -> bytes:
        self.output.seek(0)
        return self.output.read()


class _Descriptors:
    """Pipes of one run, each end closed exactly once (a second close could hit another thread's file)."""

    def __init__(self):
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self.open |= {read, write}
        return read, write

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self.open:
                self.open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*sorted(self.open))


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
            raise SandboxUnavailable(
                "the code sandbox needs Linux (namespaces, seccomp, rlimits); "
                "run HumanEval on Linux or leave it out of --tasks"
            )

    @property
    def hides_tests(self) -> bool:
        """Whether a completion cannot see its test, the data set or the checker (``namespaces`` mode only;
        in ``rlimits`` mode it can read any file this user can)."""
        return self.mode == "namespaces"

    def run(self, program: str | Program) -> RunResult:
        """Run ``program`` (Python source, or a :class:`Program`) in a fresh sandbox and report how it ended."""
        if isinstance(program, str):
            program = Program(program)
        nonce = secrets.token_hex(16).encode()
        with ExitStack() as stack:
            fds = _Descriptors()
            stack.callback(fds.close_all)
            nonce_r, nonce_w = fds.pipe()
            os.write(nonce_w, nonce)  # read by the harness only after the program (its check) returned
            fds.close(nonce_w)
            proof_r, proof_w = fds.pipe()
            if program.entry_point is None:
                trusted = {"role": "program", "source": program.source, "test": program.test}
                processes = [self._start(stack, fds, trusted, {"nonce": nonce_r, "proof": proof_w})]
            else:  # two processes that share nothing but the two pipes of the calls
                calls_r, calls_w = fds.pipe()
                answers_r, answers_w = fds.pipe()
                trusted = {
                    "role": "checker",
                    "prompt": program.prompt,
                    "test": program.test,
                    "entry_point": program.entry_point,
                }
                untrusted = {
                    "role": "candidate",
                    "source": program.source,
                    "entry_point": program.entry_point,
                }
                checker_pipes = {"calls": calls_w, "answers": answers_r, "nonce": nonce_r, "proof": proof_w}
                processes = [
                    self._start(stack, fds, trusted, checker_pipes),
                    self._start(stack, fds, untrusted, {"calls": calls_r, "answers": answers_w}),
                ]
                fds.close(calls_r, calls_w, answers_r, answers_w)
            fds.close(nonce_r, proof_w)
            return self._wait(processes, fds, proof_r, nonce)

    def _start(self, stack: ExitStack, fds: _Descriptors, cfg: dict, pipes: dict) -> _Process:
        """Start one boot process with ``cfg`` (and its code) on its standard input, ``pipes`` (name:
        descriptor) inherited, a fresh empty folder (the new root's mount point; in ``rlimits`` mode its
        working folder) and its own output file; ``stack`` kills and removes it all."""
        folder = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="prolora-sandbox-", ignore_cleanup_errors=True)
        )
        folder = os.path.realpath(folder)
        output = stack.enter_context(tempfile.TemporaryFile())
        status_r, status_w = fds.pipe()
        cfg = {
            **cfg,
            "mode": self.mode,
            "workdir": folder,
            "status_fd": status_w,
            "evaluator_pid": os.getpid(),
            "pipes": pipes,
            "cpu_seconds": int(self.limits.timeout_s) + 1,
            "memory_bytes": self.limits.memory_mb << 20,
            "file_size_bytes": self.limits.file_size_mb << 20,
            "folder_bytes": self.limits.folder_mb << 20,
            "folder_files": self.limits.folder_files,
        }
        home = "/tmp" if self.mode == "namespaces" else folder  # the working folder as the program sees it
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_BOOT)],
                cwd=folder,
                env=env,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w, *pipes.values()),
                start_new_session=True,
            )
        finally:
            fds.close(status_w)
        process = _Process(proc, status_r, output, folder)
        stack.callback(_kill, proc)
        try:
            proc.stdin.write(json.dumps(cfg).encode())  # read whole before the boot script does anything
            proc.stdin.close()
        except BrokenPipeError:  # it died at once: _wait reports its missing status
            pass
        return process

    def _wait(self, processes: list[_Process], fds: _Descriptors, proof_r: int, nonce: bytes) -> RunResult:
        """Wait for the setup reports, then for the first process (the program, or the checker) to end,
        within the timeout; the pass needs exit status 0 and the proof."""
        statuses = []
        for process in processes:
            statuses.append(_read_status(process.status_r))
            fds.close(process.status_r)
        for status in statuses:
            if status not in _READY:
                if status.startswith(
                    "R"
                ):  # more than the boot script wrote: only the program can have done it
                    return RunResult("failed", "the program wrote to the sandbox's status pipe", 0.0, "")
                raise SandboxUnavailable(
                    f"sandbox setup failed ({self.mode} mode): {status[1:].strip() or 'no report'}. "
                    + _FIX_HINT
                )
        main = processes[0]
        how, start = statuses[0][1:].strip(), time.monotonic()
        deadline, over = start + self.limits.timeout_s, None
        while True:  # in rlimits mode the folders have no cap of their own: measure them while they run
            try:
                code = main.proc.wait(timeout=max(min(_POLL_S, deadline - time.monotonic()), 0.001))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return RunResult(
                        "timeout",
                        f"timed out after {self.limits.timeout_s:g} s",
                        time.monotonic() - start,
                        how,
                    )
                if self.mode == "rlimits" and (over := self._folders_over(processes)):
                    break
        seconds = time.monotonic() - start
        if over is None and self.mode == "rlimits":
            over = self._folders_over(processes)
        if over:
            return RunResult("failed", over, seconds, how)
        detail = _tail(main.read_output())
        if len(processes) > 1 and "CandidateError" in detail:  # the completion's own error says more
            _kill(processes[1].proc)
            if completion := _tail(processes[1].read_output()):
                detail = f"{detail} (the completion: {completion})"
        proof = _read_available(proof_r)
        if code == 0 and secrets.compare_digest(proof, nonce):
            return RunResult("passed", "", seconds, how)
        if code == 0:  # status 0, but the harness never handed back the proof
            detail = "left before the program (and its check) returned" + (
                f"; last output: {detail}" if detail else ""
            )
        return RunResult("failed", detail, seconds, how)

    def _folders_over(self, processes: list[_Process]) -> str | None:
        for process in processes:
            if over := self._folder_over(process.folder):
                return over
        return None

    def _folder_over(self, workdir: str) -> str | None:
        """rlimits mode: a failure message when ``workdir`` holds more bytes or files than the limits allow."""
        total = files = 0
        for root, dirs, names in os.walk(workdir):
            for name in names + dirs:
                files += 1
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue
                if files > self.limits.folder_files or total > self.limits.folder_mb << 20:
                    return (
                        f"the working folder exceeded its limit ({self.limits.folder_mb} MB, "
                        f"{self.limits.folder_files} files)"
                    )
        return None

    def run_many(self, programs: list[str | Program], workers: int | None = None) -> list[RunResult]:
        """Run several programs, ``workers`` at a time (default: the number of CPUs), in input order."""
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            return list(pool.map(self.run, programs))

    def check(self) -> dict:
        """Probe the host once: run a passing and a failing program. Returns :meth:`describe`'s dict plus
        how processes are refused; raises :class:`SandboxUnavailable` with the fix if isolation fails."""
        ok, bad = self.run("assert 1 + 1 == 2"), self.run("import os\nos._exit(0)")
        if not ok.passed or bad.passed:
            raise SandboxUnavailable(
                f"sandbox self-test failed ({ok.status}/{bad.status}: {ok.detail or bad.detail})." + _FIX_HINT
            )
        return {**self.describe(), "processes": ok.processes}

    def describe(self) -> dict:
        """The isolation in effect, for the results file; ``warning`` says what is missing (rlimits mode)."""
        isolation = {
            "namespaces": "user+mount+network+PID+IPC namespaces; a read-only root with only the shared and "
            "standard libraries and a size-capped temporary working directory (tmpfs); the completion runs "
            "apart from its test and never receives it (nor sees the data set); no network; no "
            "capabilities; seccomp forbids new processes and threads, signals to other processes and mounts; a pass "
            "needs the harness's proof that check() returned",
            "rlimits": "resource limits and seccomp only: NO network or filesystem isolation (a completion can "
            "read the data set's tests); a pass needs the harness's proof that check() returned",
        }[self.mode]
        info = {
            "mode": self.mode,
            "isolation": isolation,
            "tests_hidden": self.hides_tests,
            **asdict(self.limits),
        }
        if self.mode == "rlimits":
            info["warning"] = RLIMITS_WARNING
        return info


_FIX_HINT = (
    " The namespaces mode needs unprivileged user namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1,"
    " or on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0; Docker's default seccomp profile"
    " blocks them). Inside a disposable container or VM you may use --sandbox rlimits instead."
)


def _read_available(fd: int, limit: int = 4096) -> bytes:
    """What pipe ``fd`` holds now (its writers have exited), at most ``limit`` bytes."""
    chunks, size = [], 0
    while size < limit and select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_status(fd: int) -> str:
    """The boot script's report (``R...`` ready or ``E...`` error), one line, read until its newline or
    until the pipe closes; empty if it died (or took longer than the setup timeout) before reporting."""
    deadline = time.monotonic() + _SETUP_TIMEOUT_S
    chunks = []
    while (remaining := deadline - time.monotonic()) > 0 and select.select([fd], [], [], remaining)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def _kill(proc: subprocess.Popen) -> None:
    """Kill the program's whole process group (it leads its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
