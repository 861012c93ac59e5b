"""The engine flags every screening command takes (``screen``, ``gate``, ``batch``), generated from the settings
model, and the one parser of ``--option KEY=VALUE`` and of every flag's value.

Each field of :class:`phasecore.settings.EngineSettings` becomes ``--<field>`` (underscores as dashes), with
its description as help; a boolean becomes ``--<field>`` / ``--no-<field>``. A flag that is not given leaves the
setting to the grid's options or the model's default; ``--option`` overrides flags and is validated the same way.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic.fields import FieldInfo

from phasecore.settings import EngineSettings

#: where the values of the engine flags land in the parsed namespace: {field: value}, only for flags given
ENGINE_FLAGS_DEST = "engine_flags"
_JSON_START = "0123456789[{tfn-"


def parse_value(text: str) -> Any:
    """A flag's or an ``--option``'s value: numbers, booleans, null and JSON lists/objects are decoded; anything
    else (``exact``, ``last:2``, ``ridge``) is the text itself. The settings model validates the result."""
    if text[:1] in _JSON_START:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def parse_options(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to settings (``knn-k=5`` is ``knn_k=5``); raises ValueError on a malformed item."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r} is not KEY=VALUE")
        options[key.strip().replace("-", "_")] = parse_value(value)
    return options


class _StoreSetting(argparse.Action):
    """Collects each given engine flag into ``namespace.engine_flags[field]``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | typing.Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, ENGINE_FLAGS_DEST, None)
        if given is None:
            given = {}
            setattr(namespace, ENGINE_FLAGS_DEST, given)
        # nargs=0 is a boolean setting: --<field> sets it, --no-<field> clears it
        given[self.dest] = not (option_string or "").startswith("--no-") if self.nargs == 0 else values


def _metavar(annotation: Any) -> str:
    """INT, FLOAT, TEXT, {a,b}, or a union of them, from a field's type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(annotation)) + "}"
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(arg) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin is tuple:
        return "JSON-LIST"
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(annotation, "VALUE")


def _help(field: FieldInfo) -> str:
    default = field.default
    shown = list(default) if isinstance(default, tuple) else default
    return f"{field.description or ''} (default {json.dumps(shown)})".replace("%", "%%")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--<field>`` for every engine setting, and ``--option KEY=VALUE`` for the same settings by name."""
    group = parser.add_argument_group("engine settings (docs/metrics.md)")
    for name, field in EngineSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            group.add_argument(
                flag,
                f"--no-{flag[2:]}",
                dest=name,
                action=_StoreSetting,
                nargs=0,
                default=argparse.SUPPRESS,
                help=_help(field),
            )
        else:
            group.add_argument(
                flag,
                dest=name,
                action=_StoreSetting,
                type=parse_value,
                metavar=_metavar(field.annotation),
                default=argparse.SUPPRESS,
                help=_help(field),
            )
    group.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine setting by name, e.g. knn_k=5; repeatable; overrides the flags above",
    )


def engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: the flags, then ``--option`` (unvalidated; the model validates)."""
    flags = getattr(args, ENGINE_FLAGS_DEST, None) or {}
    return {**flags, **parse_options(args.option)}
