"""The installed package: `glimpse` is its only top-level name, the wheel carries every
module and the viewer, the console script works, and the import rules of
ARCHITECTURE.md hold (checked on the source with ast).

The wheel is built offline by pip with the environment's setuptools, from a clean
copy of the sources: setuptools builds in place, and a stale ``build/`` would leak
deleted modules into the wheel.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Repository folder -> installed package glimpse.<folder> (pyproject's package-dir).
FOLDERS = ("streaming", "models", "service", "web")
PYTHON_FOLDERS = ("streaming", "models", "service")
# What each package may import of glimpse (ARCHITECTURE.md, "Folders").
FORBIDDEN = {"streaming": ("glimpse.models", "glimpse.service"), "models": ("glimpse.service",)}
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")
# Declared dependencies that no glimpse module imports, and why each stays (pyproject
# says the same beside them). A new one that nothing imports fails the test below.
NOT_IMPORTED = {
    "torchvision": "open_clip imports it; declared so torch and it resolve as a pair",
    "onnx": "torch.onnx.export writes through it (glimpse export)",
    "transformers": "diffusers' pipeline classes need it (CLIP encoders) for the generators",
}


def _run(*args: str, cwd: Path = REPO, env: dict | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, src / folder, ignore=_SKIP)
    out = tmp_path_factory.mktemp("wheel")
    done = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "--quiet", "-w", str(out), str(src), cwd=src)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("glimpse-*.whl")
    return path


def _members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def _dist_info(wheel: Path, name: str) -> str | None:
    with zipfile.ZipFile(wheel) as zf:
        found = [n for n in zf.namelist() if n.endswith(f".dist-info/{name}")]
        return zf.read(found[0]).decode() if found else None


def _source_files(folder: str, suffix: str = "") -> set[str]:
    """Files under a repository folder as the wheel names them (glimpse/<folder>/...)."""
    root = REPO / folder
    return {f"glimpse/{folder}/{p.relative_to(root).as_posix()}" for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            and p.name.endswith(suffix)}


# --------------------------------------------------------------------------- the wheel

@pytest.mark.timeout(120)  # pip and setuptools in a subprocess: about 2 s, slower on a busy box
def test_glimpse_is_the_only_top_level_name(wheel):
    members = _members(wheel)
    top_level = _dist_info(wheel, "top_level.txt")
    names = set(top_level.split()) if top_level is not None else \
        {m.split("/")[0] for m in members if ".dist-info/" not in m}
    assert names == {"glimpse"}
    assert {m.split("/")[0] for m in members} == {"glimpse", wheel.name.split("-py")[0]
                                                  + ".dist-info"}


def test_wheel_carries_every_module_and_the_viewer(wheel):
    members = set(_members(wheel))
    for must in ("glimpse/streaming/__init__.py", "glimpse/models/__init__.py",
                 "glimpse/service/cli.py", "glimpse/web/README.md"):
        assert must in members, f"{must} is not in {wheel.name}"
    for folder in PYTHON_FOLDERS:
        missing = _source_files(folder, ".py") - members
        assert not missing, (f"{sorted(missing)} not in the wheel: add its folder to "
                             "[tool.setuptools] packages in pyproject.toml")
    assert _source_files("web") <= members  # package data: the whole viewer


def test_console_script_is_the_cli(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(wheel, "entry_points.txt") or "")
    assert dict(entry_points["console_scripts"]) == {"glimpse": "glimpse.service.cli:main"}


@pytest.mark.timeout(180)  # imports every module (torch, MNE) in a fresh interpreter
def test_every_module_imports_from_the_wheel_alone(wheel, tmp_path):
    """Unpacked beside the environment's dependencies, without the editable install
    (``-S`` skips the .pth files that map glimpse to this checkout) and without the
    repository on the path, so a bare ``import models`` would fail here."""
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    script = (
        "import importlib, pkgutil, sys\n"
        "import glimpse.streaming, glimpse.models, glimpse.service\n"
        "for pkg in (glimpse.streaming, glimpse.models, glimpse.service):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        module = importlib.import_module(info.name)\n"
        f"        assert module.__file__.startswith({str(unpacked)!r}), module.__file__\n"
        "print(len([m for m in sys.modules if m.startswith('glimpse.')]))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(unpacked),
                                                       sysconfig.get_paths()["purelib"]]),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = _run(sys.executable, "-S", "-c", script, cwd=tmp_path, env=env, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    n_source = sum(len(_source_files(f, ".py")) for f in PYTHON_FOLDERS)
    assert int(done.stdout.split()[-1]) >= n_source  # every module, each packages' too
    done = _run(sys.executable, "-S", "-m", "glimpse.service.cli", "--help", cwd=tmp_path,
                env=env)
    assert done.returncode == 0 and "Usage" in done.stdout, done.stderr[-3000:]


# --------------------------------------------------------------------------- the checkout

@pytest.mark.timeout(120)  # two interpreters that import the CLI
def test_cli_help_as_module_and_as_console_script():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(sys.executable).with_name("glimpse")
    assert script.is_file(), f"no console script at {script}: pip install -e . first"
    for args in ([sys.executable, "-m", "glimpse.service.cli", "--help"], [str(script), "--help"]):
        done = _run(*args, cwd=REPO, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Usage" in done.stdout and "replay" in done.stdout


def test_package_list_names_every_sub_package():
    """A sub-package someone adds later must be in pyproject's list, or the wheel lacks it."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"]
    assert setuptools["package-dir"] == {f"glimpse.{f}": f for f in FOLDERS}
    expected = {f"glimpse.{f}" for f in FOLDERS}
    for folder in PYTHON_FOLDERS:
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO).parts
            expected.add(".".join(("glimpse", *parts)))
        for py in (REPO / folder).rglob("*.py"):
            assert (py.parent / "__init__.py").is_file(), \
                f"{py.parent.relative_to(REPO)} holds modules but no __init__.py"
    assert set(setuptools["packages"]) == expected, \
        f"pyproject's [tool.setuptools] packages should be {sorted(expected)}"


