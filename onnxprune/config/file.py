"""``--config onnxprune.toml``: a command's options written down, plus per-node rules.

The file is the command line written down: every option of the command is a top-level key, named
as its flag without the dashes (``max-error = 0.1``, ``calib = "calib/"``, ``shape =
["input=8x128"]`` or ``shape = {input = [8, 128]}``), with the same meaning and checks. Paths are
relative to the current folder, as on the command line. Per-node rules are an array of tables::

    [[node]]
    match = "encoder/.*/attention/.*"   # a node name, or a regex matched against whole names
    exclude = true
    [[node]]
    match = "/fc2/MatMul"
    layouts = ["block"]                 # force a layout (or "structure"; structure_kinds = [...])
    max_level = 0.5                     # never remove more than half of its weights

The allowed keys are derived from the click command's parameters, so an option added to the
command is accepted in the file with no change here. Precedence: default < file < command line;
the file's values become click's ``default_map``, so click's own ``get_parameter_source`` tells
where each value came from (``--print-config`` prints it).
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from onnxprune.common.errors import UserError
from onnxprune.config.settings import NodeOverride

OVERRIDES_KEY = "onnxprune.node_overrides"
"""Where the file's per-node rules are kept in ``ctx.meta``."""
FILE_KEY = "onnxprune.config_file"
NODE_TABLE = "node"
NODE_KEYS = ("match", "exclude", "layouts", "structure_kinds", "max_level")
NOT_IN_FILE = {"config", "print_config", "help"}
"""Options that make no sense inside a config file."""


def option_keys(command: click.Command) -> dict[str, click.Option]:
    """Every key the file accepts for ``command``: long flag names without dashes (``max-error``,
    ``no-fidelity-bound``) and the parameter names (``max_error``), mapped to the option."""
    keys: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in NOT_IN_FILE:
            continue
        for flag in param.opts + param.secondary_opts:
            if flag.startswith("--"):
                keys[flag[2:]] = param
        keys[param.name] = param
    return keys


def canonical_key(param: click.Option) -> str:
    """The key ``--print-config`` writes: the first long flag without its dashes."""
    return next((o[2:] for o in param.opts if o.startswith("--")), param.name)


def read_settings(path: Path, command: click.Command, ctx: click.Context
                  ) -> tuple[dict[str, Any], tuple[NodeOverride, ...]]:
    """Parse and check a config file for ``command``.

    Returns:
        (values by click parameter name, ready for ``default_map``; the per-node rules).

    Raises:
        UserError: the file is missing or not TOML, a key is unknown, or a value is bad; the
            message names the file and the key.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    keys = option_keys(command)
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    overrides: tuple[NodeOverride, ...] = ()
    for key, raw in data.items():
        if key == NODE_TABLE:
            overrides = _node_rules(raw, path)
            continue
        param = keys.get(key)
        if param is None:
            raise UserError(f"{path}: unknown key {key!r}{_did_you_mean(key, keys)}")
        if param.name in given:
            raise UserError(f"{path}: {key!r} and {given[param.name]!r} set the same option")
        given[param.name] = key
        values[param.name] = _value(param, key, raw, path, ctx)
    return values, overrides


def _did_you_mean(key: str, keys: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(key, [k for k in keys if "_" not in k] + [NODE_TABLE], n=1)
    return f" (did you mean {close[0]!r}?)" if close else \
        f" (allowed: {', '.join(sorted(k for k in keys if '_' not in k))}, [[{NODE_TABLE}]])"


def _value(param: click.Option, key: str, raw: Any, path: Path, ctx: click.Context) -> Any:
    """The TOML value as the option's type, with the command line's checks."""
    if param.is_flag and not param.count:
        if not isinstance(raw, bool):
            raise UserError(f"{path}: {key!r} must be true or false (got {raw!r})")
        return raw
    if param.multiple:
        if isinstance(raw, Mapping):  # shape = {input = [8, 128]} -> ["input=8x128"]
            raw = [f"{k}={_dims(v)}" for k, v in raw.items()]
        elif not isinstance(raw, list):
            raw = [raw]
    elif isinstance(raw, list):  # layouts = ["block", "channel"] -> "block,channel"
        raw = ",".join(str(x) for x in raw)
    if isinstance(raw, Mapping):
        raise UserError(f"{path}: {key!r} takes a single value, not a table")
    try:
        return param.type_cast_value(ctx, raw)
    except click.BadParameter as exc:
        raise UserError(f"{path}: bad value for {key!r}: {exc.message}") from None


def _dims(value: Any) -> str:
    return "x".join(str(d) for d in value) if isinstance(value, list) else str(value)


def _node_rules(raw: Any, path: Path) -> tuple[NodeOverride, ...]:
    if not isinstance(raw, list) or not all(isinstance(r, Mapping) for r in raw):
        raise UserError(f"{path}: {NODE_TABLE!r} must be an array of tables ([[{NODE_TABLE}]])")
    return tuple(node_override(rule, f"{path}, [[{NODE_TABLE}]] #{i}")
                 for i, rule in enumerate(raw, 1))


def node_override(rule: Mapping[str, Any], source: str) -> NodeOverride:
    """One per-node rule from a mapping (a ``[[node]]`` table, or a dict given to the API).

    Raises:
        UserError: an unknown key or a value of the wrong type, naming the key and ``source``.
    """
    unknown = [k for k in rule if k not in NODE_KEYS]
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(NODE_KEYS)})")
    match = rule.get("match")
    if not isinstance(match, str) or not match:
        raise UserError(f"{source}: 'match' (a node name or regex) is required")
    exclude = rule.get("exclude", False)
    if not isinstance(exclude, bool):
        raise UserError(f"{source}: 'exclude' must be true or false (got {exclude!r})")
    max_level = rule.get("max_level")
    if max_level is not None and (isinstance(max_level, bool)
                                  or not isinstance(max_level, int | float)
                                  or not math.isfinite(max_level)):
        raise UserError(f"{source}: 'max_level' must be a number in [0, 1) (got {max_level!r})")
    return NodeOverride(
        match=match, exclude=exclude, layouts=_names(rule, "layouts", source),
        structure_kinds=_names(rule, "structure_kinds", source),
        max_level=None if max_level is None else float(max_level), source=source,
    )


def _names(rule: Mapping[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = rule.get(key, [])
    if isinstance(value, str):
        value = [x.strip() for x in value.split(",") if x.strip()]
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise UserError(f"{source}: {key!r} must be a list of names (got {value!r})")
    return tuple(value)


def _load_callback(ctx: click.Context, param: click.Parameter, value: Path | None):
    """Eager ``--config``: the file's values become click's defaults before any other option is
    read, so given flags still win and ``get_parameter_source`` says DEFAULT_MAP for the file's."""
    if value is None:
        return None
    values, overrides = read_settings(value, ctx.command, ctx)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[OVERRIDES_KEY] = overrides
    ctx.meta[FILE_KEY] = value
    return value


