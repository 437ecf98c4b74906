"""Writing files so that a crash never leaves a half-written one behind: the data goes to a temporary file in the
target's folder, is flushed to disk, and is renamed over the target."""
from __future__ import annotations

import os
import tempfile

from caffelike.errors import OutputError

TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_with(path, write)


def atomic_write_with(path: str, write, suffix: str = "") -> None:
    """The same for a writer that needs a file name (h5py): `write(tmp_path)` creates the file under a temporary
    name in the target's folder, `.tmp-<target name>-<random>`, which is then flushed to disk and renamed over
    `path`.  A write that fails raises OutputError naming `path` (never the temporary file) and leaves nothing."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path!r}: the folder {folder!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_stem(os.path.basename(path)) + "-", suffix=suffix, dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write {path!r}: {e.strerror or e}") from None
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot write {path!r}: {e.strerror or e}") from None
    except BaseException:
        _discard(tmp)
        raise


def check_output_folder(path: str, what: str) -> None:
    """Fail now, before any long work, if `path` could not be written later: its folder must exist and take
    files.  `what` says which setting named the path."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise OutputError(f"{what}: cannot write {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: cannot write {path!r}: the folder {folder!r} is not writable")


def _temp_stem(name: str) -> str:
    return TEMP_PREFIX + name[:100]  # (a file name has at most 255 bytes)


def _discard(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)


def remove_stale_temporaries(path_prefix: str) -> list[str]:
    """Delete the temporary files an interrupted atomic write (kill -9, power loss) left for targets whose name
    starts with the base name of `path_prefix`, in its folder; returns their paths."""
    folder = os.path.dirname(os.path.abspath(path_prefix))
    stem = _temp_stem(os.path.basename(path_prefix))
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(stem):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
            except OSError:
                pass
    return removed
