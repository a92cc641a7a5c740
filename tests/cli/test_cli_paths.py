"""A path the user names that exists but is not what the command reads says what it is,
in one line, exit 2 (issue 34, items 20 and 21): a config that is a folder, a device,
a FIFO (never opened: it would block) or a symbolic link loop; a registry that is a file
or missing."""

from __future__ import annotations

import os
import threading

import pytest

from tests.fixtures import one_line_error, registry_with_versions


def _special(tmp_path, kind: str) -> str:
    path = tmp_path / "cfg.yaml"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(tmp_path / "other.yaml", path)
        os.symlink(path, tmp_path / "other.yaml")
    elif kind == "dangling link":
        os.symlink(tmp_path / "gone.yaml", path)
    elif kind == "device":
        return os.devnull
    elif kind == "under a file":
        (tmp_path / "afile").write_text("x")
        return str(tmp_path / "afile" / "cfg.yaml")
    return str(path)


@pytest.mark.parametrize("kind,expected", [
    ("folder", "is a folder, not a file"),
    ("fifo", "is a named pipe (FIFO), not a file"),
    ("device", "is a character device, not a file"),
    ("loop", "is a symbolic link loop"),
    ("dangling link", "is a symbolic link to"),
    ("under a file", "is not reachable: a part of its path is a file"),
])
@pytest.mark.parametrize("command", ["config show", "run"])
def test_a_config_path_that_is_no_file_says_what_it_is(tmp_path, capsys, kind, expected,
                                                         command):
    path = _special(tmp_path, kind)
    done = threading.Event()
    # a FIFO that were opened for reading would block until a writer comes: the
    # watchdog is the writer, so a regression fails instead of hanging the suite
    if kind == "fifo":
        def writer():
            if not done.wait(20):
                with open(path, "w") as handle:
                    handle.write("name: x\n")
        threading.Thread(target=writer, daemon=True).start()
    try:
        args = [*command.split(), path]
        if command == "run":
            args += ["--runs-dir", str(tmp_path / "runs")]
        err = one_line_error(capsys, args)
    finally:
        done.set()
    assert f"config file {path!r} {expected}" in err and "not found" not in err \
        or kind == "dangling link" and "does not exist" in err
    assert "configs/fonts.yaml" in err                      # how to fix it


@pytest.mark.parametrize("kind", ["file", "missing", "file in the path"])
def test_a_registry_that_is_no_folder_is_one_line(tmp_path, capsys, kind):
    """`models list --registry FILE` is not an empty registry: exit 2 with the reason
    push.destination gets for the same path."""
    registry = tmp_path / "reg"
    if kind == "file":
        registry.write_text("x")
    elif kind == "file in the path":
        registry.write_text("x")
        registry = registry / "inner"
    err = one_line_error(capsys, ["models", "list", "--registry", str(registry)])
    assert str(registry) in err and "no pushed models" not in err
    assert ("is a file" in err or "a file, not a folder" in err) if kind != "missing" \
        else "no model registry at" in err


def test_an_empty_registry_folder_still_lists_nothing(tmp_path, capsys):
    from pipeline import cli

    (tmp_path / "reg").mkdir()
    assert cli.main(["models", "list", "--registry", str(tmp_path / "reg")]) == 0
    assert "no pushed models under" in capsys.readouterr().out
    registry_with_versions(tmp_path, 1, [1])
    assert cli.main(["models", "list", "--registry", str(tmp_path / "serving")]) == 0
    assert "m:1" in capsys.readouterr().out
