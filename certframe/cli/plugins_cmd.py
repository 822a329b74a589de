"""``certframe plugins``: every plugin by kind, with the distribution that provides it."""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from certframe.registry import KINDS, get_registry


@click.command("plugins")
@click.option("--verbose", "-v", is_flag=True, help="Show each plugin's options and documentation.")
def plugins(verbose: bool):
    """List the available plugins and any that failed to load."""
    registry = get_registry()
    console = Console()
    table = Table(title="certframe plugins")
    for col in ("kind", "name", "provided by", "summary"):
        table.add_column(col, overflow="fold")  # never truncate names to "…"
    for kind in KINDS:
        for name in registry.names(kind):
            e = registry.get(kind, name)
            table.add_row(kind, name, f"{e.distribution} {e.version}".strip(), e.summary)
    console.print(table)
    if verbose:
        for kind in KINDS:
            for name in registry.names(kind):
                e = registry.get(kind, name)
                console.rule(f"{kind} [bold]{name}[/]")
                opts = e.options()
                if opts:
                    console.print("options: " + ", ".join(
                        k if p.default is p.empty else f"{k}={p.default!r}" for k, p in opts.items()))
                if e.doc:
                    console.print(e.doc, markup=False)
    for f in registry.failures:
        console.print(f"[red]plugin {f.plugin!r} ({f.distribution}) failed:[/] {f.error}", markup=True)
