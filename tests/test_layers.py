"""The import structure is a checked fact: the layers contract (pyproject.toml) and no
use of another module's private names."""

import ast
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "brainjax")


def test_import_layers_contract_holds():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -r requirements.txt (import-linter)")
    out = subprocess.run([exe, "--config", os.path.join(ROOT, "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _modules():
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                yield os.path.relpath(path, ROOT), ast.parse(open(path).read())


def test_no_module_uses_another_modules_private_names():
    offences = []
    for rel, tree in _modules():
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("brainjax"):
                for a in node.names:
                    if a.name.startswith("_"):
                        offences.append(f"{rel}: from {node.module} import {a.name}")
                    aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("brainjax"):
                        aliases.add(a.asname or a.name.split(".")[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    offences.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not offences, offences


def test_private_name_check_catches_an_offence(tmp_path, monkeypatch):
    """The check above can fail: a planted `train._helper` use is reported."""
    bad = tmp_path / "brainjax"
    bad.mkdir()
    (bad / "m.py").write_text("from brainjax import train\ntrain._helper()\nfrom brainjax.loop import _x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", str(bad))
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    with pytest.raises(AssertionError, match=r"train\._helper.*_x|_x.*train\._helper"):
        test_no_module_uses_another_modules_private_names()
