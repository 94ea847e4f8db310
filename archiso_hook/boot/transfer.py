"""Read images once: copy them to RAM and/or hash them, as fast as the medium allows.

One thread reads the medium sequentially, image after image (parallel reads would
make an optical drive or a disk seek); a copy is made by the kernel (sendfile), so
no byte passes through Python on its way to RAM. Hashing follows the reader, one
worker per image and at most one per core, reading back what was just read: the
copy in RAM, or the page cache when there is no copy. So the medium is read once,
and several images are hashed at the same time while the next one is being read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence

import attrs

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
        hasher = hashlib.new(job.algorithm)
        # Read back the copy in RAM, or the page cache the reader just filled.
        path = job.destination or job.source
        position = 0
        fd: int | None = None
        try:
            while not self.errors:
                available, done = tracker.wait_beyond(position)
                if self.errors:
                    return
                if fd is None:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                while position < available:
                    data = os.pread(fd, min(CHUNK, available - position), position)
                    if not data:
                        raise OSError(errno.EIO, f"{path} ended early")
                    hasher.update(data)
                    position += len(data)
                if done:
                    break
            if not self.errors:
                self.results[index] = Result(job, position, hasher.hexdigest())
        except OSError as e:
            self.errors.append(KernelError(f"cannot read {path}: {e.strerror}", e.errno or 0))
        finally:
            if fd is not None:
                os.close(fd)
            self.slots.release()
