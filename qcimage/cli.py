"""Command line: API keys and the signing key (``qcimage keys …``, ``qcimage secrets …``).

What a command prints on stdout is exactly the line to put in the service's
environment (so ``qcimage keys create shop-a >> .env`` works); notes for the person
running it, and a new key, go to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .auth import new_api_key
from .envreader import PREFIX
from .keys import hash_api_key, new_signing_key

_TENANTS_FILE = PREFIX + "TENANTS_FILE"


class _Configured:
    """A ``QCIMAGE_*`` list as the app would read it, and where it was found."""

    def __init__(self, name: str):
        from . import _environment

        self.name = PREFIX + name
        value = _environment(None).get(self.name)
        self.entries = [part.strip() for part in (value or "").split(",") if part.strip()]
        self.where = ("the environment" if os.environ.get(self.name) else
                      "./.env (read in development)" if value else None)

    def without(self, name: str) -> list[str]:
        """The ``name:sha256`` entries of every key but ``name``."""
        return [entry for entry in self.entries if entry.partition(":")[0] != name]

    def line(self, entries: list[str]) -> str:
        return f"{self.name}={','.join(entries)}"


def _tenants_file() -> str | None:
    return os.environ.get(_TENANTS_FILE, "").strip() or None


def _api_keys() -> _Configured:
    tenants_file = _tenants_file()
    if tenants_file:
        raise click.ClickException(
            f"{_TENANTS_FILE}={tenants_file} is set, so API keys live in that file, not in "
            f"{PREFIX}API_KEYS: `qcimage tenants check` lists each tenant's keys; to revoke "
            "one, delete its entry from the tenant's api_keys and send gunicorn's master HUP.")
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
    key = new_api_key()
    if _tenants_file():
        _note(f"API key for {name} (shown once, give it to the client): {key}")
        _note(f"Add this entry to the tenant's api_keys in {_tenants_file()} (it holds only "
              "the key's SHA-256), then send gunicorn's master HUP:")
        click.echo(f'"{name}:{hash_api_key(key)}"')
        return
    configured = _api_keys()
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


@click.group("tenants", help="Check the tenants file and preview a tenant's watermark.")
def tenants_cli() -> None:
    pass


def _tenants(tenants_file: str | None):
    """The tenants the service would start with (the file's problems as a ClickException)."""
    from flask import Flask

    from . import _environment, default_cache_dir
    from .config import ConfigError, load_settings

    environ = dict(_environment(None))
    if tenants_file:
        environ[_TENANTS_FILE] = tenants_file
    instance = Flask("qcimage", instance_relative_config=True).instance_path
    try:
        return load_settings(environ, default_cache_dir=default_cache_dir(instance),
                             only_tenants=True).tenants
    except ConfigError as error:
        raise click.ClickException(f"{len(error.problems)} problem(s):\n  - "
                                   + "\n  - ".join(error.problems)) from None


_FILE_OPTION = click.option("--file", "tenants_file", metavar="PATH",
                            help=f"check this file instead of {_TENANTS_FILE}'s")


@tenants_cli.command("check")
@_FILE_OPTION
def check_tenants(tenants_file: str | None) -> None:
    """Validate the tenants file as the service would at start-up or on HUP."""
    tenants = _tenants(tenants_file)
    source = tenants_file or _tenants_file()
    _note(f"{source}: {len(tenants.by_name)} tenant(s), valid" if tenants.from_file else
          f"{_TENANTS_FILE} is not set: the environment is one tenant, default")
    for tenant in tenants.by_name.values():
        marks = tenant.watermark.layers
        layers = ", ".join(f"text {layer.text!r} {layer.gravity}" if layer.text else
                           f"logo {layer.logo.name} {layer.gravity}" for layer in marks)
        click.echo(f"{tenant.name}: keys {', '.join(sorted(set(tenant.api_keys.values()))) or '-'}"
                   f"; watermark {layers}{' (tiled)' if marks[0].tile else ''}"
                   f"; origins {', '.join(tenant.cors_origins) or '-'}"
                   f"; referrers {', '.join(tenant.referrers) or 'any'}"
                   f"; look-ups {tenant.lookup_limit} per key; images {tenant.image_limit} "
                   "per client IP")


@tenants_cli.command("preview")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="where to write the sheet (.png, .jpg or .webp)")
@_FILE_OPTION
def preview_tenant(name: str, out: Path, tenants_file: str | None) -> None:
    """Draw NAME's watermark on light, dark and busy photos at 480, 960 and 2000 px."""
    from .preview import PreviewUnavailable, contact_sheet

    tenant = _tenants(tenants_file).by_name.get(name)
    if tenant is None:
        raise click.ClickException(f"no tenant named {name!r}")
    try:
        contact_sheet(name, tenant.watermark, out)
    except PreviewUnavailable as error:
        raise click.ClickException(str(error)) from None
    _note(f"wrote {out}")


def main() -> None:
    """Console script ``qcimage``: runs the same commands without loading the app."""
    cli = click.Group(help="qcimage administration")
    cli.add_command(keys_cli)
    cli.add_command(secrets_cli)
    cli.add_command(tenants_cli)
    sys.exit(cli.main(prog_name="qcimage", standalone_mode=True))
