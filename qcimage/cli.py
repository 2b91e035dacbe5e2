"""Command line: API keys and the signing key (``qcimage keys …``, ``qcimage secrets …``).

What a command prints on stdout is exactly the line to put in the service's
environment (so ``qcimage keys create shop-a >> .env`` works); notes for the person
running it, and a new key, go to stderr.
"""

from __future__ import annotations

import os
import sys

import click

from .auth import new_api_key
from .envreader import PREFIX, environment
from .keys import hash_api_key, new_signing_key

_TENANTS_FILE = PREFIX + "TENANTS_FILE"


class _Configured:
    """A ``QCIMAGE_*`` list as the app would read it, and where it was found."""

    def __init__(self, name: str):
        self.name = PREFIX + name
        value = environment().get(self.name)
        self.entries = [part.strip() for part in (value or "").split(",") if part.strip()]
        self.where = ("the environment" if os.environ.get(self.name) else
                      "./.env (read in development)" if value else None)

    def without(self, name: str) -> list[str]:
        """The ``name:sha256`` entries of every key but ``name``."""
        return [entry for entry in self.entries if entry.partition(":")[0] != name]

    def line(self, entries: list[str]) -> str:
        return f"{self.name}={','.join(entries)}"


def _api_keys() -> _Configured:
    tenants_file = os.environ.get(_TENANTS_FILE, "").strip()
    if tenants_file:
        raise click.ClickException(
            f"{_TENANTS_FILE}={tenants_file} is set, so API keys would live in that file, "
            f"not in {PREFIX}API_KEYS; but tenants files are not supported by this version "
            f"of qcimage yet. Unset {_TENANTS_FILE} and use {PREFIX}API_KEYS.")
    return _Configured("API_KEYS")


def _note(text: str) -> None:
    click.echo(text, err=True)


@click.group("keys", help="Manage API keys (stored as SHA-256 hashes in QCIMAGE_API_KEYS).")
def keys_cli() -> None:
    pass


@keys_cli.command("create")
@click.argument("name")
def create_key(name: str) -> None:
    """Create a key for NAME: prints the key once, and the line to configure."""
    configured = _api_keys()
    key = new_api_key()
    entries = configured.without(name)
    entries.append(f"{name}:{hash_api_key(key)}")
    _note(f"API key for {name} (shown once, give it to the client): {key}")
    kept = f"; the keys already in {configured.where} are kept" if configured.entries else ""
    _note(f"Set this line in the service's environment (it holds only the key's SHA-256"
          f"{kept}), then restart:")
    click.echo(configured.line(entries))


@keys_cli.command("list")
def list_keys() -> None:
    """List the configured key names (never the keys or hashes), and where they were read."""
    configured = _api_keys()
    names = [entry.partition(":")[0] for entry in configured.entries]
    if not names:
        _note(f"no keys: {configured.name} is set neither in the environment nor in ./.env "
              "(`qcimage keys create NAME` makes one)")
        return
    _note(f"{len(names)} key(s) in {configured.name}, read from {configured.where}:")
    for name in names:
        click.echo(name)


@keys_cli.command("revoke")
@click.argument("name")
def revoke_key(name: str) -> None:
    """Print QCIMAGE_API_KEYS without NAME; deploy it and the key stops working."""
    configured = _api_keys()
    kept = configured.without(name)
    if len(kept) == len(configured.entries):
        raise click.ClickException(f"no key named {name!r} in {configured.name} "
                                   f"(read from {configured.where or 'nowhere: it is unset'})")
    _note(f"Set this line in the service's environment, then restart; {name} stops working:")
    click.echo(configured.line(kept))


@click.group("secrets", help="Make the secrets the service signs image links with.")
def secrets_cli() -> None:
    pass


@secrets_cli.command("signing-key")
def signing_key() -> None:
    """A new signing key, first in QCIMAGE_SIGNING_KEYS; the configured ones stay after it."""
    configured = _Configured("SIGNING_KEYS")
    _note("Set this line in the environment of every box (they must all share it), then "
          "restart. New links are signed with the first key; "
          + ("the old ones after it still verify the links they signed: drop them once "
             "those links expired (QCIMAGE_SIGNED_URL_TTL)." if configured.entries else
             "keep it secret, it is what makes image links unforgeable."))
    click.echo(configured.line([new_signing_key(), *configured.entries]))


def main() -> None:
    """Console script ``qcimage``: runs the same commands without loading the app."""
    cli = click.Group(help="qcimage administration")
    cli.add_command(keys_cli)
    cli.add_command(secrets_cli)
    sys.exit(cli.main(prog_name="qcimage", standalone_mode=True))
