#!/usr/bin/env python
"""Run BVLC Caffe's own pycaffe test suite, unchanged, against caffelike.

    python scripts/run_bvlc_pycaffe_tests.py CAFFE_SRC               # every python/caffe/test/test_*.py
    python scripts/run_bvlc_pycaffe_tests.py CAFFE_SRC -v -k coord   # verbose, only tests matching *coord*
    python scripts/run_bvlc_pycaffe_tests.py CAFFE_SRC -p test_net.py

CAFFE_SRC is a Caffe source tree (a clone of BVLC/caffe): the script runs unittest discovery on
CAFFE_SRC/python/caffe/test with `import caffe` answered by caffelike, and exits 0 when every test passes, 1 when
one fails or errors, 2 when the tree is not a Caffe source tree.

How `caffe` becomes caffelike: `sys.modules["caffe"]` is the caffelike package itself, and an import hook answers
every `caffe.<name>` submodule (`caffe.proto.caffe_pb2`, `caffe.coord_map`, `caffe.draw`, `caffe.io`, ...) with
the module object `caffelike.<name>`, so a test's `from caffe.net_spec import Top` and caffelike's own code share
one set of classes.  A submodule caffelike does not have fails to import, as it would in a pycaffe without it.

The suite was written for Python 2 and early Python 3, so two things are provided when missing: the unittest
aliases removed in Python 3.12 (assertEquals, assertRaisesRegexp, ...) and a minimal `six` (itervalues,
iteritems, ...).  The tests run in a temporary working directory (test_solver snapshots into the current one);
test_draw reads CAFFE_SRC/models and CAFFE_SRC/examples and needs Graphviz's `dot`, as it does for pycaffe.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
import types
import unittest

TEST_SUBDIR = os.path.join("python", "caffe", "test")


# ------------------------------------------------------------------------------------------ caffe -> caffelike
class _AliasLoader(importlib.abc.Loader):
    """Loads `caffe.<name>` by importing `caffelike.<name>` and putting that very module in its place."""

    def __init__(self, real_name: str):
        self.real_name = real_name

    def create_module(self, spec):
        return None  # a placeholder; exec_module replaces it in sys.modules

    def exec_module(self, module) -> None:
        sys.modules[module.__name__] = importlib.import_module(self.real_name)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Answers imports of `caffe` and `caffe.*` with caffelike's modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "caffe" and not fullname.startswith("caffe."):
            return None
        real_name = "caffelike" + fullname[len("caffe"):]
        if real_name in sys.modules:
            found = True
        else:
            try:
                found = importlib.util.find_spec(real_name) is not None
            except ModuleNotFoundError:
                found = False
        if not found:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real_name))


def install_caffe_alias() -> types.ModuleType:
    """Make `import caffe` (and every `caffe.*`) resolve to caffelike in this process; returns caffelike."""
    try:
        import caffelike
    except ImportError:  # run from a checkout without an install: the repository root holds caffelike/
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import caffelike
    for name in [n for n in sys.modules if n == "caffe" or n.startswith("caffe.")]:
        del sys.modules[name]
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before the path finder, which would load duplicates
    sys.modules["caffe"] = caffelike
    return caffelike


# ----------------------------------------------------------------------------- what an old test suite expects
_UNITTEST_ALIASES = {
    "assertEquals": "assertEqual", "assertNotEquals": "assertNotEqual", "assertAlmostEquals": "assertAlmostEqual",
    "assertNotAlmostEquals": "assertNotAlmostEqual", "assert_": "assertTrue", "failUnless": "assertTrue",
    "failIf": "assertFalse", "assertRaisesRegexp": "assertRaisesRegex", "assertRegexpMatches": "assertRegex",
    "assertNotRegexpMatches": "assertNotRegex",
}


def install_legacy_unittest_names() -> None:
    """The TestCase method aliases Python 3.12 removed, where they are missing."""
    for old, new in _UNITTEST_ALIASES.items():
        if not hasattr(unittest.TestCase, old):
            setattr(unittest.TestCase, old, getattr(unittest.TestCase, new))


def install_six_if_missing() -> None:
    """A minimal `six` (what BVLC's tests use of it) when the real package is not installed."""
    if importlib.util.find_spec("six") is not None:
        return
    six = types.ModuleType("six")
    six.PY2, six.PY3 = False, True
    six.string_types, six.integer_types, six.class_types = (str,), (int,), (type,)
    six.text_type, six.binary_type = str, bytes
    six.itervalues = lambda d, **kw: iter(d.values(**kw))
    six.iteritems = lambda d, **kw: iter(d.items(**kw))
    six.iterkeys = lambda d, **kw: iter(d.keys(**kw))
    six.moves = types.SimpleNamespace(range=range, zip=zip, map=map, filter=filter, input=input)
    six.__doc__ = "A minimal stand-in for six, from scripts/run_bvlc_pycaffe_tests.py"
    sys.modules["six"] = six


# ------------------------------------------------------------------------------------------------------- main
def find_test_folder(caffe_src: str) -> str:
    """CAFFE_SRC/python/caffe/test, or SystemExit(2) with a message saying what is wrong."""
    root = os.path.abspath(caffe_src)
    if not os.path.isdir(root):
        raise SystemExit(_refuse(f"{caffe_src}: no such folder"))
    folder = os.path.join(root, TEST_SUBDIR)
    if not os.path.isdir(folder):
        raise SystemExit(_refuse(f"{caffe_src} is not a Caffe source tree: it has no {TEST_SUBDIR} folder "
                                 "(give the root of a BVLC/caffe checkout)"))
    return folder


def _refuse(message: str) -> int:
    print(f"run_bvlc_pycaffe_tests: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caffe_src", metavar="CAFFE_SRC", help="root of a Caffe source tree (BVLC/caffe)")
    parser.add_argument("-p", "--pattern", default="test_*.py", help="test files to run (default test_*.py)")
    parser.add_argument("-k", dest="name_patterns", action="append", default=None,
                        help="only tests whose name matches this substring or fnmatch pattern (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_const", const=2, default=1, dest="verbosity")
    parser.add_argument("-f", "--failfast", action="store_true", help="stop at the first failure")
    args = parser.parse_args(argv)

    folder = find_test_folder(args.caffe_src)
    caffelike = install_caffe_alias()
    install_legacy_unittest_names()
    install_six_if_missing()
    print(f"Running {folder} against caffelike {caffelike.__version__} ({os.path.dirname(caffelike.__file__)})",
          file=sys.stderr)

    loader = unittest.TestLoader()
    if args.name_patterns:
        loader.testNamePatterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in args.name_patterns]
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bvlc-pycaffe-tests-") as work:
        os.chdir(work)
        try:
            suite = loader.discover(start_dir=folder, pattern=args.pattern, top_level_dir=folder)
            result = unittest.TextTestRunner(verbosity=args.verbosity, failfast=args.failfast).run(suite)
        finally:
            os.chdir(here)
    if result.testsRun == 0:
        print(f"run_bvlc_pycaffe_tests: no tests matched in {folder}", file=sys.stderr)
        return 1
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