# --------------------------------------------------------------------------- import rules

def _imports(path: Path, package: str) -> Iterator[tuple[int, int, str]]:
    """(line, level, absolute module name) of each import in ``path``, a module of ``package``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, 0, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, 0, node.module
                continue
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1]
            if node.level > len(parts):
                yield node.lineno, node.level, "." * node.level + (node.module or "")
            elif node.module:
                yield node.lineno, node.level, ".".join([*base, node.module])
            else:  # from . import errors
                for alias in node.names:
                    yield node.lineno, node.level, ".".join([*base, alias.name])


def _package_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(("glimpse", *(parts[:-1])))  # __init__ is its folder's module


def _violations(folder: str) -> list[str]:
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        package, where = _package_of(path), path.relative_to(REPO)
        own = f"glimpse.{folder}"
        for line, level, name in _imports(path, package):
            top = name.split(".")[0]
            if level == 0 and top in FOLDERS:
                found.append(f"{where}:{line}: bare `{name}`; write glimpse.{name}, or a "
                             "relative import inside its own package")
            elif level == 0 and (name == own or name.startswith(own + ".")):
                found.append(f"{where}:{line}: `{name}` inside {own}; import it relatively")
            elif level and not name.startswith(own):
                found.append(f"{where}:{line}: relative import of {name} leaves {own}; "
                             "across packages write glimpse.-absolute imports")
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN.get(folder, ())):
                found.append(f"{where}:{line}: {own} imports {name} (ARCHITECTURE.md: "
                             f"never {', '.join(FORBIDDEN[folder])})")
    return found


@pytest.mark.parametrize("folder", PYTHON_FOLDERS)
def test_imports_are_relative_inside_and_glimpse_absolute_across(folder):
    assert _violations(folder) == []


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benches_import_glimpse_never_the_bare_folders(folder):
    bare = [f"{path.relative_to(REPO)}:{line}: {name}"
            for path in sorted((REPO / folder).rglob("*.py"))
            for line, level, name in _imports(path, "tests")
            if level == 0 and name.split(".")[0] in FOLDERS]
    assert bare == []


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
    """The scan is honest: a planted bare import and a forbidden one are both found."""
    fake = tmp_path / "streaming"
    (fake / "sub").mkdir(parents=True)
    (fake / "sub" / "mod.py").write_text(
        "import models\nfrom glimpse.service.cli import main\nfrom ..errors import X\n"
        "from ...models import y\nfrom glimpse.streaming import z\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = _violations("streaming")
    assert [v.split(":")[1] for v in found] == ["1", "2", "4", "4", "5"], found
    assert "bare `models`" in found[0] and "imports glimpse.service.cli" in found[1]
    assert "leaves glimpse.streaming" in found[2] and "imports glimpse.models " in found[3]
    assert "import it relatively" in found[4]


# --------------------------------------------------------------------------- dependencies

def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_declared_dependency_is_imported_or_says_why():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_dist(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])
                for spec in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imported = set()
    for folder in (*PYTHON_FOLDERS, "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for _, level, name in _imports(path, "glimpse"):
                if level == 0:
                    imported.update(_dist(d) for d in providers.get(name.split(".")[0], ()))
    unused = declared - imported
    assert unused <= set(NOT_IMPORTED), (
        f"declared in pyproject but never imported: {sorted(unused - set(NOT_IMPORTED))}; "
        "remove them, or say why they stay in NOT_IMPORTED and beside them in pyproject")
