"""`caffelike dataset create --out DIR [SOURCE] [OPTIONS]`: a DIGITS image-classification dataset folder.

    caffelike dataset create --out mnist_ds                          the bundled 5,000 digits, as DIGITS' MNIST
    caffelike dataset create --out mnist_ds --mnist-idx ~/mnist      train-images-idx3-ubyte[.gz] & labels
    caffelike dataset create --out pets --folder ~/pets --size 64x64 one sub-folder per class
    caffelike dataset create --generic --out reg --inputs x.npy --labels y.npy   a generic (regression) dataset
    caffelike dataset create --generic --out reg --labels values.csv --folder ~/imgs   ... from images and values

Writes labels.txt, train.txt, val.txt, train_db/, val_db/, mean.binaryproto, mean.jpg and dataset.json with
DIGITS' defaults (25% validation, PNG-encoded Datums, squash resizing, at least 2 images per class); see
caffelike.digits.dataset for how each file is made and where this differs from DIGITS.
"""
from __future__ import annotations

import logging

from caffelike.data.dbwriter import DatasetError

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="action")
    sub.required = True
    c = sub.add_parser("create", help="build the dataset folder",
                       description="Build a DIGITS image-classification dataset (LMDBs, mean, labels).")
    c.add_argument("--out", required=True, metavar="DIR", help="the dataset folder to create")
    source = c.add_mutually_exclusive_group()
    source.add_argument("--folder", metavar="PATH", help="a folder of class sub-folders of images; with --generic "
                                                         "--labels FILE, the folder its image paths start from "
                                                         "(default: the label file's folder)")
    source.add_argument("--mnist-idx", metavar="DIR", help="a folder holding MNIST's IDX files (gzipped or not, "
                                                           "LeCun's or DIGITS' names)")
    source.add_argument("--images", metavar="FILE", help="an IDX image file (with --labels)")
    source.add_argument("--bundled", action="store_true", help="caffelike's 5,000 MNIST digits (the default)")
    source.add_argument("--train-list", metavar="FILE", help="DIGITS' text-file method: lines 'image-path label' "
                                                             "(label: a line of --labels-file, from 0)")
    c.add_argument("--labels-file", metavar="FILE", help="with --train-list: the class names, one per line")
    c.add_argument("--list-root", metavar="DIR", help="with --train-list: where the lists' relative paths start "
                                                      "(default: each list file's folder)")
    c.add_argument("--val-list", metavar="FILE", help="with --train-list: the validation images, listed the same "
                                                      "way")
    c.add_argument("--test-list", metavar="FILE", help="with --train-list: the test images, listed the same way")
    c.add_argument("--labels", metavar="FILE", help="the IDX label file that goes with --images; with --generic "
                                                    "and --inputs a .npy/.npz of N x K label vectors; with --generic "
                                                    "alone a label file: lines 'image-path v1 v2 ...' (or a .csv: "
                                                    "path,v1,v2,...)")
    c.add_argument("--generic", action="store_true",
                   help="a DIGITS generic (regression) dataset: input and label LMDBs and the mean, from arrays "
                        "(--inputs N x C x H x W or N x H x W .npy/.npz, --labels N x K) or from images (--labels "
                        "FILE listing image paths and values, [--folder ROOT], --size, --image-type, ...)")
    c.add_argument("--inputs", metavar="FILE", help="with --generic: the inputs, .npy or .npz (an .npz may also "
                                                    "hold labels, val_inputs and val_labels)")
    c.add_argument("--val-inputs", metavar="FILE", help="with --generic: validation inputs (instead of "
                                                        "--val-percent)")
    c.add_argument("--val-labels", metavar="FILE", help="with --generic: validation label vectors (with "
                                                        "--val-inputs), or a validation label file")
    c.add_argument("--mnist-part", choices=("train", "test"), default=None,
                   help="which MNIST files --mnist-idx reads (default train, as the DIGITS tutorial)")
    c.add_argument("--image-type", choices=("grayscale", "color"), default=None,
                   help="default: grayscale for MNIST sources, color for --folder and generic label files")
    c.add_argument("--size", default=None, metavar="HxW", help="image height x width (default 28x28; for a "
                                                               "generic label file, the first image's size)")
    c.add_argument("--resize-mode", choices=("squash", "crop", "fill", "half_crop"), default="squash",
                   help="how images of another shape are fitted (default squash)")
    c.add_argument("--val-percent", type=percent, default=None, metavar="PCT",
                   help="%% of each class for validation (default 25; 0 with --val-folder)")
    c.add_argument("--test-percent", type=percent, default=0, metavar="PCT",
                   help="%% of each class for a test_db (default 0)")
    c.add_argument("--val-folder", metavar="DIR", help="DIGITS' separate validation images folder: class "
                   "sub-folders named as the training classes; every image goes to val_db")
    c.add_argument("--test-folder", metavar="DIR", help="a separate test images folder, the same way, for test_db")
    c.add_argument("--encoding", choices=("png", "jpg", "none"), default="png",
                   help="how images are stored in the Datums (default png)")
    c.add_argument("--seed", type=int, default=0, help="seed of the shuffles (DIGITS' are unseeded)")
    c.add_argument("--min-per-class", type=int, default=2, help="leave out classes with fewer images (default 2)")
    c.add_argument("--max-per-class", type=int, default=None, help="use at most this many images of each class")
    invert = c.add_mutually_exclusive_group()
    invert.add_argument("--no-invert", dest="invert", action="store_const", const=False, default=None,
                        help="keep MNIST digits white on black (DIGITS' downloader inverts them)")
    invert.add_argument("--invert", dest="invert", action="store_const", const=True,
                        help="store 255 - pixel, also for --folder images")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder once the new one "
                                                            "is complete")


