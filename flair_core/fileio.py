"""Writing run files so that a failure (a full disk above all) leaves every file whole.

`write_atomic` replaces a file only once its new content is complete and on disk; `append_line` adds a line
to a JSON-lines file or leaves the file as it was. Either raises `WriteError`: one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Self


class WriteError(OSError):
    """Writing a file failed and left it as it was; str() is one line: the file and the reason."""

    def __str__(self) -> str:
        return f"writing {self.filename}: {self.strerror}"


def _write_error(path: Path, err: BaseException) -> WriteError | None:
    # torch.save turns the file's OSError into a RuntimeError ("unexpected pos"): the OSError is its context
    cause = err if isinstance(err, OSError) else err.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        return WriteError(cause.errno, cause.strerror, str(path))
    return None


def write_atomic(path: str | Path, content: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Write `content` (bytes, text, or a function writing to a binary file) to `path`: temp file in the same
    folder, fsync, rename. On any failure the temp file is removed and `path` keeps its old content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        error = _write_error(path, err)
        if error is None:
            raise
        raise error from err


def append_line(path: str | Path, text: str) -> None:
    """Append `text` and a newline in one write; if that fails (ENOSPC, EFBIG), cut the file back to its
    previous size, so it never ends in a partial line that would break every later reader."""
    path = Path(path)
    data = (text.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):  # a write may stop short just before the disk is full
                done += os.write(fd, data[done:])
        except OSError as err:
            os.ftruncate(fd, size)
            raise WriteError(err.errno, err.strerror, str(path)) from None
    finally:
        os.close(fd)


class FolderBusy(OSError):
    """Another live process writes the folder; str() is one line naming it (an OSError: the CLI reports it
    as one line with exit 2, as it does a full disk)."""


class FolderLock:
    """An exclusive lock on a folder, taken by `lock_folder`: an `flock` on `<folder>/.lock` (or the given
    lock file), held until `release()` or the process's death, when the OS drops it; a crash never leaves a
    stale lock, only a file the next holder takes over. The file names the holder's pid and host so a refused
    writer can say who it is, and is removed on release."""

    LOCK_FILE = ".lock"

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd is not None:
            # Removed while still held: a process that opened it meanwhile finds it gone and retries (below).
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_folder(folder: str | Path, what: str, lock_file: str | Path | None = None) -> FolderLock:
    """Take the one-writer lock of `folder` (created if missing) for `what` (e.g. "flair train"), or raise
    FolderBusy naming the holder's pid and host."""
    import fcntl
    import socket

    folder = Path(folder)
    path = Path(lock_file) if lock_file else folder / FolderLock.LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderBusy(f"{folder} is being written by {holder}: one writer per folder; wait for it to "
                             "end or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:  # not a file its last holder removed after we opened it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()})".encode(), 0)
    return FolderLock(fd, path)
