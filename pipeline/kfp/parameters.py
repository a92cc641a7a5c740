"""The pipeline's run-time parameters (RUNTIME_PARAMETERS, `pipeline/kfp/shared.py`):
which a config declares and with which values, a step's compiled config without them (two
compiles that differ only in such a key give identical task specs), and the parameters a
compiled package declares."""

from __future__ import annotations

import json
from typing import Any

from pipeline import invoke
from pipeline.config import PipelineConfig
from pipeline.kfp.shared import OPTIONAL, RUNTIME_PARAMETERS


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _compiled_in(data: Any) -> tuple[str, ...]:
    """The RUNTIME_PARAMETERS keys a config compiles in instead: data.source when
    data.channels or data.image_size was decided from it (`auto`), since another source
    at run time would keep the shape, and the photo defaults, decided from this one."""
    decided = data.get("decided") if isinstance(data, dict) else None
    return ("data.source",) if decided and decided.get("keys") else ()


def runtime_parameters(config: PipelineConfig) -> dict[str, Any]:
    """The pipeline parameters with this config's values: every key in
    RUNTIME_PARAMETERS that the config sets (an unset threshold is not a parameter),
    but data.source when the data's shape was decided from it (`_compiled_in`)."""
    tree = config.to_dict()
    out = {}
    for name, key in RUNTIME_PARAMETERS.items():
        if key in _compiled_in(tree["data"]):
            continue
        value = _get(tree, key)
        if key == "data.spans":
            from components.data import spans

            if not spans.has_pattern(config.data.source):      # a plain source: no window
                continue
            value = json.dumps("latest" if value is None else value, sort_keys=True)
        if value is None and key in OPTIONAL:
            value = ""
        if value is not None:
            out[name] = value
    return out


def without_runtime_keys(step_cfg: dict[str, Any]) -> dict[str, Any]:
    """A step's compiled config without the keys that arrive as pipeline parameters:
    two compiles that differ only in such a key give identical task specs."""
    out = json.loads(json.dumps(step_cfg))
    fixed = _compiled_in(out.get("data") or out.get(invoke.RECORD, {}).get("data"))
    for key in RUNTIME_PARAMETERS.values():
        if key in fixed:
            continue
        section, *path = key.split(".")
        for tree in (out.get(section), out.get(invoke.RECORD, {}).get(section)):
            for part in path[:-1]:
                tree = tree.get(part) if isinstance(tree, dict) else None
            if isinstance(tree, dict):
                tree.pop(path[-1], None)
    return out


def parameters_for(sections: tuple[str, ...], available: dict[str, Any]) -> list[str]:
    """The run-time parameters among `available` that belong to one of `sections`."""
    return [name for name in available
            if RUNTIME_PARAMETERS[name].split(".")[0] in sections]


def param_type(value: Any) -> str:
    """The KFP parameter type of a value: bool, int, float or str."""
    return {bool: "bool", int: "int", float: "float"}.get(type(value), "str")


def package_parameters(package: str) -> set[str] | None:
    """The run-time parameters a compiled pipeline declares (its root's inputs); None
    for a template on a web address (Vertex's Artifact Registry), not read here."""
    import yaml

    if package.startswith(("https://", "http://")):
        return None

    from components.io import fileio
    from components.errors import ConfigError

    try:
        spec = next(yaml.safe_load_all(fileio.read_text(package)))   # then a platform spec
        return set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError,
            AttributeError, StopIteration) as exc:
        raise ConfigError(f"--package {package!r} is not a readable compiled pipeline "
                          f"({type(exc).__name__}); compile one with `imgpipe compile`.") from exc