def percent(text: str):
    """A percentage, kept an int when it is one (so dataset.json says 25, as DIGITS' form does)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def source_of(args):
    """The Source the flags name."""
    from caffelike.digits import dataset as dd

    if args.labels and not args.images:
        raise DatasetError("--labels goes with --images (an IDX image file)")
    if args.mnist_part and not args.mnist_idx:
        raise DatasetError("--mnist-part goes with --mnist-idx")
    if args.train_list:
        from caffelike.digits.list_source import ListSource
        if not args.labels_file:
            raise DatasetError("--train-list needs --labels-file (the class names, one per line)")
        return ListSource(args.train_list, args.labels_file, args.list_root)
    stray = [f for f, v in (("--labels-file", args.labels_file), ("--list-root", args.list_root),
                            ("--val-list", args.val_list), ("--test-list", args.test_list)) if v]
    if stray:
        raise DatasetError(f"{', '.join(stray)} go with --train-list (DIGITS' text-file method)")
    if args.folder:
        return dd.FolderSource(args.folder)
    if args.mnist_idx:
        return dd.mnist_idx_source(args.mnist_idx, args.mnist_part or "train")
    if args.images:
        if not args.labels:
            raise DatasetError("--images needs --labels (the IDX label file)")
        return dd.idx_source(args.images, args.labels)
    return dd.bundled_source()


def run_generic(args) -> int:
    from caffelike.cli.progress import ProgressBar
    from caffelike.digits.generic_dataset import create_generic_dataset
    from caffelike.digits.generic_images import create_generic_image_dataset

    other = [flag for flag, value in (("--mnist-idx", args.mnist_idx), ("--images", args.images),
                                      ("--bundled", args.bundled), ("--test-percent", args.test_percent)) if value]
    if other:
        raise DatasetError(f"--generic reads --inputs and --labels arrays or a --labels file of images and values; "
                           f"{', '.join(other)} cannot be used with it")
    if not args.inputs and args.labels and not args.labels.lower().endswith((".npy", ".npz")):
        if args.val_inputs:
            raise DatasetError("--val-inputs goes with --inputs (arrays); a label file's validation set is "
                               "--val-labels FILE")
        with ProgressBar("Creating dataset", unit="img") as bar:
            summary = create_generic_image_dataset(
                args.out, args.labels, root=args.folder, val_label_file=args.val_labels, size=args.size,
                image_type=args.image_type, resize_mode=args.resize_mode, encoding=args.encoding,
                val_percent=args.val_percent, seed=args.seed, overwrite=args.overwrite, progress=bar.advance_to)
        counts = ", ".join(f"{n} {split}" for split, n in summary["counts"].items())
        print(f"{summary['path']}: {counts} images {summary['height']}x{summary['width']} {summary['image_type']}, "
              f"label vectors of {summary['label_dim']}")
        return 0
    if not args.inputs:
        raise DatasetError("--generic needs --inputs (a .npy or .npz array of N x C x H x W or N x H x W inputs) "
                           "or --labels FILE (a label file of image paths and their values)")
    stray = [flag for flag, value in (("--folder", args.folder), ("--size", args.size),
                                      ("--image-type", args.image_type)) if value]
    if stray:
        raise DatasetError(f"{', '.join(stray)} go with a label file of images (--generic --labels FILE), not "
                           "with --inputs arrays")
    with ProgressBar("Creating dataset", unit="row") as bar:
        summary = create_generic_dataset(
            args.out, args.inputs, args.labels, val_inputs=args.val_inputs, val_labels=args.val_labels,
            val_percent=args.val_percent, seed=args.seed, overwrite=args.overwrite, progress=bar.advance_to)
    counts = ", ".join(f"{n} {split}" for split, n in summary["counts"].items())
    print(f"{summary['path']}: {counts} rows, inputs {summary['channels']}x{summary['height']}x{summary['width']} "
          f"{summary['input_dtype']}, label vectors of {summary['label_dim']}")
    return 0


def run(args) -> int:
    from caffelike.cli.progress import ProgressBar
    from caffelike.digits.dataset import create_dataset

    if args.generic:
        separate = [f for f, v in (("--val-folder", args.val_folder), ("--test-folder", args.test_folder)) if v]
        if separate:
            raise DatasetError(f"{', '.join(separate)} go with a classification dataset; a generic dataset's "
                               "validation set is --val-inputs or --val-labels")
        if args.val_percent is None:
            args.val_percent = 25
        return run_generic(args)
    stray = [f for f, v in (("--inputs", args.inputs), ("--val-inputs", args.val_inputs),
                            ("--val-labels", args.val_labels)) if v]
    if stray:
        raise DatasetError(f"{', '.join(stray)} go with --generic")
    source = source_of(args)
    val_set, test_set = args.val_folder, args.test_folder
    if args.train_list:
        from caffelike.digits.list_source import ListSource
        for flag, given in (("--val-folder", args.val_folder), ("--test-folder", args.test_folder)):
            if given:
                raise DatasetError(f"{flag} goes with --folder; with --train-list give --{flag[2:6]}-list")
        val_set = ListSource(args.val_list, source.labels, args.list_root) if args.val_list else None
        test_set = ListSource(args.test_list, source.labels, args.list_root) if args.test_list else None
    with ProgressBar("Creating dataset", unit="img") as bar:
        summary = create_dataset(
            args.out, source, image_type=args.image_type, size=args.size or "28x28",
            resize_mode=args.resize_mode,
            val_percent=args.val_percent, test_percent=args.test_percent, encoding=args.encoding, seed=args.seed,
            min_per_class=args.min_per_class, max_per_class=args.max_per_class, invert=args.invert,
            overwrite=args.overwrite, progress=bar.advance_to, val_folder=val_set, test_folder=test_set)
    counts = ", ".join(f"{n} {split}" for split, n in summary["counts"].items())
    print(f"{summary['path']}: {counts} images in {len(summary['labels'])} classes, "
          f"{summary['height']}x{summary['width']} {summary['image_type']}")
    return 0
