"""How the ``kbq`` command behaves as a command-line tool (clig.dev conventions), apart
from what its commands do.

* Help is click's plain help, not Typer's rich help: rich reads help texts as markup and
  drops whatever is in square brackets (``[env KBQ_DB; default: ...]``). Command lists show
  each command's whole first sentence, wrapped; usage lines name a required argument
  plainly (``kbq show ID``).
* A usage error (unknown option or command, missing argument, bad value) is one line on
  stderr, ``kbq: error: ... (see 'kbq CMD --help')``, and exit 2.
* When the reader of kbq's output goes away (``kbq list | head``), kbq ends quietly with
  exit 141, as a tool ended by SIGPIPE does.

Only Typer and what it already imports are used here: the cold start of ``kbq QUERY``
must not grow.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import typer
from typer.core import TyperCommand, TyperGroup

from kb.querytext import shown

# Typer 0.28 carries its own copy of click (typer._click): its classes, not the click package's.
_CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")
_NO_ARGS_IS_HELP = typer.core._click.exceptions.NoArgsIsHelpError

SIGPIPE_EXIT = 128 + 13


class HelpGroup(TyperGroup):
    """A command group whose help lists each command with its whole first sentence, wrapped,
    where click would cut it short with '...'."""

    def format_commands(self, ctx, formatter) -> None:
        commands = ((name, self.get_command(ctx, name)) for name in self.list_commands(ctx))
        rows = [(name, command.get_short_help_str(limit=10_000))
                for name, command in commands if command is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class RootGroup(HelpGroup):
    """The ``kbq`` group itself: one-line usage errors, and a quiet end on a closed pipe."""

    def make_context(self, *args, **kwargs):
        with reader_gone_quietly():  # `kbq --help | true`
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with reader_gone_quietly():
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
            return result

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as err:  # a bare `kbq db`: its help, as click shows it
            err.show()
            code = err.exit_code
        except _CLICK_ERROR as err:
            typer.echo(shown(f"kbq: error: {usage_message(err)}", one_line=True), err=True)
            code = err.exit_code
        except typer.Abort:
            typer.echo("kbq: aborted", err=True)
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


class KbqCommand(TyperCommand):
    """A command whose usage line names a required argument plainly (``kbq show ID``), not in
    the braces Typer puts around it."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


class KbqTyper(typer.Typer):
    """typer.Typer with kbq's conventions as defaults, for the app and its sub-apps: plain
    help, the group and command classes above, ``-h`` as well as ``--help``."""

    def __init__(self, **settings) -> None:
        settings.setdefault("cls", HelpGroup)
        settings.setdefault("rich_markup_mode", None)
        settings.setdefault("no_args_is_help", True)
        settings.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(**settings)

    def command(self, name=None, *, cls=None, **settings):
        return super().command(name, cls=cls or KbqCommand, **settings)


def usage_message(err) -> str:
    """Click's message in kbq's style (lower case, no final period), with where to read more."""
    message = " ".join(err.format_message().split()).rstrip(".")
    if message[:2].istitle():  # 'No such option' but not 'ID ...'
        message = message[0].lower() + message[1:]
    ctx = getattr(err, "ctx", None)
    return f"{message} (see '{ctx.command_path if ctx is not None else 'kbq'} --help')"


@contextmanager
def reader_gone_quietly() -> Iterator[None]:
    """End quietly when whoever reads our output has gone (`kbq ... | head`).

    The recipe of Python's signal module docs: point standard output at /dev/null, so the
    flush at exit cannot fail again, and exit as a tool ended by SIGPIPE does, instead of
    reporting an error to a reader that no longer listens."""
    try:
        yield
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        raise typer.Exit(SIGPIPE_EXIT) from None
