"""The ``cosal`` application: its commands' common entry and exit (codes, --json, SIGTERM, errors)."""

from __future__ import annotations

import functools
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup

from cosal_cli import __version__
from cosal_cli.cli.console import emit_error_json, escape, state, stderr, stdout
from cosal_cli.errors import CosalError, ExitCode, Terminated, first_line

EXIT_CODES_HELP = (
    "Exit codes: 0 all done, 1 some inputs failed, 2 usage error, 3 weights unavailable "
    "(offline / not cached), 4 weights checksum mismatch, 5 internal error (in some group; the others "
    "were processed), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). With --json, every exit prints "
    "one JSON object with exit_code."
)


class _CosalGroup(TyperGroup):
    """Every exit of every command goes through here, so that even a parse error or a SIGTERM gives the
    documented exit code and, with ``--json``, one JSON object on stdout."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        arguments = list(sys.argv[1:] if args is None else args)
        state.reset(json_wanted="--json" in arguments)
        with _sigterm_raises_terminated():
            try:
                code = super().main(arguments, prog_name, complete_var, standalone_mode=False, **extra)
            except typer.TyperException as exc:  # bad option or argument: the parser's message, exit 2
                _show_parse_error(exc)
                code = emit_error_json(getattr(exc, "exit_code", ExitCode.USAGE), exc.format_message())
            except (typer.Abort, KeyboardInterrupt) as exc:
                code = emit_error_json(interrupt_code(exc), "interrupted")
        code = ExitCode.TERMINATED if state.terminated else (code or 0)
        if not standalone_mode:
            return code
        sys.exit(int(code))

    def get_params(self, ctx):
        params = super().get_params(ctx)  # cosal's own options (--version) and --help
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            tidy_metavars(command, ctx)
        return command


class _Argument(TyperArgument):
    """A positional argument shown as its metavar alone (``PATH...``), as Unix tools show them."""

    def _usage_display_name(self) -> str:
        return self.display_name_raw if self.required else f"[{self.display_name_raw}]"

    def display_type_rich(self, ctx) -> None:
        return None


def tidy_metavars(command, ctx) -> None:
    """Help that reads like a Unix tool's: flags show no ``<bool>``, values a name (``N``, ``PATH``,
    ``METHOD``) instead of typer's type labels (``<int range>``, ``<list[str]>``, ``{paths}``)."""
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        label = param.display_type(None)  # typer's "<int range>", "<path>", "<list[str]>" ...
        name = "N" if "int" in label else "X" if "float" in label else (param.name or "").upper()
        if "path" in label or param.name in ("paths", "pred"):
            name = "PATH"
        param.metavar = name + ("..." if param.nargs == -1 else "")
    for sub in getattr(command, "commands", {}).values():
        tidy_metavars(sub, ctx)


app = typer.Typer(
    cls=_CosalGroup,
    name="cosal",
    help=f"Co-saliency detection: image groups in, one map per image out. {EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weights_app = typer.Typer(help="List, fetch, verify and locate weight components.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
cache_app = typer.Typer(help="What cosal keeps in $COSAL_HOME, and clearing it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _show_parse_error(exc: typer.TyperException) -> None:
    """The parse error as typer prints it on its own (a rich panel), or plainly without rich."""
    try:
        from typer.rich_utils import rich_format_error
    except ImportError:
        exc.show()
    else:
        rich_format_error(exc)


def interrupt_code(exc: BaseException) -> ExitCode:
    terminated = isinstance(exc, Terminated) or state.terminated
    return ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED


@contextmanager
def _sigterm_raises_terminated() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so a kill or a scheduler's
    time limit ends the run as Ctrl-C does: complete maps only, a summary, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        state.terminated = True
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(command: Callable) -> Callable:
    """Turn every way a command can end into a one-line message, its documented exit code and, with
    --json, one JSON object: CosalError (2-4), Ctrl-C (130), SIGTERM (143), a bug (5)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except CosalError as exc:
            stderr.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(emit_error_json(exc.exit_code, str(exc))) from None
        except KeyboardInterrupt as exc:
            code = interrupt_code(exc)
            stderr.print("[yellow]terminated[/]" if code == ExitCode.TERMINATED else "[yellow]interrupted[/]")
            message = "terminated" if code == ExitCode.TERMINATED else "interrupted"
            raise typer.Exit(emit_error_json(code, message)) from None
        except Exception as exc:
            message = f"internal error ({type(exc).__name__}: {first_line(exc)}); please report it"
            stderr.print(f"[bold red]error:[/] {escape(message)}")
            if kwargs.get("debug"):
                stderr.print(escape("".join(traceback.format_exception(exc))))
            else:
                stderr.print("[dim]rerun with --debug for the traceback[/]")
            raise typer.Exit(emit_error_json(ExitCode.INTERNAL_ERROR, message)) from None

    return wrapper


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"cosal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass
