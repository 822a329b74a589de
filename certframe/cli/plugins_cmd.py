"""``certframe plugins``: every plugin by kind, with the distribution that provides it.

    certframe plugins                      the table, and plugins that failed to load
    certframe plugins segmenter            only the segmenters
    certframe plugins segmenter monai      one plugin: options with defaults, documentation
    certframe plugins --verbose            every plugin's options and documentation
"""
from __future__ import annotations

import inspect

import click
from rich.console import Console
from rich.table import Table

from certframe.registry import KINDS, PluginEntry, PluginNotFound, get_registry


def option_rows(entry: PluginEntry) -> list[tuple[str, str, str]]:
    """``(name, default, type)`` per option of the plugin's factory; default ``required`` when none."""
    rows = []
    for name, p in entry.options().items():
        default = "required" if p.default is p.empty else repr(p.default)
        if p.annotation is p.empty:
            kind = ""
        elif isinstance(p.annotation, str):
            kind = p.annotation
        else:
            kind = inspect.formatannotation(p.annotation)
        rows.append((name, default, kind))
    return rows


def describe(entry: PluginEntry, console: Console) -> None:
    """Print one plugin: where it comes from, its options, its documentation."""
    console.rule(f"{entry.kind} [bold]{entry.name}[/]")
    factory = entry.factory
    where = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', type(factory).__name__)}"
    provider = " ".join(p for p in (entry.distribution, entry.version) if p)
    console.print(f"provided by {provider} (plugin {entry.plugin!r}): {where}", markup=False, highlight=False)
    rows = option_rows(entry)
    if rows:
        console.print(f"options (--{entry.kind}-option KEY=VALUE):", markup=False, highlight=False)
        table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 2))
        for col in ("option", "default", "type"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        console.print("options: none")
    if entry.accepts_any_option():
        console.print("also accepts any other KEY=VALUE option (passed on as keyword arguments)")
    if entry.doc:
        console.print()
        console.print(entry.doc, markup=False, highlight=False)
    console.print()


@click.command("plugins")
@click.argument("kind", required=False, type=click.Choice(list(KINDS)))
@click.argument("name", required=False)
@click.option("--verbose", "-v", is_flag=True, help="Show each plugin's options (with defaults) and documentation.")
def plugins(kind: str | None, name: str | None, verbose: bool):
    """List the available plugins (of KIND), and those that failed to load.

    With KIND and NAME, show that plugin's options, defaults and documentation.
    """
    registry = get_registry()
    console = Console()
    kinds = [kind] if kind else list(KINDS)
    if name is not None:
        try:
            entry = registry.get(kind, name)
        except PluginNotFound as err:
            raise click.ClickException(str(err)) from None
        describe(entry, console)
    else:
        table = Table(title="certframe plugins")
        for col in ("kind", "name", "provided by", "summary"):
            table.add_column(col, overflow="fold")  # never truncate names to "…"
        for k in kinds:
            for n in registry.names(k):
                e = registry.get(k, n)
                table.add_row(k, n, f"{e.distribution} {e.version}".strip(), e.summary)
        console.print(table)
        if verbose:
            for k in kinds:
                for n in registry.names(k):
                    describe(registry.get(k, n), console)
    for f in registry.failures:
        console.print(f"[red]plugin {f.plugin!r} ({f.distribution}) failed:[/] {f.error}", markup=True)
