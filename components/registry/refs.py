"""Model references and registry names: NAME@ALIAS, NAME:VERSION, models:/... (MLflow)."""

from __future__ import annotations

import re

from components.config.push import LATEST_ALIAS
from components.errors import ConfigError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
NAME = re.compile(NAME_PATTERN)
REF = re.compile(rf"(?P<name>{NAME_PATTERN})(?:@(?P<alias>{NAME_PATTERN})|:(?P<version>\d+))")
LATEST = LATEST_ALIAS
MLFLOW = re.compile(rf"models:/(?P<name>{NAME_PATTERN})(?:@(?P<alias>{NAME_PATTERN})"
                    r"|/(?P<version>\d+))")


def normalize_reference(text: str) -> str:
    """MLflow's `models:/NAME@ALIAS` and `models:/NAME/VERSION` -> NAME@ALIAS / NAME:VERSION;
    anything else as is."""
    match = MLFLOW.fullmatch(text or "")
    if not match:
        return text
    return f"{match['name']}@{match['alias']}" if match["alias"] else \
        f"{match['name']}:{match['version']}"


def is_reference(text: str) -> bool:
    """Whether `text` names a registered model (NAME@ALIAS, NAME:VERSION, models:/...)."""
    return bool(REF.fullmatch(normalize_reference(text)))


def check_name(name: str, what: str = "model name") -> str:
    """Names are identifiers: a name like '../x' would read or write outside the root."""
    if not NAME.fullmatch(name or "") or ".." in name:
        raise ConfigError(f"{what} {name!r} must be letters, digits, '_', '.' or '-', starting "
                          "with a letter or digit (it names a folder in the registry).")
    return name
