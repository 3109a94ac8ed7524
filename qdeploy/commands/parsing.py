"""Option values the commands share: comma-separated integer lists ("1,8,32"), options from dataclasses."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from qdeploy.errors import QDeployError


def parse_ints(value: str, option: str, minimum: int = 0) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); anything else, or a number below `minimum`, is a one-line error naming the option."""
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < minimum:
        raise QDeployError(f"{option} {value!r} is not a comma-separated list of integers >= {minimum}; e.g. 1,32")
    return numbers


def dataclass_options(cls: type) -> Callable[[Callable], Callable]:
    """click options generated from the fields of the dataclass `cls`, so each default and help
    text is written once (in the dataclass). Field metadata: "help"; "option" (the option name,
    default --field-name); "off" (a bool's negative flag, default --no-<name>); "choices". A bool
    is an on/off flag pair (`bool | None`: None unless given), a tuple of ints a comma-separated
    list (parse_ints), `X | None` optional.
    Build the dataclass back with `cls(**options)` after `parse_dataclass_options`."""
    import click

    types = {"str": str, "int": int, "float": float, "Path": click.Path(path_type=Path)}

    def decorate(command: Callable) -> Callable:
        for spec in reversed(fields(cls)):
            name = spec.metadata.get("option", "--" + spec.name.replace("_", "-"))
            help_text = spec.metadata.get("help", "")
            kind = spec.type.removesuffix(" | None")
            if kind == "bool":
                off = spec.metadata.get("off", "--no-" + name[2:])
                option = click.option(f"{name}/{off}", spec.name, default=spec.default, show_default=spec.default is not None,
                                      help=help_text)
            elif spec.type == "tuple[str, ...]":  # a repeatable option
                option = click.option(name, spec.name, multiple=True, type=click.Choice(list(spec.metadata["choices"])),
                                      default=spec.default, show_default=True, help=help_text)
            elif spec.type == "tuple[int, ...]":
                option = click.option(name, spec.name, default=",".join(map(str, spec.default)), show_default=True,
                                      help=help_text + " Comma-separated.")
            else:
                kind = click.Choice(list(spec.metadata["choices"])) if "choices" in spec.metadata else types[kind]
                option = click.option(name, spec.name, type=kind, default=spec.default,
                                      show_default=spec.default is not None, help=help_text)
            command = option(command)
        return command

    return decorate


def parse_dataclass_options(cls: type, options: dict[str, Any]) -> Any:
    """The dataclass `cls` from the options `dataclass_options` generated (lists parsed, one-line errors)."""
    values = dict(options)
    for spec in fields(cls):
        if spec.type == "tuple[int, ...]":
            name = spec.metadata.get("option", "--" + spec.name.replace("_", "-"))
            values[spec.name] = parse_ints(values[spec.name], name, minimum=1)
    return cls(**values)
