"""The new image-classification dataset form, read with DIGITS' field names (digits/dataset/images/
classification/forms.py), and the `caffelike dataset create` command it becomes.

Sources (`method`): `folder` (DIGITS': `folder_train`, a folder of class sub-folders on the server), `upload` (ours:
an `archive` zip/tar of such folders, unpacked into the job folder) and `bundled` (ours: caffelike's 5,000 MNIST
digits).  With `folder`, DIGITS' separate validation and test folders (`has_val_folder` + `folder_val`,
`has_test_folder` + `folder_test`).  DIGITS' `textfile` method, URLs and the HDF5/TFRecords backends are
refused with a message beside their field.  Image size and type default to DIGITS' (256x256 colour) for folders and
uploads, and to MNIST's (28x28 grayscale) for the bundled digits, when the fields are left empty.
"""
from __future__ import annotations

import os

from caffelike.digits.dataset import ENCODINGS, RESIZE_MODES
from caffelike.web.forms import Form
from caffelike.web.uploads import ARCHIVE_EXTENSIONS, is_archive_name

METHODS = ("folder", "upload", "bundled")
MAX_SIDE = 4096  # a larger mean image (float64 sums) would take gigabytes of the job's memory
# Every field the form keeps (what a clone pre-fills); the archive itself cannot be kept.
FIELDS = ("dataset_name", "group_name", "method", "folder_train", "folder_pct_val", "folder_pct_test",
          "has_val_folder", "folder_val", "has_test_folder", "folder_test",
          "folder_train_min_per_class", "folder_train_max_per_class", "resize_channels", "resize_width",
          "resize_height", "resize_mode", "encoding", "backend", "compression", "seed")
ALIASES = {"max_per_class": "folder_train_max_per_class", "min_per_class": "folder_train_min_per_class"}
DEFAULTS = {"method": "folder", "folder_pct_val": "25", "folder_pct_test": "0", "folder_train_min_per_class": "2",
            "resize_mode": "squash", "encoding": "png", "backend": "lmdb", "compression": "none", "seed": "0"}
SIZE_DEFAULTS = {"folder": ("3", "256", "256"), "upload": ("3", "256", "256"), "bundled": ("1", "28", "28")}


def form_values(values) -> dict:
    """The submitted values of FIELDS as strings (aliases folded in), for the params a clone pre-fills."""
    out = {}
    for alias, field in ALIASES.items():
        if str(values.get(alias, "")).strip() and not str(values.get(field, "")).strip():
            out[field] = str(values.get(alias)).strip()
    for field in FIELDS:
        raw = values.get(field)
        if raw is not None and str(raw).strip() != "":
            out[field] = str(raw).strip()
    return out


def read_form(values, files) -> tuple[dict, dict, dict]:
    """(spec, kept values, errors) of a submitted form: `spec` holds the checked settings, `errors` maps each
    bad field to its message."""
    kept = form_values(values)
    form = Form(kept, files)
    spec: dict = {"name": form.text("dataset_name", required=True, max_length=200),
                  "group": form.text("group_name", max_length=200)}
    method = form.text("method") or ("upload" if form.upload("archive") else DEFAULTS["method"])
    if method == "textfile":
        form.error("method", "text-file datasets are not supported here: use a folder of class sub-folders, an "
                             "uploaded archive of them, or the bundled digits")
        method = "folder"
    elif method not in METHODS:
        form.error("method", f"must be one of {', '.join(METHODS)}; got {method!r}")
        method = "folder"
    spec["method"] = method
    if method == "folder":
        spec["folder"] = _server_folder(form, "folder_train")
    elif method == "upload":
        archive = form.upload("archive")
        if archive is None:
            form.error("archive", "choose a .zip or .tar(.gz) archive of class sub-folders to upload")
        elif not is_archive_name(archive.filename):
            form.error("archive", f"{os.path.basename(archive.filename)!r} is not an archive; give one of "
                                  f"{', '.join(ARCHIVE_EXTENSIONS)}")
        spec["archive"] = archive
    separate = {}  # DIGITS' "separate validation/test images folder": its percentage is then not read
    for flag, field, split, what in (("has_val_folder", "folder_val", "val", "validation"),
                                     ("has_test_folder", "folder_test", "test", "test")):
        if Form(values).flag(flag):
            if method != "folder":
                form.error(flag, f"a separate {what} folder goes with the folder method (folders on the server)")
            else:
                separate[split] = _server_folder(form, field)
    spec["val_folder"], spec["test_folder"] = separate.get("val"), separate.get("test")

    val = 0 if "val" in separate else form.number("folder_pct_val", 25, minimum=0, maximum=100)
    test = 0 if "test" in separate else form.number("folder_pct_test", 0, minimum=0, maximum=100)
    if val is not None and test is not None and val + test >= 100 and not {"folder_pct_val",
                                                                           "folder_pct_test"} & set(form.errors):
        form.error("folder_pct_val", f"folder_pct_val ({_num(val)}) + folder_pct_test ({_num(test)}) must be "
                                     "below 100, to leave images for training")
    spec["val_percent"], spec["test_percent"] = _num(val), _num(test)
    spec["min_per_class"] = form.integer("folder_train_min_per_class", 2, minimum=1)
    spec["max_per_class"] = form.integer("folder_train_max_per_class", None, minimum=1)
    if spec["max_per_class"] is not None and spec["min_per_class"] and spec["max_per_class"] < spec["min_per_class"]:
        form.error("folder_train_max_per_class", f"must be at least folder_train_min_per_class "
                                                 f"({spec['min_per_class']})")
    channels, width, height = SIZE_DEFAULTS[method]
    spec["channels"] = int(form.choice("resize_channels", ("1", "3"), channels))
    spec["width"] = form.integer("resize_width", int(width), minimum=1, maximum=MAX_SIDE)
    spec["height"] = form.integer("resize_height", int(height), minimum=1, maximum=MAX_SIDE)
    spec["resize_mode"] = form.choice("resize_mode", RESIZE_MODES, "squash")
    spec["encoding"] = form.choice("encoding", ENCODINGS, "png")
    backend = form.text("backend") or "lmdb"
    if backend.lower() != "lmdb":
        form.error("backend", f"only lmdb is supported (caffelike reads LMDB datasets); got {backend!r}")
    form.choice("compression", ("none", "gzip"), "none")  # DIGITS ignores it for LMDB, and so do we
    spec["seed"] = form.integer("seed", 0, minimum=0, maximum=2 ** 32 - 1)
    return spec, kept, form.errors


