"""The HumanEval code sandbox: correct programs pass, wrong ones fail, hostile ones fail and harm nothing."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from prolora.eval.benchmarks.humaneval import program
from prolora.eval.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=512)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox("namespaces", LIMITS)
    try:
        box.check()
    except SandboxUnavailable as exc:
        pytest.skip(f"namespaces sandbox unavailable on this host: {exc}")
    return box


@pytest.fixture(scope="module")
def weak_sandbox():
    return Sandbox("rlimits", LIMITS)


def _problems() -> list[dict]:
    rows = [
        json.loads(line) for line in (FIXTURES / "humaneval" / "HumanEval.jsonl").read_text().splitlines()
    ]
    return [
        {
            "problem_prompt": r["prompt"],
            "test": r["test"],
            "entry_point": r["entry_point"],
            "canonical_solution": r["canonical_solution"],
        }
        for r in rows
    ]


def test_canonical_solutions_pass_and_corrupted_ones_fail(sandbox):
    problems = _problems()
    canonical = [program(p, p["canonical_solution"]) for p in problems]
    returns_none = [program(p, "    return None\n") for p in problems]
    # HumanEval/2 truncate_number: the integer part instead of the decimal part
    off_by_operator = program(problems[2], problems[2]["canonical_solution"].replace("%", "//"))
    results = sandbox.run_many(canonical + returns_none + [off_by_operator])
    assert [r.status for r in results[:4]] == ["passed"] * 4, [r.detail for r in results[:4]]
    assert [r.status for r in results[4:]] == ["failed"] * 5
    assert "AssertionError" in results[-1].detail


def test_syntax_error_and_exit_fail(sandbox):
    assert sandbox.run("def f(:\n    pass").status == "failed"
    assert sandbox.run("import sys\nsys.exit(0)").status == "failed"  # skipping the tests is not a pass


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_leaving_early_with_status_0_is_not_a_pass(mode, sandbox):
    box = Sandbox(mode, LIMITS)
    for early in ("import os\nos._exit(0)\nassert False", "import os, threading\nos._exit(0)"):
        result = box.run(early)
        assert result.status == "failed" and "left before the program" in result.detail


def _processes_with_address_space_limit(limit: int) -> list[int]:
    """Host PIDs of sandbox processes (their command line runs the boot script) with this RLIMIT_AS."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            limits = Path(f"/proc/{pid}/limits").read_text()
        except OSError:
            continue
        if b"_sandbox_boot.py" in cmdline and f"Max address space         {limit} " in limits:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_nothing_outlives_the_run(mode, sandbox):
    """A program that clears its parent-death signal and leaves the process group (``setsid``, which
    seccomp now refuses) once survived the evaluator's kill: reparented to the host's init, asleep, holding
    its memory after ``prolora eval`` ended. An unusual memory limit marks this test's processes."""
    import signal

    box = Sandbox(mode, SandboxLimits(timeout_s=1.0, memory_mb=517))
    escape = (
        "import ctypes, os, time\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none\n"
        "for leave in (os.setsid, lambda: os.setpgid(0, 0)):\n"
        "    try:\n        leave()\n    except PermissionError:\n        pass\n"
        "time.sleep(60)\n"
    )
    assert box.run(escape).status == "timeout"
    time.sleep(0.5)
    survivors = _processes_with_address_space_limit(517 << 20)
    for pid in survivors:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_nothing_outlives_the_evaluator(mode, sandbox):
    """``prolora eval`` stopped by SIGTERM (a scheduler) in the middle of a run: its sandbox processes die
    with it, even a completion that clears its parent-death signal. They once lived on, asleep."""
    import signal
    import subprocess
    import sys

    import prolora

    evaluator = (
        f"import sys\nsys.path.insert(0, {str(Path(prolora.__file__).parents[1])!r})\n"
        "from prolora.eval.sandbox import Program, Sandbox, SandboxLimits\n"
        f"box = Sandbox({mode!r}, SandboxLimits(timeout_s=60.0, memory_mb=519))\n"
        "completion = 'import ctypes, time\\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\\ntime.sleep(60)\\n'\n"
        "box.run(Program('def f(x):\\n    return x\\n' + completion, 'def check(c):\\n    assert c(1) == 1\\n',"
        " 'f', prompt='def f(x):\\n    pass\\n'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", evaluator])
    try:
        deadline = time.monotonic() + 60
        while len(_processes_with_address_space_limit(519 << 20)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # until both the checker and the candidate run their code
        assert len(_processes_with_address_space_limit(519 << 20)) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    time.sleep(1)
    survivors = _processes_with_address_space_limit(519 << 20)
    for pid in survivors:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_infinite_loop_times_out(sandbox):
    started = time.monotonic()
    result = sandbox.run("while True:\n    pass")
    assert result.status == "timeout"
    assert time.monotonic() - started < LIMITS.timeout_s + 10


def test_fork_bomb_is_contained(sandbox):
    started = time.monotonic()
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert result.status == "failed" and "Operation not permitted" in result.detail
    assert time.monotonic() - started < LIMITS.timeout_s  # refused at the first fork, nothing to wait for
    assert sandbox.run("import subprocess\nsubprocess.run(['true'])").status == "failed"
    # nor threads: each one takes a host PID outside the address-space limit (see the thread bomb below)
    result = sandbox.run("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()")
    assert result.status == "failed" and "can't start new thread" in result.detail


# A thread bomb that needs no memory: raw clone(CLONE_THREAD) of libc's pause() on 4 KiB stacks. Before
# threads were refused, 3000 of them started in 0.34 s in a 512 MB sandbox; 30000 (the host's pid_max
# is 32768 here) would leave the whole machine unable to start a process until the timeout.
_THREAD_BOMB = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]\n"
    "stacks = ctypes.create_string_buffer(100 * 4096)\nstarted = 0\n"
    "for i in range(100):\n"
    "    top = ctypes.c_void_p(ctypes.addressof(stacks) + (i + 1) * 4096 - 64)\n"
    "    # CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM\n"
    "    started += libc.clone(ctypes.cast(libc.pause, ctypes.c_void_p), top, 0x50F00, None) > 0\n"
    "assert started == 0 and ctypes.get_errno() == 1, (started, ctypes.get_errno())\n"
    "assert os.listdir('/proc/self/task') == [str(os.getpid())]\n"
)


