"""Writing files so that a crash never leaves a half-written one behind: the data goes to a temporary file in the
target's folder, is flushed to disk, and is renamed over the target."""
from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_with(path, write)


def atomic_write_with(path: str, write, suffix: str = "") -> None:
    """The same for a writer that needs a file name (h5py): `write(tmp_path)` creates the file under a temporary
    name in the target's folder, which is then flushed to disk and renamed over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
