"""The config as a YAML tree: read safely, `--set KEY=VALUE` overrides, dotted keys."""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Any, Callable

import yaml

from components.errors import ConfigError


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


class DuplicateKey(yaml.YAMLError):
    """A mapping names a key twice: YAML would keep the second value and drop the first."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the
    last and silently drops the first, a whole section with it). Checked on the
    composed nodes, before construction flattens `<<` merges, whose keys may be
    overridden: that is what a merge is for."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            self._check_duplicates(node, [], set())
        return node

    def _check_duplicates(self, node: yaml.Node, path: list[str], seen: set[int]) -> None:
        if id(node) in seen:                 # an alias: its node was checked where defined
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicates(item, [*path[:-1], f"{path[-1]}[{index}]"]
                                       if path else [f"[{index}]"], seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or \
                    not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node.start_mark)
            except TypeError:                # an unhashable key: construction says so
                continue
            if earlier is not key_node.start_mark:
                raise DuplicateKey(f"key '{'.'.join([*path, str(key)])}' is given twice, at "
                                   f"{_place(earlier, key_node.start_mark)}; YAML would keep "
                                   "only the second, silently dropping the first (and every "
                                   "key under it): merge the two into one")
            self._check_duplicates(value_node, [*path, str(key)], seen)


def _place(first: yaml.Mark, second: yaml.Mark) -> str:
    """'line 2 and line 9', or with columns when both are on one line."""
    if first.line == second.line:
        return f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
    return f"line {first.line + 1} and line {second.line + 1}"


def load_yaml(text: str) -> Any:
    """YAML text as Python values: safe (no objects), and no key given twice."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str) -> Any:
    """A config file's YAML, loaded safely: no Python objects, at most 1 MiB, and at most
    100,000 values once YAML aliases are expanded (an alias bomb stops here instead of
    growing memory without bound in whatever walks the tree next)."""
    raw = _read_config_file(path)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB; a pipeline config "
                          "is a few lines of YAML: check that this is the right file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8.") from exc
    try:
        tree = load_yaml(text) or {}
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())   # one line
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}; fix the syntax.") from exc
    check_size(tree, path)
    return tree


def _what_it_is(mode: int) -> str | None:
    """What a path that is not a regular file is, in a user's words (None: a file)."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), None)


def _read_config_file(path: str) -> bytes:
    """The first MAX_CONFIG_BYTES + 1 bytes of a config file. A path that is not a
    regular file says what it is instead (a folder, /dev/null, a FIFO, a symbolic
    link loop) and is never read: a FIFO would block until something writes to it."""
    fix = "pass the path of a YAML config, e.g. configs/fonts.yaml."
    try:
        # O_NONBLOCK: opening a FIFO returns at once; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        target = os.path.islink(path) and os.readlink(path)
        raise ConfigError(f"config file {path!r} " + (
            f"is a symbolic link to {target!r}, which does not exist" if target
            else "not found") + f"; {fix}") from None
    except OSError as exc:
        what = {errno.ELOOP: "is a symbolic link loop",
                errno.ENOTDIR: "is not reachable: a part of its path is a file, not a folder",
                errno.EISDIR: "is a folder"}.get(exc.errno, f"cannot be read ({exc.strerror})")
        raise ConfigError(f"config file {path!r} {what}; {fix}") from None
    try:
        what = _what_it_is(os.fstat(fd).st_mode)
        if what:
            raise ConfigError(f"config file {path!r} is {what}, not a file; {fix}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)


def check_size(tree: Any, where: str) -> None:
    count, stack = 0, [tree]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_CONFIG_VALUES:,} values "
                              "(YAML aliases that repeat each other?); write the config out "
                              "without them.")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> (dotted key, YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not re.match(r"^[A-Za-z_][\w.]*$", key.strip()):
        raise ConfigError(f"--set {text!r} is not KEY=VALUE; write e.g. "
                          "--set train.epochs=5 or --set data.image_size=[28,28].")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKey as exc:
        raise ConfigError(f"--set {text!r}: {exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc.problem}).") from exc
    check_size(value, f"--set {key.strip()}")
    return key.strip(), value


def set_dotted(tree: dict[str, Any], dotted: str, value: Any,
               is_section: Callable[[str], bool] = lambda key: False) -> None:
    """Sets `a.b.c` in the tree, making the sections on the way (--set's one write). A
    mapping given for a section (`is_section(dotted key)`) merges into what the tree
    holds there, key by key and section by section, as the config file's own values
    fill the defaults (`--set 'train.optimizer={name: sgd}'` keeps the file's learning
    rate); any other value replaces, a mapping that is one value too (data.spans,
    evaluate.thresholds, beam.options), as it replaces the default in the file. The
    mappings on the way are copied, not changed: a YAML alias may share one."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section; "
                              f"use --set {'.'.join(keys[:keys.index(key) + 1])}=VALUE.")
        node[key] = child = dict(child)
        node = child
    node[keys[-1]] = _merged(node.get(keys[-1]), value, dotted, is_section)


def _merged(old: Any, new: Any, dotted: str, is_section: Callable[[str], bool]) -> Any:
    if not (isinstance(old, dict) and isinstance(new, dict) and is_section(dotted)):
        return new
    out = dict(old)
    for key, value in new.items():
        out[key] = _merged(old.get(key), value, f"{dotted}.{key}", is_section)
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}: dotted keys for diffs."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}
