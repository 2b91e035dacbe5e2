"""Tenants: one operator, many websites, each with its own keys, watermark, origins and limits.

The tenants come from ``QCIMAGE_TENANTS_FILE`` (``tenantsfile`` reads it, DESIGN §6);
without the file, the environment's keys, watermark, origins and limits form one tenant,
``default``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from .keys import hash_api_key
from .services.imaging.watermark import Watermark
from .vocabulary import DEFAULT_WIDTH

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")


@dataclass(frozen=True)
class LinkDefaults:
    """What a look-up uses for the parameters its caller left out."""

    width: int = DEFAULT_WIDTH
    quality: int = 80
    format: str = "webp"
    srcset_widths: tuple[int, ...] = (480, 960, 1440)
    link_ttl: int = 30 * 86400


@dataclass(frozen=True)
class Tenant:
    """One customer website."""

    name: str
    api_keys: Mapping[str, str]              # sha256 hex -> key name (rate limits count by it)
    watermark: Watermark
    cors_origins: tuple[str, ...] = ()
    referrers: tuple[str, ...] = ()          # hosts whose pages may embed; () = any
    lookup_limit: str = "100 per 15 minutes"
    image_limit: str = "300 per 15 minutes"
    defaults: LinkDefaults = field(default_factory=LinkDefaults)

    def allows_referrer(self, referer: str | None) -> bool:
        """Whether a page with this ``Referer`` may embed the tenant's images.

        A missing Referer is allowed: browsers and privacy settings strip it, and
        refusing it would break the tenant's own pages for those visitors.
        """
        if not self.referrers or not referer:
            return True
        try:
            host = (urlsplit(referer).hostname or "").lower()
        except ValueError:
            return False
        return any(host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:]))
                   for allowed in self.referrers)


@dataclass(frozen=True)
class Tenants:
    """Every tenant by name, and who each API key belongs to."""

    by_name: Mapping[str, Tenant]
    from_file: bool = False

    def get(self, name: str | None) -> Tenant | None:
        """The tenant an image link names; a link without ``t`` is ``default``'s."""
        return self.by_name.get(name or DEFAULT_TENANT)

    def link_name(self, tenant: Tenant) -> str | None:
        """The ``t`` a tenant's links carry. The environment's single tenant writes none,
        so links made before tenants existed keep their signatures."""
        return tenant.name if self.from_file else None

    def resolve_key(self, key: str) -> tuple[Tenant, str] | None:
        """(tenant, key name) for a presented key; every hash is compared in constant time."""
        digest = hash_api_key(key).encode()
        found = None
        for tenant in self.by_name.values():
            for stored, name in tenant.api_keys.items():
                if hmac.compare_digest(digest, stored.encode()):
                    found = (tenant, name)
        return found

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """Every tenant's origins: what a preflight, which names no tenant, is answered with."""
        return tuple(sorted({o for t in self.by_name.values() for o in t.cors_origins}))


def single_tenant(template: Tenant) -> Tenants:
    """The environment's configuration as the one tenant, ``default``."""
    return Tenants({DEFAULT_TENANT: replace(template, name=DEFAULT_TENANT)})