# io_uring makes threads too: each request forced asynchronous (IOSQE_ASYNC) that blocks, such as a splice
# from an empty pipe, gets a kernel worker thread of its own ("iou-wrk-*", a host PID), created without
# clone; with threads refused, 200 requests still gave 200 workers in the sandbox. io_uring_setup (425 on
# every architecture) must be refused.
_IO_URING = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "fd = libc.syscall(425, 8, ctypes.create_string_buffer(120))\n"
    "assert fd == -1 and ctypes.get_errno() == 1, (fd, ctypes.get_errno())\n"
)


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_thread_bomb_is_contained(mode, sandbox):
    results = Sandbox(mode, LIMITS).run_many([_THREAD_BOMB, _IO_URING], workers=2)
    assert [r.status for r in results] == ["passed", "passed"], [r.detail for r in results]


def test_writes_outside_the_working_directory_are_not_visible(sandbox, tmp_path):
    target = tmp_path / "written-by-sandbox.txt"
    result = sandbox.run(f"open({str(target)!r}, 'w').write('x')")
    assert result.status == "failed" and "No such file or directory" in result.detail  # not in its root
    assert not target.exists()
    # what it can see (the standard library, the shared libraries, its root) is read-only
    for folder in ("os.path.dirname(os.__file__)", "'/'", "'/usr/lib/x86_64-linux-gnu'"):
        result = sandbox.run(f"import os\nopen(os.path.join({folder}, 'written-by-sandbox'), 'w')")
        assert result.status == "failed" and "Read-only file system" in result.detail, result.detail
    # its own temporary working directory is writable
    assert sandbox.run("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'").passed


def test_deleting_files_harms_nothing(sandbox, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    assert sandbox.run(f"import os\nos.remove({str(keep)!r})").status == "failed"
    assert sandbox.run(f"import shutil\nshutil.rmtree({str(tmp_path)!r})").status == "failed"
    assert keep.read_text() == "precious"


def test_filesystem_cannot_be_made_writable_again(sandbox):
    remount = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mount(None, b'/', None, 32 | 4096, None) == 0, ctypes.get_errno()"
    )  # MS_REMOUNT|MS_BIND
    assert sandbox.run(remount).status == "failed"


def test_memory_bomb_fails(sandbox):
    result = sandbox.run("x = bytearray(2 << 30)")
    assert result.status == "failed" and "MemoryError" in result.detail
    # a growing bomb touches every page before it hits the limit: allow for a loaded machine
    patient = Sandbox("namespaces", SandboxLimits(timeout_s=20.0, memory_mb=256))
    result = patient.run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))")
    assert result.status == "failed" and "MemoryError" in result.detail


def test_no_network_not_even_the_hosts_loopback(sandbox):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
    assert result.status == "failed"
    assert sandbox.run("import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo']").passed


def test_host_processes_are_hidden(sandbox):
    assert sandbox.run("import os\nassert len([p for p in os.listdir('/proc') if p.isdigit()]) <= 2").passed


def test_host_folders_are_not_in_its_root(sandbox, tmp_path):
    """The project, its virtual environment, the temporary folders and home are not there at all."""
    import sys
    import tempfile

    absent = [
        str(Path(__file__).parent),
        sys.prefix,
        str(tmp_path),
        tempfile.gettempdir() + "/pytest-of-root",
    ]
    absent = [path for path in absent if Path(path).exists()]  # each exists here, outside
    assert len(absent) >= 3
    result = sandbox.run(f"import os\nassert not [p for p in {absent!r} if os.path.exists(p)]")
    assert result.passed, result.detail


