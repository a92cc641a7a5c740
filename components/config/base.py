"""What every config section shares: the `Section` base (unknown keys refused, no boolean taken for a number), path expansion, identifiers and image references."""

from __future__ import annotations

import os
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Optional, Union
from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator


IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def identifier(value: Optional[str], what: str) -> Optional[str]:
    """Names that become folders or aliases: letters, digits, '_', '.', '-', no '..'."""
    if value is not None and (not IDENTIFIER.fullmatch(value) or ".." in value):
        raise ValueError(f"{what} must be letters, digits, '_', '.' or '-', starting with a "
                         f"letter or digit, got {value!r}")
    return value


# $NAME and ${NAME} in a path field: a variable of the environment the config loads in.
ENV_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
PATH_HELP = " $VAR, ${VAR} and a leading ~ expand when the config loads (an unset variable "\
            "is an error)."


def expand_path(value: Any) -> Any:
    """A path field's value with $VAR / ${VAR} from the environment and a leading ~
    expanded; ValueError naming an unset (or malformed) variable. Anything not a
    string goes on to the field's own type check."""
    if not isinstance(value, str):
        return value

    def variable(match: re.Match) -> str:
        name = match[1] if match[1] is not None else match[2]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{match[0]!r} is not an environment variable reference; write "
                             "$NAME or ${NAME}")
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set; export {name}=... "
                             "before running, or write the path out")
        return os.environ[name]

    expanded = ENV_VARIABLE.sub(variable, value)
    return os.path.expanduser(expanded) if expanded.startswith("~") else expanded



# A path field: $VAR / ${VAR} and a leading ~ expanded before the type check.
PathText = Annotated[str, BeforeValidator(expand_path)]


# A container image reference (distribution/reference's grammar: [HOST[:PORT]/]PATH
# [:TAG][@DIGEST], each path component lower-case letters and digits with . _ __ - between).
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def image_reference(value: Optional[str], what: str) -> Optional[str]:
    """A container image reference Docker and Kubernetes accept, or ValueError. As
    Docker reads one, a first component without '.' or ':' (and not localhost) is part
    of the path, so lower case like the rest."""
    match = IMAGE_REFERENCE.fullmatch(value) if value is not None else None
    first = value.split("/", 1)[0] if "/" in (value or "") else ""
    host = "." in first or ":" in first or first == "localhost"
    if value is not None and (match is None or len(match["name"]) > 255
                              or (first and not host and first != first.lower())):
        raise ValueError(f"{what} {value!r} is not a container image reference; write "
                         "[HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST] with a lower-case path, e.g. "
                         "us-docker.pkg.dev/my-project/imgpipe/imgpipe:0.1.0")
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment, and
    a boolean is never taken for a number (YAML's `epochs: true` is a mistake, not 1)."""

    # allow_inf_nan: YAML's .inf and .nan pass every bound pydantic checks (inf > 0), then
    # fail (or train nothing) steps later; no setting takes them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)
    # keys a section no longer has -> what to write instead (an error that says so)
    _moved: ClassVar[dict[str, str]] = {}
    # True on the `beam` section only: the step contract recognises it by this, so a
    # step's code key does not hold the Beam section's module unless the step reads it.
    RUNS_BEAM: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, message in cls._moved.items():
                if key in value:
                    raise ValueError(message)
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info) -> Any:
        if _bool_for_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError("expected a number, got a boolean" if isinstance(value, bool)
                             else "expected numbers, got a boolean among them")
        return value


def _wants_number(annotation: Any) -> bool:
    """A number type: int, float or a Literal of numbers, through Optional/Union."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return bool(args) and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                  for a in args)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_wants_number(a) for a in args if a is not type(None))
    return False


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """A boolean where the type wants a number, also inside a list or tuple
    (`image_size: [true, 36]`, `hidden_units: [true]`; Python's True == 1)."""
    if isinstance(value, bool):
        return _wants_number(annotation)
    if not isinstance(value, (list, tuple)):
        return False
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_bool_for_number(a, value) for a in args)
    return any(isinstance(item, bool) for item in value) and any(_wants_number(a) for a in args)
