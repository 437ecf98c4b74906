"""The house: the checkout imports like the install, and the rooms keep their import contracts
(pyproject.toml's [tool.importlinter], docs/architecture.md)."""
import os
import pathlib
import shutil
import site
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (caffelike.layers the attribute is pycaffe's net_spec `caffe.layers`; the module is in sys.modules)
CHECK = ("import sys, caffelike, caffelike.proto, caffelike.layers, caffelike.zoo; m = sys.modules; "
         "print(caffelike.__file__); print(m['caffelike.layers'].__file__); print(m['caffelike.proto'].__file__); "
         "print(len(caffelike.layer_type_list()))")


def _run(argv, **env):
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_checkout_root_imports_the_checkout():
    """From the root, `python -c "import caffelike"` takes the checkout's caffelike/ and maps layers/, proto/."""
    files = _run([sys.executable, "-c", CHECK])
    assert files[:3] == [str(ROOT / "caffelike" / "__init__.py"), str(ROOT / "layers" / "__init__.py"),
                         str(ROOT / "proto" / "__init__.py")]
    assert int(files[3]) == 63  # (TorchModule and TorchLoss included)


def test_checkout_root_imports_without_the_install_mapping():
    """What a regular `pip install .` gives at the root: site-packages on the path but no editable finder (-S
    skips the .pth files that install one), so only caffelike's own source-tree finder can map the folders."""
    paths = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    files = _run([sys.executable, "-S", "-c", CHECK], PYTHONPATH=os.pathsep.join(paths))
    assert files[1:3] == [str(ROOT / "layers" / "__init__.py"), str(ROOT / "proto" / "__init__.py")]


def _installed_layout(dest: pathlib.Path) -> pathlib.Path:
    """The Python files of the package as an install lays them out (layers/, proto/, zoo/ inside caffelike/)."""
    pkg = dest / "caffelike"
    ignore = shutil.ignore_patterns("*.npz", "*.md", "__pycache__")
    shutil.copytree(ROOT / "caffelike", pkg, ignore=ignore)
    for name in ("layers", "proto"):
        shutil.copytree(ROOT / name, pkg / name, ignore=ignore)
    (pkg / "zoo").mkdir()
    shutil.copy(ROOT / "zoo" / "__init__.py", pkg / "zoo" / "__init__.py")
    return dest


def test_import_contracts_hold(tmp_path):
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert lint, "import-linter is a test dependency: pip install -e '.[test]'"
    tree = _installed_layout(tmp_path)
    done = subprocess.run([lint, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tree)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("room", ["format", "core", "data", "net", "train", "digits", "cli"])
def test_every_room_says_what_it_holds(room):
    doc = (ROOT / "caffelike" / room / "__init__.py").read_text()
    assert doc.startswith('"""') and len(doc.split('"""')[1]) > 80


def test_every_package_of_the_tree_is_installed():
    """A regular `pip install .` ships only the packages pyproject.toml lists: a new room must be listed."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {"caffelike." + ".".join(p.parent.relative_to(ROOT / "caffelike").parts) if p.parent != ROOT / "caffelike"
               else "caffelike" for p in (ROOT / "caffelike").rglob("__init__.py")}
    on_disk |= {f"caffelike.{name}" for name in config["package-dir"] if name != "caffelike"
                for name in [name.split(".", 1)[1]]}
    assert on_disk <= listed, f"missing from [tool.setuptools] packages: {sorted(on_disk - listed)}"