def test_describe_names_the_isolation(sandbox):
    info = sandbox.describe()
    assert info["mode"] == "namespaces" and "no network" in info["isolation"] and info["timeout_s"] == 2.0


def test_rlimits_mode_still_contains_loops_forks_memory_and_deletions(weak_sandbox, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    assert weak_sandbox.run("assert sum([1, 2]) == 3").passed
    assert weak_sandbox.run("import os\nwhile True:\n    os.fork()").status == "failed"
    assert weak_sandbox.run("x = bytearray(2 << 30)").status == "failed"
    assert weak_sandbox.run(f"import os\nos.remove({str(keep)!r})").status == "failed"
    assert weak_sandbox.run("while True:\n    pass").status == "timeout"
    assert keep.exists()
    assert "NO network" in weak_sandbox.describe()["isolation"]


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="namespaces, rlimits"):
        Sandbox("docker")


# ------------------------------------------------------------- a pass is proof that check() returned
GOOD = "    return number % 1.0\n"  # HumanEval/2 truncate_number
# every way of leaving with status 0 before check() returns, or of faking a pass, must fail
EARLY_EXITS = {
    "os._exit(0) at top level": "    return 0.0\nimport os\nos._exit(0)\n",
    "sys.exit(0) at top level": "    return 0.0\nimport sys\nsys.exit(0)\n",
    "SystemExit(0) inside the candidate": "    raise SystemExit(0)\n",
    "os._exit(0) inside the candidate": "    import os\n    os._exit(0)\n",
    "atexit handler raising SystemExit(0)": "    return 0.0\nimport atexit, sys\ndef _f():\n    raise SystemExit(0)\n"
    "atexit.register(_f)\nsys.exit(1)\n",
    "atexit handler calling os._exit(0)": "    return 0.0\nimport atexit, os\natexit.register(os._exit, 0)\n"
    "raise KeyboardInterrupt\n",
    "exec trick": "    return 0.0\nexec(compile('import os; os._exit(0)', 'x', 'exec'))\n",
    "patched builtins, then exit": "    return 0.0\nimport builtins, os\nbuiltins.print = lambda *a, **k: None\n"
    "builtins.AssertionError = type('A', (Exception,), {})\nos._exit(0)\n",
    "own check() that swallows the test": "    return 0.0\ndef check(candidate):\n    pass\n_ = '''\n",
    "own check() overridden by the test's": "    return 0.0\ndef check(candidate):\n    pass\n",
    "kill the parent": "    return number % 1.0\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "forged proof on every descriptor": "    return 0.0\nimport os\nfor fd in range(3, 64):\n    try:\n"
    "        os.write(fd, b'0' * 32)\n    except OSError:\n        pass\n"
    "os._exit(0)\n",
    "a thread exits 0 during check()": "    import os, threading, time\n"
    "    threading.Thread(target=os._exit, args=(0,)).start()\n"
    "    time.sleep(2)\n    return number % 1.0\n",
    # written to attack this harness: steal the nonce from any pipe, or reach the checker through /proc
    "nonce read from every pipe and written back": (
        "    return 0.0\nimport os, stat\nseen = {}\nfor fd in range(3, 64):\n    try:\n"
        "        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n            os.set_blocking(fd, False)\n"
        "            seen[fd] = os.read(fd, 256)\n    except OSError:\n        pass\n"
        "for fd in range(3, 64):\n    for data in seen.values():\n        try:\n"
        "            os.write(fd, data)\n        except OSError:\n            pass\nos._exit(0)\n"
    ),
    "the checker's descriptors through /proc": (
        "    return 0.0\nimport os\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for fd in range(64):\n        try:\n"
        "            os.write(os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK), b'0' * 32)\n"
        "        except OSError:\n            pass\nos._exit(0)\n"
    ),
    "an object equal to everything": "    class E(float):\n        def __eq__(self, other):\n"
    "            return True\n        __sub__ = lambda self, other: 0.0\n"
    "        __abs__ = lambda self: 0.0\n    return E(0.0)\n",
}


def _deletes_ignoring_errors(root: Path) -> str:
    return (
        "    import os, shutil, pathlib\n"
        f"    shutil.rmtree({str(root)!r}, ignore_errors=True)\n"
        f"    for p in pathlib.Path({str(root)!r}).rglob('*'):\n"
        "        try:\n            p.unlink()\n        except Exception:\n            pass\n"
        "    return number % 1.0\n"
    )


