"""The engine is sans-I/O: nothing under engine/ may import async, I/O, clock,
randomness or logging libraries (STYLE: "The core is sans-I/O").

Two independent checks: a static walk of every import statement with `ast`,
and a real import of every engine module in a fresh interpreter that watches
which import statements run and which modules get loaded.
"""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
ENGINE_MODULES_EXPECTED = {"engine.intent", "engine.ids", "engine.results", "engine.money"}

FORBIDDEN = frozenset(
    {
        "trio",
        "trio_asyncio",
        "asyncio",
        "asyncpg",
        "redis",
        "quart",
        "quart_trio",
        "hypercorn",
        "structlog",
        "httpx",
        "socket",
        "time",
        "random",
        "os",
    }
)


def _is_forbidden(module_name: str) -> bool:
    return module_name.split(".")[0] in FORBIDDEN


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """Names of forbidden modules that `source` imports, wherever the statement sits.

    Covers `import x`, `from x import y`, and the dynamic forms
    `__import__("x")` / `importlib.import_module("x")` with a literal name.
    """
    names = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module is not None:
                names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            is_dynamic_import = (isinstance(function, ast.Name) and function.id == "__import__") or (
                isinstance(function, ast.Attribute) and function.attr == "import_module"
            )
            if is_dynamic_import and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return sorted({name for name in names if _is_forbidden(name)})


def offending_imports_under(root: Path) -> tuple[list[str], list[str]]:
    """(files scanned, "path: module" for every forbidden import) under root/engine."""
    scanned = []
    offenders = []
    for path in sorted((root / "engine").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        scanned.append(relative)
        for name in forbidden_imports(path.read_text(encoding="utf-8"), relative):
            offenders.append(f"{relative}: {name}")
    return scanned, offenders


# Runs in a fresh interpreter. `os` and `time` are already in sys.modules
# before any engine code runs (the interpreter's own startup and msgspec load
# them), so a sys.modules check alone could never catch `import os` in the
# engine. The hook on builtins.__import__ sees every import statement that
# engine code executes, cached module or not.
_IMPORT_EVERY_ENGINE_MODULE = """
import builtins, importlib, json, pkgutil, sys

forbidden = set(sys.argv[1].split(","))

def loaded():
    return {name for name in sys.modules if name.split(".")[0] in forbidden}

before = loaded()
statements = set()
real_import = builtins.__import__

def watching_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.split(".")[0] == "engine" and name.split(".")[0] in forbidden:
        statements.add(importer + ": " + name)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = watching_import
import engine
modules = sorted("engine." + info.name for info in pkgutil.walk_packages(engine.__path__))
for module in modules:
    importlib.import_module(module)
builtins.__import__ = real_import
print(json.dumps({
    "engine_file": engine.__file__,
    "modules": modules,
    "loaded_by_engine": sorted(loaded() - before),
    "loaded": sorted(loaded()),
    "statements": sorted(statements),
}))
"""


def import_engine_in_subprocess(root: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_ENGINE_MODULE, ",".join(sorted(FORBIDDEN))],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    # The copy under test must be the one imported, not an installed engine.
    assert Path(report["engine_file"]).resolve().is_relative_to(root.resolve()), report["engine_file"]
    return report


# ------------------------------------------------------------------- checks


def test_no_engine_file_imports_io_libraries():
    scanned, offenders = offending_imports_under(REPOSITORY_ROOT)
    assert {"engine/intent.py", "engine/ids.py", "engine/results.py", "engine/money.py"} <= set(scanned)
    assert offenders == [], "engine/ imports forbidden modules: " + ", ".join(offenders)


def test_importing_every_engine_module_loads_no_io_library():
    report = import_engine_in_subprocess(REPOSITORY_ROOT)
    assert ENGINE_MODULES_EXPECTED <= set(report["modules"]), report["modules"]
    assert report["statements"] == [], "engine/ executes imports of: " + ", ".join(report["statements"])
    assert report["loaded_by_engine"] == [], "importing engine/ loaded: " + ", ".join(report["loaded_by_engine"])
    # Whatever was loaded anyway came from interpreter startup or msgspec, not
    # from a library the engine must not touch.
    assert set(report["loaded"]) <= {"os", "os.path", "time"}, report["loaded"]


# ------------------------------------------- the checks can fail at all


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import trio", ["trio"]),
        ("import trio.lowlevel", ["trio.lowlevel"]),
        ("from trio import sleep", ["trio"]),
        ("from trio_asyncio import open_loop", ["trio_asyncio"]),
        ("import asyncio, msgspec", ["asyncio"]),
        ("import asyncpg as pg", ["asyncpg"]),
        ("from redis.asyncio import Redis", ["redis.asyncio"]),
        ("import quart\nimport quart_trio", ["quart", "quart_trio"]),
        ("import hypercorn.trio", ["hypercorn.trio"]),
        ("import structlog", ["structlog"]),
        ("import httpx", ["httpx"]),
        ("import socket", ["socket"]),
        ("def now():\n    import time\n    return time.time()", ["time"]),
        ("try:\n    import random\nexcept ImportError:\n    random = None", ["random"]),
        ("from os import path", ["os"]),
        ("import os.path", ["os.path"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio", ["trio"]),
        ("clock = __import__('time')", ["time"]),
        ("import importlib\nrandom = importlib.import_module('random')", ["random"]),
        ("from __future__ import annotations\nimport enum\nimport msgspec", []),
        ("from engine import money\nfrom engine.results import Result\nfrom . import cards", []),
        ("import timeit\nimport osmosis\nimport randomness\nimport sockets", []),
        ('"""Never import trio here."""\n# import os', []),
    ],
)
def test_static_check_recognises_import_forms(source, expected):
    assert forbidden_imports(source) == expected


@pytest.fixture
def engine_copy_importing_trio(tmp_path: Path) -> Path:
    """A copy of engine/ whose intent.py also says `import trio`; the real file is untouched."""
    shutil.copytree(REPOSITORY_ROOT / "engine", tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    intent = tmp_path / "engine" / "intent.py"
    intent.write_text(intent.read_text(encoding="utf-8") + "\nimport trio\n", encoding="utf-8")
    return tmp_path


def test_static_check_catches_trio_added_to_intent(engine_copy_importing_trio):
    _, offenders = offending_imports_under(engine_copy_importing_trio)
    assert offenders == ["engine/intent.py: trio"]


def test_subprocess_check_catches_trio_added_to_intent(engine_copy_importing_trio):
    report = import_engine_in_subprocess(engine_copy_importing_trio)
    assert report["statements"] == ["engine.intent: trio"]
    assert "trio" in report["loaded_by_engine"]


def test_subprocess_check_catches_os_although_already_loaded(tmp_path: Path):
    shutil.copytree(REPOSITORY_ROOT / "engine", tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    ids_file = tmp_path / "engine" / "ids.py"
    ids_file.write_text(ids_file.read_text(encoding="utf-8") + "\nimport os\n", encoding="utf-8")
    report = import_engine_in_subprocess(tmp_path)
    assert report["statements"] == ["engine.ids: os"]
