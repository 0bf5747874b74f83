"""Writing files so that nobody sees half of one: the temporary-then-rename pattern every writer
in sciddpm goes through (run directories, stores, caches, pictures), with the permissions a plain
``open`` would give and the clean-up of what a killed writer left behind; and ``hold``, the one
writer of a run directory or an ensemble store."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def follow_umask(path: Path) -> Path:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would (0666/0777 less the umask).
    ``mkdtemp`` and safetensors make their files private, which would keep a run's weights from
    the colleagues who can read the rest of it."""
    path.chmod((0o777 if path.is_dir() else 0o666) & ~_current_umask())
    return path


def _current_umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux). Elsewhere
    it is read by setting it for a moment - to the strictest mask, so that a file another thread
    creates meanwhile (a TensorBoard event file) comes out private, never world-writable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


@functools.cache
def _process_table_tag() -> str:
    """10 hex digits naming the process table this process lives in: its host (the raw hostname),
    boot and pid namespace. Two writers share it only if their pids are numbers of one table, so
    a pid read from a temporary's name is checked where it means something: not on another node
    of a shared file system, nor in a container with its own pids under the same hostname."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if source.endswith("boot_id") else os.readlink(source))
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]


def _owner_tag() -> str:
    """``<process table>-<pid>`` of this process, as it appears in the names of its temporaries."""
    return f"{_process_table_tag()}-{os.getpid()}"


def _remove_dead_temporaries(target: Path) -> None:
    """Remove the temporaries of ``target`` that a killed process left beside it, and put back a
    directory one had moved aside. Best effort: what cannot be removed (another user's, a race
    with another writer cleaning up too) is left, and the write goes on.

    Only names ``atomic_path`` makes are touched, and only when their process is gone from this
    process table: a build still running elsewhere (another process, another node of a shared
    file system, another container) keeps its own.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?P<table>[0-9a-f]{{10}})-(?P<pid>\d+)\.(?:old|[^.]+\.tmp)")
    table = _process_table_tag()
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
        match = pattern.fullmatch(leftover.name)
        if not match or match["table"] != table or _process_alive(int(match["pid"])):
            continue
        try:
            if leftover.name.endswith(".old") and not target.exists():  # killed between its two renames
                os.replace(leftover, target)
                log.warning("restored %s from %s, moved aside by a process (%s) that was killed while "
                            "replacing it", target, leftover.name, match["pid"])
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
                log.warning("removed %s, left by a process (%s) killed while writing it", leftover, match["pid"])
            else:
                leftover.unlink()
                log.warning("removed %s, left by a process (%s) killed while writing it", leftover, match["pid"])
        except OSError as error:
            log.debug("left %s in place (%s)", leftover, error)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it into place with os.replace.

    Works for files and for directories (zarr stores). Readers never see a half-written target:
    on error the temporary is removed and ``target`` is left as it was. A directory is replaced
    in two renames (old aside, new in), so between them a reader finds no target; a failed second
    rename puts the old one back. Temporaries are named with this process's id and process table
    (host, boot, pid namespace), so what a killed process left (a first-use build stopped with
    kill -9) is removed, or an old directory it had moved aside restored, by the next write of
    the same target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target)
    owner = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{owner}.", suffix=".tmp", dir=target.parent))
    tmp.rmdir()  # the caller creates a file or a directory here
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():  # os.replace cannot replace a non-empty dir
            old = target.with_name(f".{target.name}.{owner}.old")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, synced, then os.replace."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    """Flush ``path`` to disk before it is renamed into place (a power cut must not leave a
    complete-looking name over empty blocks)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


class HeldElsewhere(Exception):
    """Another process holds the lock; ``holder`` says which (as it wrote it: "sciddpm train, pid 12")."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def hold(target: str | Path, holder: str) -> IO | None:
    """Hold ``target`` (a run directory, a store) for this process: an exclusive ``flock`` on
    ``.<name>.lock`` beside it, so taking it creates nothing at ``target``. Released when the
    returned file is closed or the process ends, a kill included. ``holder`` ("sciddpm train") is
    written into the lock with this pid, for the error another process gets: ``HeldElsewhere``.
    None where there is no flock (Windows): one writer is then the user's to ensure."""
    try:
        import fcntl
    except ImportError:
        return None
    real = Path(target).resolve()  # one lock per target, however it is reached (a symlink, ".")
    real.parent.mkdir(parents=True, exist_ok=True)
    handle = open(real.with_name(f".{real.name}.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        found = handle.read().strip() or "another process"
        handle.close()
        raise HeldElsewhere(found) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{holder}, pid {os.getpid()}")
    handle.flush()
    return handle