def _score_predictions(tmp_path: Path, rows: list[dict], *extra: str) -> tuple[int, Path]:
    from prolora.cli import main

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--tasks",
            "humaneval",
            "--predictions",
            str(samples),
            "--humaneval",
            str(FIXTURES / "humaneval"),
            "--sandbox-timeout",
            "5",
            "--sandbox-workers",
            "2",
            "--output-dir",
            str(out),
            *extra,
        ]
    )
    return code, out


def test_predictions_file_early_exits_fail_and_deleting_nothing_outside_passes(sandbox, tmp_path):
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "keep.txt").write_text("keep")
    (precious / "sub" / "keep.bin").write_bytes(b"\0\1")
    before = {p: p.read_bytes() for p in precious.rglob("*") if p.is_file()}
    canonical = {p["task_id"]: p["canonical_solution"] for p in _problems_with_ids()}
    rows = [
        {"task_id": task_id, "completion": c} for task_id, c in canonical.items() if task_id != "HumanEval/2"
    ]
    rows += [
        {"task_id": "HumanEval/2", "completion": c}
        for c in [GOOD, _deletes_ignoring_errors(precious), *EARLY_EXITS.values()]
    ]
    code, out = _score_predictions(tmp_path, rows)
    assert code == 0
    results = [
        json.loads(line) for line in (out / "humaneval_samples_results.jsonl").read_text().splitlines()
    ]
    assert [r["task_id"] for r in results] == [r["task_id"] for r in rows]  # file order
    assert all(r["passed"] for r in results[:5]), [r["result"] for r in results[:5]]
    outcomes = dict(zip(EARLY_EXITS, results[5:], strict=False))
    assert [name for name, r in outcomes.items() if r["passed"]] == []
    assert before == {
        p: p.read_bytes() for p in precious.rglob("*") if p.is_file()
    }  # nothing outside changed
    summary = json.loads((out / "results.json").read_text())
    score = summary["runs"][0]["scores"]["humaneval"]
    n = 2 + len(EARLY_EXITS)
    assert score["n"] == 4 and score["samples"] == len(rows)
    assert score["pass@1"] == pytest.approx(100 * (3 + 2 / n) / 4)
    assert summary["sandbox"]["mode"] == "namespaces" and "warning" not in summary["sandbox"]
    assert summary["sandbox"]["tests_hidden"] is True and "allow_visible_tests" not in summary["sandbox"]
    per_problem = [
        json.loads(line)
        for line in (out / "predictions" / "predictions" / "humaneval.jsonl").read_text().splitlines()
    ]
    assert [p["id"] for p in per_problem] == ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3"]
    assert [c["status"] for c in per_problem[2]["completions"]][:2] == ["passed", "passed"]


def _problems_with_ids() -> list[dict]:
    return [
        json.loads(line) for line in (FIXTURES / "humaneval" / "HumanEval.jsonl").read_text().splitlines()
    ]


def test_predictions_file_errors_name_the_problem(tmp_path, capsys):
    code, _ = _score_predictions(tmp_path, [{"task_id": "HumanEval/0", "completion": GOOD}])
    assert code == 2 and "3 of 4 problems have no completion" in capsys.readouterr().err
    code, _ = _score_predictions(tmp_path, [{"task_id": "HumanEval/99", "completion": GOOD}])
    assert code == 2 and "'HumanEval/99' is not among" in capsys.readouterr().err
    code, _ = _score_predictions(tmp_path, [{"task_id": "HumanEval/0"}])
    assert code == 2 and "samples.jsonl:1" in capsys.readouterr().err
    code, _ = _score_predictions(tmp_path, [{"task_id": "HumanEval/0", "completion": GOOD}], "--adapter", "x")
    assert code == 2 and "drop --adapter" in capsys.readouterr().err


def test_allow_visible_tests_without_predictions_is_an_error(tmp_path, capsys):
    from prolora.cli import main

    code = main(["eval", "--tasks", "humaneval", "--allow-visible-tests", "--output-dir", str(tmp_path)])
    assert code == 2 and "--allow-visible-tests applies to --predictions only" in capsys.readouterr().err


