"""Read images once: copy them to RAM and/or hash them, as fast as the medium allows.

One thread reads the medium sequentially, image after image (parallel reads would
make an optical drive or a disk seek); a copy is made by the kernel (sendfile), so
no byte passes through Python on its way to RAM. Hashing follows the reader, one
worker per image and at most one per core, reading back what was just read: the
copy in RAM, or the page cache when there is no copy. So the medium is read once,
and several images are hashed at the same time while the next one is being read.

OpenSSL's hashes (hashlib with _hashlib) let go of the GIL while they work, so the
workers are threads. Python's built-in ones (an initramfs without TLS has no _hashlib)
hold it: two threads would take turns, so there each worker hashes in a forked child
process, which the thread tells how far the reader got and which answers with the
digest.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from archiso_hook import checksums
from archiso_hook.errors import HookError, KernelError
from archiso_hook.sizes import human

CHUNK = 4 << 20


@attrs.frozen
class Job:
    source: str
    destination: str | None = None  # copy here
    algorithm: str | None = None  # and/or hash with this


@attrs.frozen
class Result:
    job: Job
    size: int
    digest: str | None


@attrs.define
class Progress:
    """Lines like `copying: 120.0 MiB of 800.0 MiB, 45.2 MiB/s, 15 s left`, at most
    every `interval` seconds, and only once an operation has run that long."""

    what: str
    total: int
    emit: Callable[[str], None]
    interval: float = 2.0
    done: int = 0
    start: float = attrs.Factory(time.monotonic)
    _last: float = attrs.Factory(time.monotonic)

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.emit(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        return (
            f"{self.what}: {human(self.done)} of {human(self.total)}, "
            f"{human(rate)}/s, {left:.0f} s left"
        )


def run(
    jobs: Sequence[Job], *, progress: Progress | None = None, workers: int | None = None
) -> list[Result]:
    """Carry out the jobs, in order; partial copies are removed if anything fails."""
    transfer = _Transfer(len(jobs), progress, workers or os.cpu_count() or 1)
    try:
        transfer.run(jobs)
    finally:
        if transfer.errors:
            for job in jobs:
                if job.destination and os.path.exists(job.destination):
                    os.unlink(job.destination)
    if transfer.errors:
        raise transfer.errors[0]
    return [r for r in transfer.results if r is not None]


def expected_digest(
    image: str, arches: tuple[str, ...], *, required_by: str | None, hint: str | None = None
) -> checksums.Expected:
    """What the image's checksum file (the first of checksums.sources) says its digest
    is; a HookError when it has none (`required_by`: what asked for one, said first)."""
    source = checksums.find(image, arches)
    if source is None:
        asked = f"{required_by}, but " if required_by else ""
        raise HookError(
            f"{asked}{image} has no checksum: {checksums.describe_sources(image, arches)}",
            hint=hint,
        )
    with open(source.path, encoding="utf-8", errors="replace") as f:
        return checksums.parse_source(f.read(), source)


@attrs.frozen
class Checked:
    results: list[Result]
    seconds: float
    corrupt: list[str]  # a sentence for each image whose digest is not the expected one


def read_checked(
    images: Sequence[str],
    destinations: Sequence[str | None],
    expected: Sequence[checksums.Expected],
    progress: Progress,
) -> Checked:
    """Read the images once: each copied to its destination (None: not copied) and, if
    `expected` (one for each image, or none) is given, hashed and compared with it."""
    jobs = [
        Job(image, destination, expected[i].algorithm if expected else None)
        for i, (image, destination) in enumerate(zip(images, destinations, strict=True))
    ]
    start = time.monotonic()
    results = run(jobs, progress=progress)
    seconds = time.monotonic() - start
    found = (
        want.mismatch(r.job.source, r.digest) for r, want in zip(results, expected, strict=False)
    )
    corrupt = [sentence for sentence in found if sentence]
    return Checked(results, seconds, corrupt)


class _Progress:
    """How far the reader got in one image, for the worker hashing it."""

    def __init__(self) -> None:
        self.read = 0
        self.done = False
        self.cond = threading.Condition()

    def advance(self, n: int) -> None:
        with self.cond:
            self.read += n
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def wait_beyond(self, offset: int) -> tuple[int, bool]:
        with self.cond:
            while self.read <= offset and not self.done:
                self.cond.wait()
            return self.read, self.done


class _Transfer:
    def __init__(self, count: int, progress: Progress | None, workers: int) -> None:
        self.results: list[Result | None] = [None] * count
        self.errors: list[BaseException] = []
        self.progress = progress
        self.slots = threading.Semaphore(max(1, workers))  # hashers: at most one per core
        self.sendfile = True
        self.buffer = bytearray(CHUNK)

    def fail(self, error: BaseException, *tracked: _Progress) -> None:
        self.errors.append(error)
        for tracker in tracked:
            tracker.finish()  # wake its hasher, which then sees the error and stops

    def run(self, jobs: Sequence[Job]) -> None:
        hashers: list[threading.Thread] = []
        try:
            for index, job in enumerate(jobs):
                if self.errors:
                    break
                tracker = _Progress()
                if job.algorithm:
                    self.slots.acquire()
                    hasher = threading.Thread(
                        target=self.hash, args=(job, index, tracker), daemon=True
                    )
                    hasher.start()
                    hashers.append(hasher)
                size = self.read(job, tracker)
                if not job.algorithm and not self.errors:
                    self.results[index] = Result(job, size, None)
        except BaseException as e:
            self.errors.append(HookError(f"interrupted: {e!r}"))
            raise
        finally:
            for hasher in hashers:
                hasher.join()

    def read(self, job: Job, tracker: _Progress) -> int:
        """Read (and copy) one image from start to end; the bytes read."""
        out: int | None = None
        offset = 0
        try:
            fd = os.open(job.source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.fail(KernelError(f"cannot open {job.source}: {e.strerror}", e.errno or 0), tracker)
            return 0
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if job.destination:
                out = os.open(
                    job.destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
                )
            else:  # only hashing: bring the data into the page cache, copied nowhere
                out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            while not self.errors:
                n = self._copy(fd, out, offset)
                if n == 0:
                    break
                offset += n
                tracker.advance(n)
                if self.progress is not None:
                    self.progress.add(n)
        except OSError as e:
            self.fail(self._error(job, e), tracker)
        finally:
            os.close(fd)
            if out is not None:
                os.close(out)
            tracker.finish()
        return offset

    def _copy(self, fd: int, out: int, offset: int) -> int:
        """Copy the next chunk in the kernel; read and write it where sendfile cannot."""
        if self.sendfile:
            try:
                return os.sendfile(out, fd, offset, CHUNK)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.sendfile = False
        n = os.preadv(fd, [self.buffer], offset)
        view = memoryview(self.buffer)[:n]
        while view:
            view = view[os.write(out, view) :]
        return n

    @staticmethod
    def _error(job: Job, e: OSError) -> KernelError:
        if job.destination and e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            return KernelError(
                f"cannot write {job.destination}: {e.strerror}",
                e.errno or 0,
                hint="the copy did not fit in RAM",
            )
        if job.destination and e.errno == errno.ENOENT:
            return KernelError(f"cannot write {job.destination}: {e.strerror}", e.errno or 0)
        return KernelError(
            f"cannot read {job.source}: {e.strerror}: the image or the medium is damaged",
            e.errno or 0,
        )

    def hash(self, job: Job, index: int, tracker: _Progress) -> None:
        """Hash what the reader has read so far, again and again, until the end."""
        assert job.algorithm is not None
        # Read back the copy in RAM, or the page cache the reader just filled.
        path = job.destination or job.source
        try:
            hasher = hashlib.new(job.algorithm)
            if _holds_gil(hasher):
                outcome = self._hash_in_child(hasher, path, tracker)
            else:
                outcome = self._hash_here(hasher, path, tracker)
            if outcome is not None and not self.errors:
                self.results[index] = Result(job, outcome[0], outcome[1])
        except OSError as e:
            self.errors.append(KernelError(f"cannot read {path}: {e.strerror}", e.errno or 0))
        finally:
            self.slots.release()

    def _follow(self, tracker: _Progress) -> Iterator[tuple[int, bool]]:
        """How far the reader got, each time it got further, until the end (or an error)."""
        position = 0
        while not self.errors:
            available, done = tracker.wait_beyond(position)
            if self.errors:
                return
            yield available, done
            if done:
                return
            position = available

    def _hash_here(self, hasher: Any, path: str, tracker: _Progress) -> tuple[int, str] | None:
        fd: int | None = None
        position = 0
        view = memoryview(bytearray(CHUNK))
        try:
            for available, done in self._follow(tracker):
                if fd is None:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                position = _hash_range(
                    fd, hasher, view, position=position, end=available, path=path
                )
                if done:
                    return position, hasher.hexdigest()
            return None
        finally:
            if fd is not None:
                os.close(fd)

    def _hash_in_child(self, hasher: Any, path: str, tracker: _Progress) -> tuple[int, str] | None:
        """The same in a child process, which gets each offset the reader reached through
        a pipe (8 bytes: offset << 1 | done) and answers `<size> <digest>\\n`, or
        `error <errno> <message>\\n`, through another."""
        commands, to_child = os.pipe()
        from_child, answers = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (commands, to_child, from_child, answers):
                os.close(fd)
            raise
        if pid == 0:  # the child: never returns into the caller's code
            status = 1
            try:
                _close_all_but(commands, answers)
                _child_hash(hasher, path, commands, answers)
                status = 0
            finally:
                os._exit(status)
        os.close(commands)
        os.close(answers)
        answer = b""
        try:
            ended = False
            try:
                for available, done in self._follow(tracker):
                    os.write(to_child, ((available << 1) | done).to_bytes(8, "little"))
                    ended = done
            except BrokenPipeError:  # the child stopped early: its answer says why
                ended = True
            while ended and not answer.endswith(b"\n") and (more := os.read(from_child, 512)):
                answer += more
        finally:
            if not answer:  # an error elsewhere, or the child is stuck: not wanted any more
                os.kill(pid, signal.SIGKILL)
            os.close(to_child)
            os.close(from_child)
            os.waitpid(pid, 0)
        if not answer:
            if self.errors:
                return None
            raise OSError(errno.EIO, f"the process hashing {path} ended without an answer")
        first, second, *rest = answer.decode("utf-8", "replace").rstrip("\n").split(" ", 2)
        if first == "error":
            raise OSError(int(second), rest[0] if rest else "")
        return int(first), second


def _holds_gil(hasher: Any) -> bool:
    """Whether this hash object keeps the GIL while it hashes: all but OpenSSL's, in the
    Pythons this runs on (3.11's built-in sha512 and md5 do)."""
    return type(hasher).__module__ != "_hashlib"


def _hash_range(
    fd: int, hasher: Any, view: memoryview, *, position: int, end: int, path: str
) -> int:
    """Hash bytes `position` to `end` of `fd` (through the buffer `view`); the new position."""
    while position < end:
        n = os.preadv(fd, [view[: min(len(view), end - position)]], position)
        if not n:
            raise OSError(errno.EIO, f"{path} ended early")
        hasher.update(view[:n])
        position += n
    return position


def _close_all_but(*keep: int) -> None:
    """In a forked child: close every descriptor but stdio and `keep` (the parent's other
    pipes and files must not be held open by this process)."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _child_hash(hasher: Any, path: str, commands: int, answers: int) -> None:
    """The child of _hash_in_child: hash `path` as far as each command says; the answer."""
    fd: int | None = None
    try:
        view = memoryview(bytearray(CHUNK))
        position = 0
        while True:
            message = b""
            while len(message) < 8:
                more = os.read(commands, 8 - len(message))
                if not more:
                    return  # the parent gave up
                message += more
            word = int.from_bytes(message, "little")
            if fd is None:  # only now: the reader has created the copy
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            position = _hash_range(fd, hasher, view, position=position, end=word >> 1, path=path)
            if word & 1:
                break
        answer = f"{position} {hasher.hexdigest()}\n"
    except OSError as e:
        answer = f"error {e.errno or errno.EIO} {e.strerror or e}\n"
    finally:
        if fd is not None:
            os.close(fd)
    os.write(answers, answer.encode())
