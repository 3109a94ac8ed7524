"""The `qdeploy` command line: one click group, one sub-command per pipeline stage."""

from __future__ import annotations

import sys

import click

from qdeploy import __version__
from qdeploy.errors import QDeployError


class _Group(click.Group):
    """Turns QDeployError into a one-line message and exit status 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QDeployError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="qdeploy")
def main() -> None:
    """Adapt pretrained models into quadratic networks, export, verify, bench and serve them."""


def _register_subcommands() -> None:
    """Each stage owns its commands; the group only collects them."""
    from qdeploy.commands import register

    register(main)


_register_subcommands()
