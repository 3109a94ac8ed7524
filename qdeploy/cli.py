"""The `qdeploy` command line: one click group, one sub-command per pipeline stage."""

from __future__ import annotations

import functools

import click

from qdeploy import __version__
from qdeploy.commands import COMMANDS, load_command
from qdeploy.errors import exit_on_user_error


class _Group(click.Group):
    """Loads sub-commands on demand; a QDeployError is one line and exit status 2, a bug exit status 3."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the registry's summaries: loading every command for its help would import all stages."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context):
        return exit_on_user_error(functools.partial(super().invoke, ctx), debug=ctx.params.get("debug", False),
                                  passthrough=(click.exceptions.ClickException, click.exceptions.Exit,
                                               click.exceptions.Abort))


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="qdeploy")
@click.option("--debug", is_flag=True, help="On an error, print the chained traceback (also QDEPLOY_DEBUG=1).")
def main(debug: bool) -> None:
    """Adapt pretrained models into quadratic networks, export, verify, bench and serve them."""
