"""Uploaded files, kept inside their job's folder: one file saved under a name the server chooses, or a zip/tar
archive unpacked with every member checked first.

Archives are refused whole (nothing is written) when a member's name is absolute or climbs out with `..`, when a
member is a symbolic or hard link, a device or a FIFO, when there are more than `max_members` members, or when
their sizes add up to more than `max_bytes` (a zip bomb); bytes are counted again while writing, in case a header
lies.  A failure half-way through removes what was written.

    save_upload(request.files["python_layer_client_file"], job.dir, "digits_python_layers.py",
                max_bytes=1 << 20, extensions=(".py",))
    extract_archive(job.path("upload.zip"), job.path("images"), max_bytes=4 << 30)
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile

from caffelike.errors import CaffeError

DEFAULT_MAX_EXTRACT_BYTES = 4 << 30
DEFAULT_MAX_MEMBERS = 200_000
ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK = 1 << 20
# What archivers on macOS and Windows add beside the real files; as class folders they would break a dataset.
_JUNK_DIRS = ("__MACOSX",)
_JUNK_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
_DRIVE = re.compile(r"^[A-Za-z]:")


class UploadError(CaffeError):
    """An upload that is refused; the message says why, in terms of the file the user sent."""


# ------------------------------------------------------------------------------------------------ one file
def check_filename(filename: str, extensions=None) -> str:
    """The base name of a client's file name, refused when empty or (with `extensions`) of another type."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", ".."):
        raise UploadError("the uploaded file has no name")
    if "\0" in name:
        raise UploadError("the uploaded file's name holds a NUL character")
    if extensions and not name.lower().endswith(tuple(e.lower() for e in extensions)):
        raise UploadError(f"{name!r} is not a {' or '.join(extensions)} file")
    return name