def _server_folder(form: Form, field: str) -> str | None:
    raw = form.text(field)
    if not raw:
        form.error(field, "required: a folder on the server holding one sub-folder of images per class")
        return None
    if "://" in raw:
        form.error(field, "URLs are not supported (the server does not download): give a folder on the server")
        return None
    path = os.path.expanduser(raw)
    if not os.path.isabs(path):
        form.error(field, f"give an absolute path (starting with /), not {raw!r}")
        return None
    real = os.path.realpath(path)
    if not os.path.exists(real):
        form.error(field, f"folder {raw!r} does not exist")
        return None
    if not os.path.isdir(real):
        form.error(field, f"{raw!r} is a file, not a folder")
        return None
    problem = class_folder_problem(real)
    if problem:
        form.error(field, problem)
        return None
    return real


def class_folder_problem(folder: str) -> str:
    """Why `folder` cannot be a dataset's image folder (needs two class sub-folders), or ''."""
    try:
        subfolders = [n for n in os.listdir(folder) if not n.startswith(".")
                      and os.path.isdir(os.path.join(folder, n))]
    except OSError as e:
        return f"cannot read folder {folder!r}: {e.strerror or e}"
    if len(subfolders) < 2:
        found = f"only {subfolders[0]!r}" if subfolders else "none"
        return f"the folder needs one sub-folder of images per class, at least two (found {found})"
    return ""


def class_root(folder: str) -> str:
    """The folder of class sub-folders inside an unpacked archive: archives often wrap them in one top folder
    (pets.zip holding pets/cat, pets/dog), which is stepped into."""
    for _ in range(8):
        entries = [n for n in os.listdir(folder) if not n.startswith(".")]
        dirs = [n for n in entries if os.path.isdir(os.path.join(folder, n))]
        if len(dirs) == 1 and len(entries) == 1:
            inner = os.path.join(folder, dirs[0])
            if any(os.path.isdir(os.path.join(inner, n)) for n in os.listdir(inner)):
                folder = inner
                continue
        break
    return folder


def command(spec: dict, folder: str | None) -> list[str]:
    """The job's argv (run in the job folder, writing the DIGITS dataset to `dataset/`)."""
    argv = ["{python}", "-m", "caffelike", "dataset", "create"]
    argv += ["--bundled"] if spec["method"] == "bundled" else ["--folder", folder]
    argv += ["--image-type", "grayscale" if spec["channels"] == 1 else "color",
             "--size", f"{spec['height']}x{spec['width']}", "--resize-mode", spec["resize_mode"],
             "--val-percent", str(spec["val_percent"]), "--test-percent", str(spec["test_percent"]),
             "--encoding", spec["encoding"], "--seed", str(spec["seed"]),
             "--min-per-class", str(spec["min_per_class"])]
    if spec["max_per_class"] is not None:
        argv += ["--max-per-class", str(spec["max_per_class"])]
    for split in ("val", "test"):
        if spec.get(f"{split}_folder"):
            argv += [f"--{split}-folder", spec[f"{split}_folder"]]
    return argv + ["--out", "dataset"]


def _num(value):
    """A percentage as the form showed it: 25, not 25.0."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value
