"""The layering holds and every module imports on its own (docs/architecture.md, "Layers").

An import cycle hides behind the order in which tests import packages; these tests import each
module first, alone.
"""

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelheist

ROOT = Path(__file__).resolve().parent.parent
#: Third-party libraries loaded before forking: importing them cannot mask a cycle among
#: modelheist's own modules, and it spares each child the seconds of importing PyTorch.
HEAVY = ("numpy", "scipy.stats", "sklearn.tree", "torch", "fastapi", "uvicorn", "typer", "rich")


def all_modules() -> list[str]:
    names = [modelheist.__name__]
    for info in pkgutil.walk_packages(modelheist.__path__, prefix="modelheist."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def test_every_module_imports_alone_in_a_fresh_process():
    """Each module is imported first in a fresh child, forked from a process that has loaded
    the heavy third-party libraries but no modelheist module."""
    script = f"""
import importlib, os, sys
for heavy in {HEAVY!r}:
    importlib.import_module(heavy)
assert not any(m == "modelheist" or m.startswith("modelheist.") for m in sys.modules)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(f"{{name}}: {{type(exc).__name__}}: {{exc}}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print(" ".join(failed))
sys.exit(1 if failed else 0)
"""
    modules = all_modules()
    assert len(modules) > 50
    proc = subprocess.run(
        [sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"do not import alone: {proc.stdout}\n{proc.stderr}"


def test_a_cycle_would_be_caught(tmp_path):
    """The check above fails on a real cycle (two modules importing each other's names)."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("from cyclic.a import A\n")
    (package / "a.py").write_text("from cyclic.b import B\nclass A: ...\n")
    (package / "b.py").write_text("from cyclic.a import A\nclass B: ...\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", "import cyclic.b"], capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0 and "circular import" in proc.stderr


def test_the_layers_and_the_forbidden_imports_hold():
    """import-linter's contracts in pyproject.toml: layers, and attacks and verifiers that see
    the API only through an Oracle."""
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("package", ["data", "models", "api", "attacks", "ownership"])
def test_package_inits_import_nothing_until_asked(package):
    """A package's __init__ names its exports lazily: importing one submodule does not load
    the others (the root of the cycles this project once had)."""
    script = (
        f"import sys, modelheist.{package}; "
        f"loaded = [m for m in sys.modules if m.startswith('modelheist.{package}.')]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    module = importlib.import_module(f"modelheist.{package}")
    for name in module.__all__:
        assert getattr(module, name) is not None  # every lazy name resolves
