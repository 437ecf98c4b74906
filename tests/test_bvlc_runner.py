"""scripts/run_bvlc_pycaffe_tests.py: it refuses a tree without BVLC's tests, and runs a suite with `caffe`
resolved to caffelike."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_bvlc_pycaffe_tests.py"


# ============================================================================== scripts/run_bvlc_pycaffe_tests.py
def run_script(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_runner_refuses_a_folder_without_pycaffe_tests(tmp_path):
    result = run_script(str(tmp_path))
    assert result.returncode == 2
    assert (f"{tmp_path} is not a Caffe source tree: it has no python/caffe/test folder" in result.stderr)
    missing = run_script(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr


FAKE_SUITE = '''\
import unittest

import caffe
import caffe.draw
import caffelike
import six
from caffe import layers as L
from caffe.coord_map import crop
from caffe.net_spec import Top
from caffe.proto import caffe_pb2


class TestAlias(unittest.TestCase):
    def test_the_modules_are_caffelikes_own(self):
        import caffelike.coord_map
        import caffelike.net_spec
        self.assertIs(caffe, caffelike)
        self.assertIs(caffe.draw, caffelike.draw)
        self.assertIs(caffe_pb2, caffelike.proto.caffe_pb2)
        self.assertIs(crop, caffelike.coord_map.crop)
        self.assertIs(Top, caffelike.net_spec.Top)
        self.assertIsInstance(L.ReLU(L.Input()), Top)
        self.assertEquals(list(six.itervalues({"a": 1})), [1])

    def test_a_missing_submodule_fails_to_import(self):
        with self.assertRaises(ImportError):
            import caffe.no_such_module  # noqa: F401
'''


@pytest.mark.parametrize("failing", [False, True], ids=["passing-suite", "failing-suite"])
def test_runner_runs_a_suite_with_caffe_resolved_to_caffelike(tmp_path, failing):
    tests = tmp_path / "caffe" / "python" / "caffe" / "test"
    tests.mkdir(parents=True)
    suite = FAKE_SUITE + ("\n    def test_fails(self):\n        self.assertEqual(1, 2)\n" if failing else "")
    (tests / "test_alias.py").write_text(suite)
    result = run_script(str(tmp_path / "caffe"), "-v", cwd=tmp_path)
    assert result.returncode == (1 if failing else 0), result.stderr
    assert re.search(r"test_the_modules_are_caffelikes_own \(.*\) \.\.\. ok", result.stderr), result.stderr
    assert os.listdir(tmp_path) == ["caffe"]  # the tests ran in a temporary working directory