def config_file_options(func: Callable) -> Callable:
    """``--config FILE`` and ``--print-config`` for a command; the file may set any of the
    command's other options (read from the command when the file is loaded)."""
    func = click.option("--print-config", is_flag=True,
                        help="Print the effective settings and where each came from (default, "
                             "file or command line), as a config file, and exit.")(func)
    func = click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, is_eager=True, expose_value=True, callback=_load_callback,
                        metavar="FILE",
                        help="TOML file of options (keys as the flags without dashes) and "
                             "per-node rules ([[node]] tables); flags given override it.")(func)
    return func


def node_overrides(ctx: click.Context) -> tuple[NodeOverride, ...]:
    """The per-node rules ``--config`` read (none without a file)."""
    return ctx.meta.get(OVERRIDES_KEY, ())


def _source(ctx: click.Context, name: str) -> str:
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE:
        return "command line"
    if source is ParameterSource.DEFAULT_MAP:
        return f"file {ctx.meta.get(FILE_KEY)}"
    if source is ParameterSource.ENVIRONMENT:
        return "environment"
    return "default"


def effective_settings(ctx: click.Context) -> list[tuple[str, Any, str]]:
    """(key, value, source) for every option a file may set, in the command's order."""
    rows = []
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name not in NOT_IN_FILE:
            rows.append((canonical_key(param), ctx.params.get(param.name),
                         _source(ctx, param.name)))
    return rows


def format_settings(ctx: click.Context) -> str:
    """The effective settings as a TOML config file, each line commented with its source.

    Unset options (None) are written as comments, so the output is itself a valid config file.
    """
    lines = [f"# effective settings of `onnxprune {ctx.command.name}`: default < file < "
             "command line"]
    for param in ctx.command.params:
        if isinstance(param, click.Argument):
            lines.append(f"# {param.human_readable_name} = {ctx.params.get(param.name)!r} "
                         "(argument, command line only)")
    rows = effective_settings(ctx)
    width = max((len(_toml_line(k, v)) for k, v, _ in rows), default=0)
    for key, value, source in rows:
        line = _toml_line(key, value)
        lines.append(f"{line:<{width}}  # {source}")
    source = f"file {ctx.meta.get(FILE_KEY)}"
    for rule in node_overrides(ctx):
        lines.append(f"\n[[{NODE_TABLE}]]  # {source}")
        lines.append(f"match = {_toml(rule.match)}")
        if rule.exclude:
            lines.append("exclude = true")
        if rule.layouts:
            lines.append(f"layouts = {_toml(list(rule.layouts))}")
        if rule.structure_kinds:
            lines.append(f"structure_kinds = {_toml(list(rule.structure_kinds))}")
        if rule.max_level is not None:
            lines.append(f"max_level = {_toml(rule.max_level)}")
    return "\n".join(lines)


def _toml_line(key: str, value: Any) -> str:
    if value is None or (isinstance(value, tuple | list) and not value):
        return f"# {key} (unset)"
    return f"{key} = {_toml(value)}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
