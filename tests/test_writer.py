"""The one writer (brainjax/files.py): no other module writes or removes files, writes are
atomic, and nothing brainjax did not write in this run is replaced or removed."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "brainjax")
WRITER = os.path.join(PACKAGE, "files.py")
# Calls that write, replace or remove a file, by their dotted name.
BANNED_CALLS = {"shutil.rmtree", "os.remove", "os.unlink", "os.replace", "os.rmdir", "shutil.move",
                "np.save", "np.savez", "np.savez_compressed", "numpy.save", "numpy.savez"}
BANNED_METHODS = {"savefig", "write_text", "write_bytes", "unlink", "rmdir"}
WRITE_MODES = set("wax+")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _open_mode(call: ast.Call) -> str:
    if len(call.args) > 1 and isinstance(call.args[1], ast.Constant):
        return str(call.args[1].value)
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    return "r" if len(call.args) <= 1 and not any(kw.arg == "mode" for kw in call.keywords) else "?"


def writes_outside_the_writer(package: str = PACKAGE) -> list[str]:
    """'path:line: call' for every file write or removal in `package` outside files.py."""
    found = []
    for folder, _, names in os.walk(package):
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path == WRITER:
                continue
            tree = ast.parse(open(path).read(), path)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                dotted = _dotted(node.func)
                method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
                bad = dotted in BANNED_CALLS or method in BANNED_METHODS and not dotted.startswith("files.")
                if dotted in ("open", "io.open") and WRITE_MODES & set(_open_mode(node)):
                    bad = True
                if bad:
                    found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {dotted or method}")
    return found


def test_no_module_but_the_writer_writes_or_removes_files():
    """Every write goes through brainjax/files.py (temporary file + rename, ownership
    check); every removal too (only paths this run created)."""
    assert writes_outside_the_writer() == []


def test_the_source_walk_finds_a_write_planted_in_a_copy(tmp_path):
    """The walk itself can fail: a planted rmtree, write-mode open and savefig are found."""
    package = tmp_path / "brainjax"
    package.mkdir()
    (package / "planted.py").write_text("import shutil\nshutil.rmtree('x')\nopen('y', 'w')\nfig.savefig('z')\n"
                                        "open('r')\nopen('q', mode='ab')\n")
    assert [f.split(": ")[1] for f in writes_outside_the_writer(str(package))] == ["shutil.rmtree", "open",
                                                                                   "fig.savefig", "open"]


def test_an_existing_file_this_run_did_not_write_is_never_replaced(tmp_path):
    from brainjax import files
    from brainjax.errors import UserError

    mine = tmp_path / "report.json"
    mine.write_text("the user's")
    with pytest.raises(UserError, match="exists and brainjax did not write it"):
        files.write_json(str(mine), {"a": 1})
    assert mine.read_text() == "the user's"
    with pytest.raises(RuntimeError, match="did not create it"):
        files.remove(str(mine))
    assert mine.read_text() == "the user's"
    new = tmp_path / "sub" / "new.json"
    files.write_json(str(new), {"a": 1})
    files.write_json(str(new), {"a": 2})  # written by this run: replaceable
    assert new.read_text().strip().endswith("}") and '"a": 2' in new.read_text()
    assert sorted(os.listdir(tmp_path / "sub")) == ["new.json"]  # no temporary file left
    assert oct(os.stat(new).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from brainjax import files

    files.own(str(tmp_path))
    target = tmp_path / "report.json"
    target.write_text("old")

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        files.write_with(str(target), crash)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_output_names_are_unique_and_never_an_input():
    from brainjax import files

    names = files.output_names(["/d/a/scan.png", "/d/b/scan.png", "/d/b/scan.jpg"])
    assert names == ["a__scan.png", "b__scan.png", "b__scan.jpg.png"]
    assert files.output_names(["x/gallery.png"]) == ["gallery.png"]