def save_upload(storage, folder: str, name: str, *, max_bytes: int, extensions=None) -> str:
    """Write the uploaded file (a werkzeug FileStorage or any object with `.stream` or `.read`, and
    `.filename`) to `folder/name`; `name` is chosen by the server and must be a plain file name.  The client's
    file name is only checked against `extensions`.  Returns the path written."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"save_upload: {name!r} is not a plain file name")
    check_filename(getattr(storage, "filename", "") or name, extensions)
    path = os.path.join(folder, name)
    stream = getattr(storage, "stream", storage)
    with _open_new(path) as out:
        written = _copy(stream, out, max_bytes, path,
                        f"the uploaded file is larger than {_size(max_bytes)}; that is the limit")
    if written == 0:
        os.unlink(path)
        raise UploadError("the uploaded file is empty")
    return path


# ------------------------------------------------------------------------------------------------ archives
def is_archive_name(filename: str) -> bool:
    return (filename or "").lower().endswith(ARCHIVE_EXTENSIONS)


def extract_archive(path: str, dest: str, *, max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
                    max_members: int = DEFAULT_MAX_MEMBERS) -> int:
    """Unpack the zip or tar (plain, gzip, bzip2 or xz) at `path` into the new folder `dest`; returns the number
    of files written.  The kind is told from the content, not the name."""
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise ValueError(f"extract_archive: {dest!r} must be a new or empty folder")
    if zipfile.is_zipfile(path):
        opener = _zip_members
    elif _is_tar(path):
        opener = _tar_members
    else:
        raise UploadError("the file is not a zip or tar archive (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)")
    os.makedirs(dest, exist_ok=True)
    try:
        with opener(path, max_bytes, max_members) as members:
            return _write_members(members, dest, max_bytes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


class _Members:
    """The checked plan of an archive: (parts, reader or None for a folder), with the archive kept open."""

    def __init__(self, archive, plan):
        self.archive, self.plan = archive, plan

    def __enter__(self):
        return self.plan

    def __exit__(self, *exc):
        self.archive.close()


def _zip_members(path, max_bytes, max_members) -> _Members:
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UploadError(f"the zip archive is damaged ({e})") from None
    try:
        if len(infos) > max_members:
            raise UploadError(f"the archive holds {len(infos)} members; at most {max_members} are accepted")
        plan, total = [], 0
        for info in infos:
            mode = (info.external_attr >> 16) & 0xFFFF
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                raise UploadError(f"archive member {info.filename!r} is a symbolic link; links are refused")
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UploadError(f"archive member {info.filename!r} is not a regular file or folder")
            if info.flag_bits & 0x1:
                raise UploadError(f"archive member {info.filename!r} is encrypted")
            parts = _safe_parts(info.filename)
            if parts is None:
                continue
            if info.is_dir() or kind == stat.S_IFDIR:
                plan.append((parts, None))
                continue
            total += info.file_size
            _check_total(total, max_bytes)
            plan.append((parts, lambda info=info: zf.open(info)))
        return _Members(zf, plan)
    except BaseException:
        zf.close()
        raise


def _tar_members(path, max_bytes, max_members) -> _Members:
    try:
        tf = tarfile.open(path, "r:*")  # noqa: SIM115 - _Members closes it, after the members are written
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UploadError(f"the tar archive is damaged ({e})") from None
    try:
        plan, total, count = [], 0, 0
        try:
            for member in tf:  # lazily: a bomb is refused before the whole stream is decompressed
                count += 1
                if count > max_members:
                    raise UploadError(f"the archive holds more than {max_members} members")
                if member.issym() or member.islnk():
                    raise UploadError(f"archive member {member.name!r} is a {'symbolic' if member.issym() else 'hard'}"
                                      " link; links are refused")
                if not (member.isreg() or member.isdir()):
                    raise UploadError(f"archive member {member.name!r} is a device, FIFO or other special file")
                parts = _safe_parts(member.name)
                if parts is None:
                    continue
                if member.isdir():
                    plan.append((parts, None))
                    continue
                total += member.size
                _check_total(total, max_bytes)
                plan.append((parts, lambda member=member: tf.extractfile(member)))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UploadError(f"the tar archive is damaged ({e})") from None
        return _Members(tf, plan)
    except BaseException:
        tf.close()
        raise


def _check_total(total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise UploadError(f"the archive unpacks to more than {_size(max_bytes)}; that is the limit")


def _safe_parts(name: str) -> list[str] | None:
    """The path components of a member name, refused when it would leave the folder; None for junk to skip."""
    raw = name.replace("\\", "/")
    if "\0" in raw or any(ord(c) < 32 for c in raw):
        raise UploadError(f"archive member {name!r} has control characters in its name")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise UploadError(f"archive member {name!r} has an absolute path; only relative paths are accepted")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"archive member {name!r} climbs out of the folder with '..'")
    if not parts or parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_FILES or parts[-1].startswith("._"):
        return None
    return parts


def _write_members(plan, dest: str, max_bytes: int) -> int:
    root = os.path.realpath(dest)
    written, files = 0, 0
    for parts, reader in plan:
        target = os.path.join(root, *parts)
        folder = target if reader is None else os.path.dirname(target)
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
        except OSError as e:
            raise UploadError(f"cannot unpack {'/'.join(parts)!r}: {e.strerror or e}") from None
        real = os.path.realpath(folder)
        if real != root and not real.startswith(root + os.sep):  # only links could do this, and none are made
            raise UploadError(f"archive member {'/'.join(parts)!r} would be written outside the folder")
        if reader is None:
            continue
        try:
            with reader() as src, _open_new(target) as out:
                written += _copy(src, out, max_bytes - written, target,
                                 f"the archive unpacks to more than {_size(max_bytes)}; that is the limit")
        except UploadError:
            raise
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, RuntimeError) as e:
            raise UploadError(f"cannot unpack {'/'.join(parts)!r}: {e}") from None
        files += 1
    return files


# ------------------------------------------------------------------------------------------------- helpers
def _open_new(path: str):
    """A file opened for writing that never follows a link planted at its name."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise UploadError(f"cannot write {os.path.basename(path)!r}: {e.strerror or e}") from None
    return os.fdopen(fd, "wb")


def _copy(src, out, limit: int, path: str, too_big: str) -> int:
    written = 0
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if written > limit:
            out.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise UploadError(too_big)
        out.write(chunk)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
