"""Command line: create, list and revoke API keys (``qcimage keys …`` or ``flask keys …``)."""

from __future__ import annotations

import os
import sys

import click

from .auth import new_api_key
from .config import PREFIX, hash_api_key


def _configured(value: str | None) -> list[tuple[str, str]]:
    entries = []
    for entry in (value or "").split(","):
        name, _, digest = entry.strip().partition(":")
        if name:
            entries.append((name, digest))
    return entries


@click.group("keys", help="Manage API keys (stored as SHA-256 hashes in QCIMAGE_API_KEYS).")
def keys_cli() -> None:
    pass


@keys_cli.command("create")
@click.argument("name")
def create_key(name: str) -> None:
    """Create a key for NAME: prints the key once, and the line to configure."""
    key = new_api_key()
    entries = [e for e in _configured(os.environ.get(PREFIX + "API_KEYS")) if e[0] != name]
    entries.append((name, hash_api_key(key)))
    click.echo(f"API key for {name} (shown once, give it to the client): {key}")
    click.echo("Add to the environment (the service stores only the hash):")
    click.echo(f"{PREFIX}API_KEYS={','.join(f'{n}:{d}' for n, d in entries)}")


@keys_cli.command("list")
def list_keys() -> None:
    """List the configured key names (never the keys or hashes)."""
    entries = _configured(os.environ.get(PREFIX + "API_KEYS"))
    if not entries:
        click.echo(f"no keys configured in {PREFIX}API_KEYS")
    for name, _ in entries:
        click.echo(name)


@keys_cli.command("revoke")
@click.argument("name")
def revoke_key(name: str) -> None:
    """Print QCIMAGE_API_KEYS without NAME; deploy it and the key stops working."""
    entries = _configured(os.environ.get(PREFIX + "API_KEYS"))
    kept = [e for e in entries if e[0] != name]
    if len(kept) == len(entries):
        raise click.ClickException(f"no key named {name!r} in {PREFIX}API_KEYS")
    click.echo(f"{PREFIX}API_KEYS={','.join(f'{n}:{d}' for n, d in kept)}")


def main() -> None:
    """Console script ``qcimage``: runs the same commands without loading the app."""
    cli = click.Group(help="qcimage administration")
    cli.add_command(keys_cli)
    sys.exit(cli.main(prog_name="qcimage", standalone_mode=True))