def test_rlimits_mode_warns_in_output_and_results(tmp_path, capsys):
    rows = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in _problems_with_ids()]
    rows.append({"task_id": "HumanEval/2", "completion": EARLY_EXITS["os._exit(0) at top level"]})
    # it cannot hide the tests: a predictions file is refused there unless the user opts in
    code, out = _score_predictions(tmp_path, rows, "--sandbox", "rlimits")
    assert code == 2 and not out.exists()
    assert "cannot hide the tests" in capsys.readouterr().err
    code, out = _score_predictions(tmp_path, rows, "--sandbox", "rlimits", "--allow-visible-tests")
    assert code == 0
    assert "WARNING: sandbox mode 'rlimits' has NO filesystem or network isolation" in capsys.readouterr().err
    summary = json.loads((out / "results.json").read_text())
    assert "NO filesystem or network isolation" in summary["sandbox"]["warning"]
    assert summary["sandbox"]["tests_hidden"] is False and summary["sandbox"]["allow_visible_tests"] is True
    results = [
        json.loads(line) for line in (out / "humaneval_samples_results.jsonl").read_text().splitlines()
    ]
    assert [r["passed"] for r in results] == [True] * 4 + [False]


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_total_bytes_of_the_working_folder_are_capped(mode, sandbox):
    box = Sandbox(mode, SandboxLimits(timeout_s=10.0, memory_mb=512, file_size_mb=16, folder_mb=32))
    # ten files of 8 MB: each under the file-size limit, 80 MB in all
    result = box.run(
        "import time\nfor i in range(10):\n    open(f'f{i}', 'wb').write(bytes(8 << 20))\n    time.sleep(0.2)"
    )
    assert result.status == "failed"
    assert "No space left on device" in result.detail or "exceeded its limit (32 MB" in result.detail
    assert box.run("for i in range(2):\n    open(f'f{i}', 'wb').write(bytes(8 << 20))").passed
    many = box.run("for i in range(2000):\n    open(f'f{i}', 'w').close()")
    assert many.status == "failed"


def test_signals_to_other_processes_are_refused_in_both_modes(sandbox, weak_sandbox):
    # in rlimits mode the parent is the evaluating process: sigqueue (rt_sigqueueinfo) could kill it, and
    # prlimit could set its CPU limit to 0
    probe = (
        "import ctypes, os, resource\nlibc = ctypes.CDLL(None, use_errno=True)\nppid = os.getppid() or 2\n"
        "assert libc.kill(ppid, 0) == -1\n"
        "assert libc.sigqueue(ppid, 0, None) == -1 and ctypes.get_errno() == 1, ctypes.get_errno()\n"
        "limits = (ctypes.c_ulonglong * 2)()\n"
        "assert libc.prlimit(ppid, 7, None, limits) == -1 and ctypes.get_errno() == 1, ctypes.get_errno()\n"
        # priorities and CPUs of others, set to what they are or for a user without processes (harmless if it
        # worked): in rlimits mode, for a user without capabilities, setpriority(PRIO_USER, 0, 19) could renice
        # every process of that user for good (as root the kernel refuses, since the program has no capability)
        "nice = os.getpriority(os.PRIO_PROCESS, ppid) if ppid != 2 else 0\n"
        "for name, call in [('setpriority', lambda: os.setpriority(os.PRIO_PROCESS, ppid, nice)),\n"
        "                   ('setpriority(PRIO_USER)', lambda: os.setpriority(os.PRIO_USER, 4242424, 0)),\n"
        "                   ('sched_setaffinity', lambda: os.sched_setaffinity(ppid, os.sched_getaffinity(0))),\n"
        "                   ('sched_setscheduler', lambda: os.sched_setscheduler(ppid, os.SCHED_OTHER, os.sched_param(0)))]:\n"
        "    try:\n        call()\n    except PermissionError:\n        pass\n"
        "    except ProcessLookupError:\n        raise AssertionError(name + ' reached the kernel')\n"
        "    else:\n        raise AssertionError(name)\n"
        "os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 1)\n"  # its own: as before
        "os.sched_setaffinity(0, os.sched_getaffinity(0))\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))\n"
        "assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft - 1, hard)\n"
    )
    for box in (sandbox, weak_sandbox):
        result = box.run(probe)
        assert result.passed, (box.mode, result.detail)


def test_host_devices_cannot_be_changed(sandbox):
    """The devices it sees are the host's: as root (the namespace maps the evaluator's user) it owns them,
    so it could once ``chmod 0 /dev/null`` on the whole host, through the path or its standard input. Here
    each chmod keeps the mode it finds (harmless if it worked); it must be refused."""
    before = os.stat("/dev/null").st_ctime_ns
    result = sandbox.run(
        "import os, stat\nchanged = []\n"
        "for path in (0, '/proc/self/fd/0', '/dev/null', '/dev/zero', '/dev/full', '/dev/random', "
        "'/dev/urandom'):\n"
        "    try:\n        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode))\n"
        "        changed.append(path)\n    except OSError:\n        pass\n"
        "assert changed == [], changed\n"
        "with open('/dev/null', 'w') as f:\n    f.write('written')\n"  # the devices still work
        "assert len(open('/dev/urandom', 'rb').read(8)) == 8 and open('/dev/zero', 'rb').read(2) == bytes(2)\n"
    )
    assert result.passed, result.detail
    assert os.stat("/dev/null").st_ctime_ns == before


