"""Start an execve() and hold it in the kernel until told to go on (a test helper).

    stalled_exec.py [--from-leader] PROGRAM ARG...

The arguments after PROGRAM are passed to it from a page registered with userfaultfd, so
the kernel's copy of argv (inside execve, after the syscall began and before the new
image is in place) faults on that page and waits. The helper then prints ``stalled`` and
waits for a line on stdin; whatever the test does meanwhile (move this process into
another cgroup) happens while the exec is in flight. On that line the page is filled in,
and the exec goes on. This is how the tests make, deterministically, the race that runc
1.1 makes by chance: a process moved into a guarded cgroup in the middle of its exec.

The exec is made by a second thread (which then takes over the process's pid, as in a
multi-threaded program), or with ``--from-leader`` by the main thread (as runc init does).

Needs root (userfaultfd that handles kernel faults) and /dev/userfaultfd (Linux 6.1+).
Exits 3 with a message if either is missing.
"""

from __future__ import annotations

import ctypes as ct
import fcntl
import mmap
import os
import struct
import sys
import threading

USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0x00) on /dev/userfaultfd
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy)
UFFD_API = 0xAA
UFFDIO_REGISTER_MODE_MISSING = 1
UFFD_EVENT_PAGEFAULT = 0x12
PAGE = mmap.PAGESIZE


def fail(message: str) -> None:
    print(f"stalled_exec: {message}", file=sys.stderr, flush=True)
    os._exit(3)


def open_uffd() -> int:
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        fail(f"cannot open /dev/userfaultfd ({err}); needs root and Linux 6.1+")
    try:
        uffd = fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, os.O_CLOEXEC)
    finally:
        os.close(dev)
    api = bytearray(struct.pack("QQQ", UFFD_API, 0, 0))
    fcntl.ioctl(uffd, UFFDIO_API, api)
    return int(uffd)


def main() -> None:
    argv_in = sys.argv[1:]
    from_leader = bool(argv_in) and argv_in[0] == "--from-leader"
    if from_leader:
        argv_in = argv_in[1:]
    if len(argv_in) < 2:
        fail("usage: stalled_exec.py [--from-leader] PROGRAM ARG...")
    program, args = argv_in[0], argv_in[1:]
    blob = b"".join(a.encode() + b"\0" for a in args)
    if len(blob) > PAGE:
        fail("the arguments must fit in one page")

    libc = ct.CDLL(None, use_errno=True)
    libc.mmap.restype = ct.c_void_p
    libc.mmap.argtypes = (ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long)
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    page = libc.mmap(None, PAGE, prot, flags, -1, 0)
    if page in (None, ct.c_void_p(-1).value):
        fail("mmap failed")

    uffd = open_uffd()
    reg = bytearray(struct.pack("QQQQ", page, PAGE, UFFDIO_REGISTER_MODE_MISSING, 0))
    fcntl.ioctl(uffd, UFFDIO_REGISTER, reg)

    # argv: PROGRAM (ordinary memory), then pointers into the not-yet-present page
    argv = (ct.c_char_p * (len(args) + 2))()
    argv[0] = program.encode()
    offset = 0
    for i, a in enumerate(args, start=1):
        ct.cast(ct.byref(argv, i * ct.sizeof(ct.c_char_p)), ct.POINTER(ct.c_void_p))[0] = (
            page + offset
        )
        offset += len(a.encode()) + 1
    argv[len(args) + 1] = None
    envp = (ct.c_char_p * 1)()
    envp[0] = None

    def exec_now() -> None:
        # ctypes releases the GIL for the call: the other thread answers the fault
        libc.execve(program.encode(), argv, envp)
        fail(f"execve {program}: {os.strerror(ct.get_errno())}")

    def answer_fault() -> None:
        msg = os.read(uffd, 32)  # the kernel's copy of argv faulted: the exec is in flight
        event = msg[0]
        address = struct.unpack_from("Q", msg, 16)[0]
        if event != UFFD_EVENT_PAGEFAULT or address & ~(PAGE - 1) != page:
            fail(f"unexpected userfaultfd event {event:#x} at {address:#x}")
        print("stalled", flush=True)
        sys.stdin.readline()
        src = ct.create_string_buffer(blob.ljust(PAGE, b"\0"), PAGE)
        copy = bytearray(struct.pack("QQQQq", page, ct.addressof(src), PAGE, 0, 0))
        fcntl.ioctl(uffd, UFFDIO_COPY, copy)
        threading.Event().wait(30)  # the exec replaces this process (or the test kills it)
        fail("the exec did not happen within 30 s")

    if from_leader:  # the main thread execs (as runc init does)
        threading.Thread(target=answer_fault, daemon=True).start()
        exec_now()
    else:  # a second thread execs: it takes over the main thread's pid
        threading.Thread(target=exec_now, daemon=True).start()
        answer_fault()


if __name__ == "__main__":
    main()
