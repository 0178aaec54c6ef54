"""The import contracts in pyproject.toml ([tool.importlinter]) hold on the real tree, and they bite.

``lint-imports`` (import-linter) checks the one-way package layers (cli > bench > training > evaluation >
service > inference > engines > model_export > imaging > drrn base) and that no package has import cycles
between its modules. The "bites" tests copy the packages into a tmp dir, add one offending module, and
check that lint-imports fails and names it: a contract that cannot fail would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pyproject.toml"


def _lint_imports() -> str:
    exe = Path(sys.executable).parent / "lint-imports"
    found = str(exe) if exe.is_file() else shutil.which("lint-imports")
    assert found, "lint-imports is not installed (it is in the dev extra: pip install -e '.[dev]')"
    return found


def _run(cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd goes first on sys.path (lint-imports puts it there), ahead of the editable install of the checkout
    env = {**os.environ, "PYTHONPATH": str(cwd), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _root_packages() -> list[str]:
    return tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["root_packages"]


def test_real_tree_keeps_the_contracts() -> None:
    result = _run(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The checkout's packages and pyproject.toml, copied: a tree to break on purpose."""
    for pkg in _root_packages():
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CONFIG, tmp_path / "pyproject.toml")
    assert _run(tmp_path).returncode == 0, "the copied tree should pass before it is broken"
    return tmp_path


def test_an_upward_import_breaks_the_layers(tree_copy: Path) -> None:
    # imaging (a low layer) importing service (a high one), lazily inside a function: that counts too
    (tree_copy / "imaging" / "_upward_probe.py").write_text(
        "def limits():\n    from service.settings import Settings\n\n    return Settings()\n"
    )
    result = _run(tree_copy)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "imaging is not allowed to import service" in out
    assert "imaging._upward_probe -> service.settings" in out


def test_an_import_cycle_breaks_the_acyclic_contract(tree_copy: Path) -> None:
    # bench.cli imports bench.options; bench.options importing bench.cli back closes a cycle
    options = tree_copy / "bench" / "options.py"
    options.write_text(
        options.read_text() + "\n\ndef _probe():\n    from bench import cli\n\n    return cli\n"
    )
    result = _run(tree_copy)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "No cycles are allowed in bench" in out
    assert ".options -> .cli" in out or ".cli -> .options" in out
