"""Command line: API keys, the signing key and takedowns (``qcimage keys|secrets|takedown``).

What a command prints on stdout is exactly the line to put in the service's
environment (so ``qcimage keys create shop-a >> .env`` works), or the list asked for;
notes for the person running it, and a new key, go to stderr.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from pathlib import Path

import click

from .auth import new_api_key
from .envreader import PREFIX, ConfigError, environment
from .groups import load_cache_settings
from .keys import hash_api_key, new_signing_key
from .wiring import default_cache_dir

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
    from .config import load_settings

    environ = dict(environment())
    if tenants_file:
        environ[_TENANTS_FILE] = tenants_file
    try:
        return load_settings(environ, default_cache_dir=default_cache_dir(),
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


class _TakedownPlace:
    """The takedown list and the caches this box shares with the service, from its settings."""

    def __init__(self):
        from .services.stores import open_source_store, open_store
        from .services.takedown import open_takedowns

        default_dir = default_cache_dir()
        try:
            self.settings = load_cache_settings(environment(), default_cache_dir=default_dir)
        except ConfigError as error:
            raise click.ClickException(str(error)) from None
        _check_owner(self.settings.dir or default_dir)
        self.store, shared = open_store(self.settings, default_dir)
        self.sources = open_source_store(self.settings, default_dir, shared)
        self.takedowns = open_takedowns(self.settings.dir or default_dir, shared,
                                        self.settings.redis_url)

    def __call__(self, action, *args):
        try:
            return action(*args)
        except self.takedowns.errors as error:
            raise click.ClickException(f"cannot reach the takedown list in "
                                       f"{self.takedowns.where} ({type(error).__name__}); "
                                       "nothing changed") from None


def _check_owner(cache_dir: Path) -> None:
    # Files made here by another user (root, say) would be unreadable to the service's
    # workers, which would then go on serving what was taken down.
    try:
        owner = cache_dir.stat().st_uid
    except FileNotFoundError:
        raise click.ClickException(
            f"no cache folder at {cache_dir}: run this with the service's environment "
            f"({PREFIX}CACHE_DIR, and {PREFIX}REDIS_URL when it has one)") from None
    if owner != os.geteuid():
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = f"#{owner}"
        raise click.ClickException(
            f"{cache_dir} belongs to {name}: run this as that user (sudo -u {name} qcimage "
            "takedown …) so the service can read what it writes")


def _image_id(ctx, param, value: str) -> str:
    from .vocabulary import IMAGE_ID

    if not IMAGE_ID.match(value):
        raise click.BadParameter("an image id is 1-64 letters, digits, '_' or '-' (the "
                                 "`url` of an image link, `original` in a look-up)")
    return value


def _reason(ctx, param, value: str) -> str:
    if len(value) > 500 or not value.isprintable():
        raise click.BadParameter("at most 500 printable characters on one line")
    return value


@click.group("takedown", help="Take images down everywhere (451 taken_down), list, restore.")
def takedown_cli() -> None:
    pass


@takedown_cli.command("add")
@click.argument("image_id", callback=_image_id)
@click.option("--reason", default="", callback=_reason,
              help="Why (privacy, rights claim…): kept for `list`, never shown to visitors.")
def add_takedown(image_id: str, reason: str) -> None:
    """Take IMAGE_ID down: 451 for every link to it, its cached copies purged."""
    from .services.takedown import Takedown

    place = _TakedownPlace()
    place(place.takedowns.add, Takedown(image_id=image_id, reason=reason, at=time.time()))
    purged = place.store.purge(image_id) + place.sources.purge(image_id)
    settings = place.settings
    _note(f"{image_id} is taken down (list in {place.takedowns.where}); {purged} cached "
          f"entr{'y' if purged == 1 else 'ies'} purged. Every worker answers 451 for it "
          f"within {settings.takedown_refresh:g} s ({PREFIX}TAKEDOWN_REFRESH); nginx and CDNs "
          f"drop their copies within {settings.shared_cache_ttl} s ({PREFIX}SHARED_CACHE_TTL; "
          "twice that with a CDN in front of nginx). Browsers that already have it keep it.")


@takedown_cli.command("remove")
@click.argument("image_id", callback=_image_id)
def remove_takedown(image_id: str) -> None:
    """Serve IMAGE_ID again."""
    place = _TakedownPlace()
    if not place(place.takedowns.remove, image_id):
        raise click.ClickException(f"{image_id} is not taken down "
                                   f"(list in {place.takedowns.where})")
    settings = place.settings
    _note(f"{image_id} is served again within {settings.takedown_refresh:g} s; nginx may "
          f"answer 451 from its cache for up to {settings.shared_cache_ttl} s more.")


@takedown_cli.command("list")
def list_takedowns() -> None:
    """Images taken down: id, when (UTC) and reason, tab-separated, oldest first."""
    place = _TakedownPlace()
    _, records = place(place.takedowns.load)
    if not records:
        _note(f"no image is taken down (list in {place.takedowns.where})")
        return
    _note(f"{len(records)} image(s) taken down (list in {place.takedowns.where}):")
    for record in sorted(records.values(), key=lambda r: (r.at, r.image_id)):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.at))
        click.echo(f"{record.image_id}\t{when}\t{record.reason}")


def main() -> None:
    """Console script ``qcimage``: runs the same commands without loading the app."""
    cli = click.Group(help="qcimage administration")
    cli.add_command(keys_cli)
    cli.add_command(secrets_cli)
    cli.add_command(tenants_cli)
    cli.add_command(takedown_cli)
    sys.exit(cli.main(prog_name="qcimage", standalone_mode=True))