_KEYCTL = {"x86_64": 250, "aarch64": 219}


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_memory_outside_the_address_space_and_keyrings_are_refused(mode, sandbox):
    """System V shared memory outlives ``shmdt`` in the IPC namespace, outside ``RLIMIT_AS``: 3 segments of
    400 MB filled in a 512 MB sandbox raised the host's Shmem by 1.2 GB (bounded only by the timeout and
    the writing speed); memfds hold 16 MB each per descriptor; in rlimits mode System V objects and POSIX
    message queues outlive the program on the host. The keyrings are the user's (in rlimits
    mode root's ``_uid_ses.0``, shared with every root process): nothing to add keys to or read from."""
    probe = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
        "made = []\n"  # each refused with EPERM; what was made is removed again (in rlimits mode it would outlive us)
        "for name, make, remove in [\n"
        "    ('shmget', lambda: libc.shmget(0, ctypes.c_size_t(1 << 20), 0o1600), libc.shmctl),\n"
        "    ('msgget', lambda: libc.msgget(0, 0o1600), libc.msgctl),\n"
        "    ('semget', lambda: libc.semget(0, 1, 0o1600), libc.semctl),\n"
        f"    ('keyctl', lambda: libc.syscall({_KEYCTL.get(os.uname().machine, -1)}, 0, ctypes.c_long(-3), 0), None),\n"
        "]:\n"
        "    ident = make()\n"
        "    if ident != -1 or ctypes.get_errno() != 1:\n"
        "        made.append((name, ident, ctypes.get_errno()))\n"
        "        if remove is not None and ident >= 0:\n"
        "            remove(ident, 0, None)  # IPC_RMID\n"
        "try:\n    os.close(os.memfd_create('x'))\n    made.append('memfd')\nexcept PermissionError:\n    pass\n"
        "queue = libc.mq_open(b'/prolora-sandbox-test', 0o102, 0o600, None)\n"  # O_RDWR | O_CREAT
        "if queue != -1 or ctypes.get_errno() != 1:\n"
        "    made.append(('mq_open', queue, ctypes.get_errno()))\n    libc.mq_unlink(b'/prolora-sandbox-test')\n"
        "assert made == [], made\n"
    )
    result = Sandbox(mode, LIMITS).run(probe)
    assert result.passed, result.detail


def test_the_check_sees_plain_values_only(sandbox):
    """The candidate's answers cross to the checker as plain data: subclasses arrive as their base type's
    value (a Counter as a dict, a named tuple as a tuple), anything else fails the call."""
    from prolora.eval.sandbox import Program

    def run(body: str, test: str):
        return sandbox.run(
            Program(f"import collections\ndef f(x):\n{body}", test, "f", prompt="def f(x):\n    'stub'\n")
        )

    assert run(
        "    return collections.Counter(x)\n",
        "def check(c):\n    assert c('aab') == {'a': 2, 'b': 1} and type(c('a')) is dict\n",
    ).passed
    assert run(
        "    return collections.namedtuple('P', 'a b')(*x)\n",
        "def check(c):\n    assert c([1, 2]) == (1, 2)\n",
    ).passed
    equal_to_all = (
        "    class E(float):\n        def __eq__(self, o):\n            return True\n    return E(1.0)\n"
    )
    assert run(equal_to_all, "def check(c):\n    assert c(0) == 1.0\n").passed  # its own value is 1.0
    assert not run(equal_to_all, "def check(c):\n    assert c(0) == 5.0\n").passed
    result = run("    return iter(x)\n", "def check(c):\n    assert list(c([1])) == [1]\n")
    assert result.status == "failed" and "not plain data" in result.detail
    # a completion that does not run: the result names its own error
    result = run("    return (\n", "def check(c):\n    assert c(1) == 1\n")
    assert result.status == "failed" and "did not run to its end" in result.detail
    assert "SyntaxError" in result.detail
    # the completion's exceptions reach the test as the same built-in type
    assert run(
        "    raise KeyError(x)\n",
        "def check(c):\n    try:\n        c(1)\n    except KeyError:\n"
        "        pass\n    else:\n        raise AssertionError\n",
    ).passed


