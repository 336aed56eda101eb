"""A seccomp filter that stops a process from starting any program or process (threads stay allowed).

The sandbox harness (``sandbox_harness.py``) installs it on itself after the interpreter has started and before
any candidate code runs, so even a program that reaches libc (``system``, ``fork``, ``execve``) cannot start a
shell: the kernel answers EPERM. Filters are inherited by every thread and can never be removed. Rules (x86_64
and aarch64; any other architecture is refused, and a system call made under another ABI -- i386 ``int 0x80``,
x32 -- kills the process):

* ``execve``, ``execveat``, ``fork``, ``vfork``, and ``clone`` without ``CLONE_THREAD``: EPERM
  (``pthread_create`` passes ``CLONE_THREAD``); without bwrap, ``launch`` (stage one) keeps one
  ``execveat`` on a descriptor no later process can own, to start the harness in a fresh interpreter;
* ``clone3``: ENOSYS (its flags live in memory a classic filter cannot read; glibc falls back to ``clone``);
* raising an rlimit (``setrlimit``, ``prlimit64`` with a new limit), ``ptrace``, ``process_vm_readv``/``writev``,
  ``io_uring_setup``, ``bpf``, ``perf_event_open``, mounts, namespaces, kernel modules, ``kexec``, ``reboot``:
  EPERM.

The filter is a classic BPF program built by hand (``build_program``), loaded with ``prctl(PR_SET_NO_NEW_PRIVS)``
and ``seccomp(SECCOMP_SET_MODE_FILTER)`` through ``_ctypes``. This file imports only the standard library: the
harness executes its source inside the sandbox.
"""

from __future__ import annotations

import os
import struct
import sys

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# name -> number; aarch64 has no fork/vfork/setrlimit-free variants beyond these
SYSCALLS = {
    "x86_64": {
        "execve": 59, "execveat": 322, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435,
        "setrlimit": 160, "prlimit64": 302, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "io_uring_setup": 425, "bpf": 321, "perf_event_open": 298, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
        "seccomp": 317,
    },
    "aarch64": {
        "execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "setrlimit": 164, "prlimit64": 261,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "io_uring_setup": 425, "bpf": 280,
        "perf_event_open": 241, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97,
        "setns": 268, "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "kexec_file_load": 294, "reboot": 142, "seccomp": 277,
    },
}  # fmt: skip
DENIED = (
    "execve", "execveat", "fork", "vfork", "setrlimit", "ptrace", "process_vm_readv", "process_vm_writev", "io_uring_setup",
    "bpf", "perf_event_open", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "init_module",
    "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
)  # fmt: skip
X32_SYSCALL_BIT = 0x40000000
CLONE_THREAD = 0x00010000
AT_EMPTY_PATH = 0x1000
EPERM, ENOSYS = 1, 38
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
PR_SET_NO_NEW_PRIVS, SECCOMP_SET_MODE_FILTER = 38, 1
LIMITS = ("cpu", "as", "fsize", "nofile", "nproc", "core")  # launch's rlimit arguments, in order
# struct seccomp_data {int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];} (little-endian)
_NR, _ARCH = 0, 4
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06


def _arg(i: int, high: bool = False) -> int:
    """Offset of the low (or high) 32 bits of system-call argument ``i`` in seccomp_data."""
    return 16 + 8 * i + (4 if high else 0)


def build_program(arch: str, exec_fd: int | None = None) -> list[tuple[int, int, int, int]]:
    """The filter for ``arch`` as (code, jt, jf, k) instructions; ValueError for other architectures.

    ``exec_fd``: the one exec still allowed, ``execveat(exec_fd, "", ..., AT_EMPTY_PATH)`` (``launch``'s own).
    """
    if arch not in AUDIT_ARCH:
        raise ValueError(f"seccomp filter: unsupported architecture {arch!r} (x86_64 and aarch64 are)")
    nr = SYSCALLS[arch]
    # (opcode, k, label if true, label if false); None falls through to the next instruction
    asm: list[tuple[str | None, int, int, str | None, str | None]] = [
        (None, LD_W_ABS, _ARCH, None, None),
        (None, JEQ_K, AUDIT_ARCH[arch], None, "kill"),
        (None, LD_W_ABS, _NR, None, None),
    ]
    if arch == "x86_64":
        asm.append((None, JGE_K, X32_SYSCALL_BIT, "kill", None))
    denied = [name for name in DENIED if name in nr and not (exec_fd is not None and name == "execveat")]
    asm += [(None, JEQ_K, nr[name], "eperm", None) for name in denied]
    if exec_fd is not None:
        asm += [
            (None, JEQ_K, nr["execveat"], None, "not_execveat"),
            (None, LD_W_ABS, _arg(0), None, None),
            (None, JEQ_K, exec_fd, None, "eperm"),
            (None, LD_W_ABS, _arg(4), None, None),
            (None, JEQ_K, AT_EMPTY_PATH, "allow", "eperm"),
            ("not_execveat", LD_W_ABS, _NR, None, None),
        ]
    asm += [
        (None, JEQ_K, nr["clone3"], "enosys", None),
        (None, JEQ_K, nr["clone"], "clone", None),
        (None, JEQ_K, nr["prlimit64"], "prlimit", None),
        (None, RET_K, RET_ALLOW, None, None),
        ("clone", LD_W_ABS, _arg(0), None, None),
        (None, JSET_K, CLONE_THREAD, "allow", "eperm"),
        ("prlimit", LD_W_ABS, _arg(2), None, None),  # a NULL new limit only reads the limit
        (None, JEQ_K, 0, None, "eperm"),
        (None, LD_W_ABS, _arg(2, high=True), None, None),
        (None, JEQ_K, 0, "allow", "eperm"),
        ("allow", RET_K, RET_ALLOW, None, None),
        ("eperm", RET_K, RET_ERRNO | EPERM, None, None),
        ("enosys", RET_K, RET_ERRNO | ENOSYS, None, None),
        ("kill", RET_K, RET_KILL_PROCESS, None, None),
    ]
    where = {label: i for i, (label, *_) in enumerate(asm) if label}

    def offset(i: int, label: str | None) -> int:
        jump = 0 if label is None else where[label] - i - 1
        assert 0 <= jump < 256, "seccomp filter: jump out of range"
        return jump

    return [(op, offset(i, jt), offset(i, jf), k) for i, (_, op, k, jt, jf) in enumerate(asm)]


