"""One error boundary for every command: a failure is one line that names what went wrong.

:class:`CertframeGroup` wraps each command. An exception that escapes a command
becomes one ``Error: ...`` line (exit code 1) naming the file, plugin or option and,
where one is known, the hint that fixes it; ``certframe --debug`` (or the environment
variable ``CERTFRAME_DEBUG=1``) shows the traceback instead. Ctrl-C stops with exit
code 130 and says how to continue the run (``--resume``); a command whose Ctrl-C leaves
something more specific to say sets it with :func:`on_interrupt`. Commands do not catch
errors themselves: they raise, and this boundary words them.
"""
from __future__ import annotations

import os

import click

DEBUG_ENV = "CERTFRAME_DEBUG"
INTERRUPT_KEY = "certframe.on_interrupt"
"""Where :func:`on_interrupt` keeps the running command's Ctrl-C message (``click.Context.meta``)."""
INTERRUPTED = ("Interrupted. What was finished is kept (the rows of finished images, or a training "
               "run's last checkpoint): run the same command again with --resume to continue.")


def debug_enabled(ctx: click.Context | None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    flag = bool(root and root.params.get("debug"))
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


def on_interrupt(message: str) -> None:
    """What Ctrl-C prints for the running command instead of the general :data:`INTERRUPTED` (exit code 130 still)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[INTERRUPT_KEY] = message


def describe(err: BaseException) -> str:
    """The one-line message for an exception a command raised."""
    from certframe.registry import PluginError, PluginNotFound

    text = str(err).strip() or type(err).__name__
    if isinstance(err, PluginNotFound):
        return f"{text} (`certframe plugins` lists what is installed and any plugin that failed to load)"
    if isinstance(err, PluginError):
        return text
    if isinstance(err, ImportError):
        return (f"{text} (a plugin needs a package that is not installed: see its extra, e.g. "
                f"pip install 'certframe[smp]')")
    if isinstance(err, PermissionError):
        where = f" {err.filename!r}" if err.filename else ""
        return f"permission denied writing or reading{where}: choose a folder you can write (--output)"
    if isinstance(err, OSError) and err.errno == 28:
        where = f" while writing {err.filename!r}" if err.filename else ""
        return f"the disk is full{where}: free space, then continue the run with --resume"
    if isinstance(err, (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, OSError)):
        return text.splitlines()[0] if len(text.splitlines()) > 20 else text
    first = text.splitlines()[0]
    return f"{type(err).__name__}: {first} (run `certframe --debug ...` for the traceback)"


class CertframeGroup(click.Group):
    """A click group whose commands fail with one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            if debug_enabled(ctx):
                raise
            click.echo(ctx.meta.get(INTERRUPT_KEY, INTERRUPTED), err=True)
            ctx.exit(130)
        except Exception as err:
            if debug_enabled(ctx):
                raise
            raise click.ClickException(describe(err)) from err


__all__ = ["CertframeGroup", "DEBUG_ENV", "INTERRUPTED", "describe", "debug_enabled", "on_interrupt"]