# --------------------------------------------------------------- the candidate never has the test
# An oracle completion for HumanEval/2: no logic, it answers from a table it builds out of the test's
# asserts (``candidate(x) == y``, ``abs(candidate(x) - y) < eps``) or runs the dataset's canonical
# solution. Each attack differs only in where it looks for that text; all must fail.
_ORACLE = """
import ast as _ast, os as _os, re as _re, sys as _sys

def _table(text):
    table = {}
    for node in _ast.walk(_ast.parse(text)):
        if not isinstance(node, _ast.Compare):
            continue
        left, right = node.left, node.comparators[0]
        if isinstance(left, _ast.Call) and getattr(left.func, "id", "") == "abs":
            left = left.args[0]
            left, right = (left.left, left.right) if isinstance(left, _ast.BinOp) else (None, None)
        if isinstance(left, _ast.Call) and getattr(left.func, "id", "") == "candidate":
            table[repr([_ast.literal_eval(a) for a in left.args])] = _ast.literal_eval(right)
    return table

_CHECK = "def check" + "(candidate):"  # never spelled out, so that this source is no match
_ROW = "{" + '"task_id": "HumanEval/' + '2"'

def _from_text(text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    at = text.find(_CHECK)
    while at >= 0:
        end = text.find("\\n\\n\\n", at)
        try:
            return _table(text[at:end if end > 0 else None])
        except (SyntaxError, ValueError):
            at = text.find(_CHECK, at + 1)
    for line in text.splitlines():  # a dataset row
        if line.startswith(_ROW):
            import json
            try:
                row = json.loads(line)
            except ValueError:
                continue
            namespace = {}
            exec(row["prompt"] + row["canonical_solution"], namespace)
            return {"solve": namespace[row["entry_point"]]}
    return None

def _from_file(path, limit=1 << 24):
    try:
        with open(path, "rb") as f:
            f.seek(0)
            data = f.read(limit)
    except OSError:
        return None
    if data.startswith(b"\\x1f\\x8b"):  # the dataset as published, gzipped
        import gzip, zlib
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    return _from_text(data)

def _from_paths(text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for path in _re.findall(r"/[\\w.+-][\\w./+-]*", text):
        if (found := _from_file(path)):
            return found
    return None

def _answer(number):
    table = _find()
    if table is None:
        raise LookupError("no test found")
    if "solve" in table:
        return table["solve"](number)
    return table[repr([number])]
"""

_ATTACKS = {
    "test file in the working folder and its parents": """
def _find():
    for folder in (".", "..", _os.environ.get("TMPDIR", "/tmp"), "/tmp"):
        top = _os.path.abspath(folder)
        for root, dirs, files in _os.walk(top):
            dirs[:] = [d for d in dirs if root.count("/") - top.count("/") < 1 and not d.startswith(("proc", "sys", "dev"))]
            for name in files[:200]:
                if (found := _from_file(_os.path.join(root, name), 1 << 16)):
                    return found
""",
    "argv and the boot config": """
def _find():
    for arg in _sys.argv + list(_sys.orig_argv):
        if (found := _from_text(arg) or _from_paths(arg)):
            return found
""",
    "/proc of every visible process (cmdline, environ, fd, cwd)": """
def _find():
    for pid in [p for p in _os.listdir("/proc") if p.isdigit()] + ["self"]:
        base = f"/proc/{pid}"
        for name in ("cmdline", "environ"):
            try:
                with open(f"{base}/{name}", "rb") as f:
                    data = f.read().replace(b"\\0", b" ")
            except OSError:
                continue
            if (found := _from_text(data) or _from_paths(data)):
                return found
        for folder in ("fd", "cwd"):
            try:
                names = _os.listdir(f"{base}/{folder}")
            except OSError:
                names = []
            for name in names:
                if (found := _from_file(f"{base}/{folder}/{name}", 1 << 20)):
                    return found
""",
    "inherited descriptors": """
def _find():
    for fd in range(64):
        try:
            _os.lseek(fd, 0, 0)
        except OSError:
            pass
        try:
            _os.set_blocking(fd, False)
            if (found := _from_text(_os.read(fd, 1 << 20))):
                return found
        except (OSError, TypeError):
            pass
""",
    "gc and caller frames": """
def _find():
    import gc
    frame = _sys._getframe()
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for value in list(scope.values()):
                for text in ([value] if isinstance(value, (str, bytes)) else
                             list(value.values()) if isinstance(value, dict) else []):
                    if isinstance(text, (str, bytes)) and (found := _from_text(text) or _from_paths(text)):
                        return found
        frame = frame.f_back
    for obj in gc.get_objects():
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for text in values:
            if isinstance(text, (str, bytes)) and "check" in str(text)[:1 << 16]:
                if (found := _from_text(text) or _from_paths(text)):
                    return found
""",
    "its own memory (/proc/self/mem)": """
def _find():
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and not fields[5].startswith("[heap")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(min(end - start, 1 << 26))
            except (OSError, ValueError, OverflowError):
                continue
            at = data.find(_CHECK.encode())
            while at >= 0:
                if (found := _from_text(data[at:at + 4096].split(b"\\0")[0])):
                    return found
                at = data.find(_CHECK.encode(), at + 1)
""",
    "environment variables": """
def _find():
    for value in _os.environ.values():
        if (found := _from_text(value) or _from_paths(value)):
            return found
""",
    "the dataset file, by its paths and by a search": """
import time as _time
def _find():
    for path in DATASETS:
        if (found := _from_file(path)):
            return found
    deadline = _time.monotonic() + 2
    for root, dirs, files in _os.walk("/"):
        dirs[:] = [d for d in dirs if _os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
        for name in files:
            if name.startswith("HumanEval") and (found := _from_file(_os.path.join(root, name))):
                return found
        if _time.monotonic() > deadline:
            return None
""",
}
_DATASETS = [
    str(folder / name)
    for folder in (FIXTURES / "humaneval", Path("/work/shared/data/humaneval"))
    for name in ("HumanEval.jsonl", "HumanEval.jsonl.gz")
]