def pack(program: list[tuple[int, int, int, int]]) -> bytes:
    """``struct sock_filter[]``: u16 code, u8 jt, u8 jf, u32 k, native byte order."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def install(exec_fd: int | None = None) -> None:
    """Load the filter on the calling thread (and the threads it starts later); OSError if the kernel refuses.

    Through ``_ctypes`` alone: the ``ctypes`` package costs more to import than the rest of the sandbox's start.
    """
    import _ctypes

    class c_int(_ctypes._SimpleCData):
        _type_ = "i"

    class c_long(_ctypes._SimpleCData):
        _type_ = "l"

    class c_ushort(_ctypes._SimpleCData):
        _type_ = "H"

    class c_char_p(_ctypes._SimpleCData):
        _type_ = "z"

    class SockFprog(_ctypes.Structure):
        _fields_ = [("len", c_ushort), ("filter", c_char_p)]  # noqa: RUF012 (ctypes' layout)

    class Libc:  # what CFuncPtr reads from a library: its dlopen handle (None: the program and libc)
        _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]

    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = c_int

    arch = os.uname().machine
    if sys.byteorder != "little":
        raise OSError(f"seccomp filter: big-endian {arch} is not supported")
    filters = pack(build_program(arch, exec_fd))
    prog = SockFprog(len(filters) // 8, filters)
    prctl = Function(("prctl", Libc()))  # type: ignore[arg-type]
    syscall = Function(("syscall", Libc()))  # type: ignore[arg-type]
    if prctl(c_int(PR_SET_NO_NEW_PRIVS), c_long(1), c_long(0), c_long(0), c_long(0)) != 0:
        raise OSError(_ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    number = SYSCALLS[arch]["seccomp"]
    if syscall(c_long(number), c_long(SECCOMP_SET_MODE_FILTER), c_long(0), _ctypes.byref(prog)) != 0:
        raise OSError(_ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")


def launch() -> None:
    """Stage one of a run without bwrap: ``sys.argv[1:]`` = rlimits (``LIMITS`` order), exec_fd, ``--``, argv.

    Sets the run's hard rlimits, opens the interpreter as ``exec_fd`` (at or above the open-files limit, so no
    later process can own that descriptor), installs the filter allowing only that one exec, and ``fexecve``s
    the harness there: the process that runs candidate code never loaded ``_ctypes``, whose types would
    otherwise stay reachable (``object.__subclasses__()``) as raw-memory primitives.
    """
    import resource

    values = [int(v) for v in sys.argv[1 : 2 + len(LIMITS)]]
    limits, exec_fd = dict(zip(LIMITS, values, strict=False)), values[-1]
    argv = sys.argv[3 + len(LIMITS) :]
    if exec_fd < limits["nofile"]:
        raise ValueError(f"exec_fd {exec_fd} must not be below the open-files limit {limits['nofile']}")
    fd = os.open(argv[0], os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(fd, exec_fd, inheritable=False)  # before the open-files limit drops below it
    os.close(fd)
    for name, value in limits.items():
        hard = value + 1 if name == "cpu" else value  # CPU: SIGXCPU at the limit, SIGKILL a second later
        resource.setrlimit(getattr(resource, f"RLIMIT_{name.upper()}"), (value, hard))
    try:
        install(exec_fd)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"sandbox: cannot install the seccomp filter: {e}\n")
        os._exit(125)
    os.execve(exec_fd, argv, dict(os.environ))  # glibc: execveat(exec_fd, "", ..., AT_EMPTY_PATH)
