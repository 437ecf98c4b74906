"""DIGITS' text-file dataset method: images listed in a text file, one `path label` line each, where the label is
a line number (from 0) of a labels file of class names.

Relative paths are resolved against `root` (DIGITS' "image folder" of the method) or, without one, against the
list file's folder.  Every class of the labels file keeps its index, with or without images, so the labels
the list files give stay the labels the dataset holds; no percentage of the training list is drawn off for
validation unless asked (DIGITS takes validation and test images only from their own list files).
"""
from __future__ import annotations

import os

from caffelike.data.dbwriter import DatasetError
from caffelike.digits.sources import Source, load_image


def read_labels_file(path: str) -> list[str]:
    """The class names of a labels file: one per non-empty line, in order; a repeated name is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read labels file {path!r}: {getattr(e, 'strerror', None) or e}") from None
    if len(names) < 2:
        raise DatasetError(f"labels file {path!r} names {len(names)} class(es); a classification dataset needs two")
    seen = {}
    for number, name in enumerate(names, 1):
        if name in seen:
            raise DatasetError(f"labels file {path!r}: class {name!r} is named twice (lines {seen[name]} and "
                               f"{number} of its non-empty lines)")
        seen[name] = number
    return names


class ListSource(Source):
    """The images of a list file, by class of `labels` (a labels file's path or its names)."""

    kind = "textfile"
    keeps_every_class = True
    default_val_percent = 0

    def __init__(self, list_file: str, labels, root: str | None = None):
        self.list_file = os.path.abspath(list_file)
        self.labels_file = os.path.abspath(labels) if isinstance(labels, (str, os.PathLike)) else None
        self.labels = read_labels_file(self.labels_file) if self.labels_file else list(labels)
        self.root = os.path.abspath(root) if root else os.path.dirname(self.list_file)
        if root and not os.path.isdir(self.root):
            raise DatasetError(f"image folder {self.root!r} (where {list_file!r}'s relative paths start) is not a "
                               "folder")

    def _entries(self) -> list[tuple[str, int]]:
        try:
            with open(self.list_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"cannot read image list {self.list_file!r}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        entries = []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            where = f"{self.list_file}:{number}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise DatasetError(f"{where}: expected 'image-path label', got {line!r}")
            path, label = parts
            try:
                index = int(label)
            except ValueError:
                raise DatasetError(f"{where}: the label {label!r} is not a whole number (a line of the labels "
                                   "file, from 0)") from None
            if not 0 <= index < len(self.labels):
                raise DatasetError(f"{where}: label {index} is outside the labels file's {len(self.labels)} "
                                   f"classes (0 to {len(self.labels) - 1})")
            path = path if os.path.isabs(path) else os.path.join(self.root, path)
            if not os.path.isfile(path):
                raise DatasetError(f"{where}: image file {path!r} not found")
            entries.append((path, index))
        if not entries:
            raise DatasetError(f"image list {self.list_file!r} lists no images")
        return entries

    def categories(self, max_per_class):
        by_class: list[list[str]] = [[] for _ in self.labels]
        for path, index in self._entries():
            if max_per_class is None or len(by_class[index]) < max_per_class:
                by_class[index].append(path)
        return list(zip(self.labels, by_class))

    def image(self, path):
        return load_image(path)

    def path(self, item, class_name):
        return item

    def describe(self):
        return {"type": self.kind, "list": self.list_file, "labels_file": self.labels_file, "root": self.root}