def _oracle_completion(finder: str) -> str:
    return f"    return _answer(number)\n{_ORACLE}\nDATASETS = {_DATASETS!r}\n{finder}"


def test_the_oracle_passes_when_it_is_handed_the_test(sandbox):
    """The attacks below are real: handed the test's text or a dataset row, the oracle passes; and it reads
    the data set, plain or gzipped, where it can see it."""
    problem = _problems_with_ids()[2]
    given_test = f"\ndef _find():\n    return _from_text({problem['test']!r})\n"
    given_row = f"\ndef _find():\n    return _from_text({json.dumps(problem)!r})\n"
    results = sandbox.run_many(
        [program(_problems()[2], _oracle_completion(f)) for f in (given_test, given_row)]
    )
    assert [r.status for r in results] == ["passed", "passed"], [r.detail for r in results]
    oracle = {}
    exec(_ORACLE, oracle)  # here, outside any sandbox, where the data set is readable
    readable = [path for path in _DATASETS if Path(path).is_file()]  # the fixture, and the full set if here
    assert readable[0] == _DATASETS[0]
    for path in readable:
        assert oracle["_from_file"](path)["solve"](3.5) == 0.5


def test_the_candidate_cannot_find_the_test_or_the_dataset(sandbox):
    problem = _problems()[2]
    results = sandbox.run_many(
        [program(problem, _oracle_completion(f)) for f in _ATTACKS.values()], workers=2
    )
    outcomes = {name: (r.status, r.detail) for name, r in zip(_ATTACKS, results, strict=True)}
    assert [name for name, r in zip(_ATTACKS, results, strict=True) if r.passed] == [], outcomes


def test_the_candidate_cannot_watch_the_checkers_files(sandbox):
    """The shared libraries and the standard library are the same files in both processes: with inotify on
    the standard library's ``__pycache__`` the candidate of HumanEval/32 saw the checker open ``random``,
    ``copy`` and ``bisect`` (what its test imports). Neither inotify nor fanotify is available."""
    problem = _problems_with_ids()[2]
    watcher = (
        "    return number % 1.0\nimport ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.inotify_init1(0) == -1 and ctypes.get_errno() == 1, 'inotify'\n"
        "assert libc.fanotify_init(0x200, 0) == -1 and ctypes.get_errno() == 1, 'fanotify'\n"  # FAN_REPORT_FID
    )
    result = sandbox.run(program(_problems()[2], watcher))
    assert result.passed, (problem["task_id"], result.detail)


_HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),  # AArch64 uses the generic table
}


@pytest.mark.parametrize("arch", sorted(_HEADERS))
def test_seccomp_numbers_are_the_kernels(arch):
    """Every system call number in the filter's table is the kernel headers' for that name, and every
    refused name the architecture has is in its table (a wrong number would refuse some other call and
    let the named one through)."""
    import re

    from prolora.eval import _sandbox_boot as boot

    if not _HEADERS[arch].is_file():
        pytest.skip(f"no kernel headers here ({_HEADERS[arch]}; Debian: linux-libc-dev)")
    text = _HEADERS[arch].read_text()
    header = {m[1]: int(m[2]) for m in re.finditer(r"^#define __NR(?:3264)?_(\w+)\s+(\d+)\b", text, re.M)}
    numbers = boot._ARCHES[arch][1]
    assert {name: header.get(name) for name in numbers} == numbers
    assert [name for name in boot._REFUSED if name in header and name not in numbers] == []
    assert {"clone", "fork", "kill", "ptrace", "shmget", "keyctl", "setsid"} & set(header) <= set(numbers)


def test_the_view_of_files_cannot_be_changed(sandbox, weak_sandbox):
    """No new namespaces, mounts or root, in either mode (seccomp), so what is hidden stays hidden."""
    calls = {
        "unshare(CLONE_NEWUSER | CLONE_NEWNS)": "libc.unshare(0x10000000 | 0x00020000)",
        "setns": "libc.setns(0, 0)",
        "umount2 of /proc": "libc.umount2(b'/proc', 2)",
        "chroot": "libc.chroot(b'/tmp')",
        "open_tree": "libc.syscall(428, -100, b'/', 0)",
    }
    programs = [
        f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert {call} == -1\n"
        "assert ctypes.get_errno() == 1, ctypes.get_errno()  # EPERM"
        for call in calls.values()
    ]
    for box in (sandbox, weak_sandbox):
        results = box.run_many(programs, workers=2)
        assert [r.status for r in results] == ["passed"] * len(calls), dict(zip(calls, results, strict=True))
