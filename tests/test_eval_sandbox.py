"""The HumanEval code sandbox: correct programs pass, wrong ones fail, hostile ones fail and harm nothing."""

from __future__ import annotations

import json
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
    rows = [json.loads(line) for line in (FIXTURES / "humaneval" / "HumanEval.jsonl").read_text().splitlines()]
    return [{"problem_prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"],
             "canonical_solution": r["canonical_solution"]} for r in rows]


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
    # threads are not processes: they keep working
    assert sandbox.run("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()").passed


def test_writes_outside_the_working_directory_are_not_visible(sandbox, tmp_path):
    target = tmp_path / "written-by-sandbox.txt"
    result = sandbox.run(f"open({str(target)!r}, 'w').write('x')")
    assert result.status == "failed" and "Read-only file system" in result.detail
    assert not target.exists()
    # its own temporary working directory is writable
    assert sandbox.run("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'").passed


def test_deleting_files_harms_nothing(sandbox, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    assert sandbox.run(f"import os\nos.remove({str(keep)!r})").status == "failed"
    assert sandbox.run(f"import shutil\nshutil.rmtree({str(tmp_path)!r})").status == "failed"
    assert keep.read_text() == "precious"


def test_filesystem_cannot_be_made_writable_again(sandbox):
    remount = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.mount(None, b'/', None, 32 | 4096, None) == 0, ctypes.get_errno()")  # MS_REMOUNT|MS_BIND
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
