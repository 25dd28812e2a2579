"""Writing a run's files so that a failure loses nothing already saved (the training engine).

A full disk, a read-only file system, a quota or a kill can strike in the middle of any write.
Every file of a run folder is written so that the previous version stays whole and nothing
half-written is left behind:

- whole files (checkpoint, sample grid, config, results) go to a temp file beside the target,
  are fsynced, then renamed over it in one atomic step (:func:`write_atomic`);
- an appended log (``metrics.jsonl``) is cut back to its previous length when an append fails
  (:func:`append_line`), and TensorBoard's event file to its last whole record
  (:func:`trim_event_file`).

A failure raises :class:`WriteError`, one sentence naming the file and the cause.
"""
from __future__ import annotations

import errno
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission was denied",
    errno.EPERM: "permission was denied",
    errno.EFBIG: "the file grew past the size limit of this process or file system",
    errno.EIO: "the disk reported an input/output error",
}


def cause(err: OSError) -> str:
    """What went wrong, in words: 'the disk is full (errno 28)'."""
    text = CAUSES.get(err.errno, err.strerror or type(err).__name__)
    return f"{text} (errno {err.errno})" if err.errno else text


class WriteError(RuntimeError):
    """A file of the run could not be written; ``str()`` is one sentence naming it and the cause."""

    def __init__(self, path: str | Path, err: OSError, kept: str = ""):
        self.path, self.oserror, self.kept = Path(path), err, kept
        super().__init__(f"Could not write {path}: {cause(err)}{'; ' + kept if kept else ''}.")

    def with_note(self, kept: str) -> WriteError:
        """The same failure with what was kept and what to do (the engine knows both)."""
        return WriteError(self.path, self.oserror, kept)


_UMASK = os.umask(0)
os.umask(_UMASK)
_write = os.write  # append_line's system call (a test makes it fail as a full disk would)


def remove_stale_temps(path: Path) -> None:
    """Temp files a killed writer of ``path`` left behind (at most one per kill)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then atomically replace ``path``.

    On an OSError (full disk, read-only, ...) the temp file is removed, ``path`` keeps its old
    contents, and a :class:`WriteError` is raised; other exceptions from ``write`` pass through
    after the same clean-up. Only one process may write a given ``path`` at a time.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise WriteError(path, err) from None
    recorder = _RecordingFile(os.fdopen(fd, "wb"))
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it private; the file it replaces was not
        with recorder.file:
            write(recorder)
            recorder.file.flush()
            os.fsync(recorder.file.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as err:
        if os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        failure = err if isinstance(err, OSError) else recorder.error  # torch.save wraps the OSError it met
        if failure is not None and not isinstance(err, KeyboardInterrupt):
            raise WriteError(path, failure) from None
        raise


class _RecordingFile:
    """A binary file that remembers the OSError its last write met: ``torch.save`` reports a failed
    write as a RuntimeError without the errno, and the errno is what says 'the disk is full'."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` + newline to ``path`` whole, or leave the file as it was and raise WriteError."""
    data = (line + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise WriteError(path, err) from None
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        done = 0
        try:
            while done < len(data):  # a nearly full disk may take part of the line, then refuse the rest
                done += _write(fd, data[done:])
        except BaseException as err:  # a full disk, or a forced interrupt between two writes
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise WriteError(path, err) from None
            raise
    finally:
        os.close(fd)


def trim_event_file(path: str | Path) -> None:
    """Cut a TensorBoard event file back to its last whole record (a failed write may leave part of one).

    A record is: uint64 length, uint32 CRC of the length, ``length`` bytes, uint32 CRC of the data.
    """
    path = Path(path)
    if not path.is_file():
        return
    size, end = path.stat().st_size, 0
    with open(path, "rb") as f:
        while end + 12 <= size:
            f.seek(end)
            (length,) = struct.unpack("<Q", f.read(8))
            if end + 16 + length > size:
                break
            end += 16 + length
    if end < size:
        os.truncate(path, end)


def run_folder_problem(folder: str | Path) -> str:
    """'' when ``folder`` can hold a run, else the sentence that refuses it (before any training)."""
    try:
        check_folder_writable(folder)
    except WriteError as err:
        return f"The run folder {folder} cannot be written ({cause(err.oserror)}): choose another --out."
    return ""


def check_folder_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and write and remove a probe file in it; WriteError if that fails.

    Raises ``NotADirectoryError``'s WriteError when ``folder`` is an existing file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(folder, NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise WriteError(folder, err) from None
