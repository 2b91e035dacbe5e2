"""Tenants: whose key a key is, whose pages may embed, what preflights are answered for."""

from __future__ import annotations

import pytest

from qcimage.keys import hash_api_key
from qcimage.services.imaging.watermark import Watermark
from qcimage.tenants import Tenant, Tenants

NO_MARK = Watermark(())


def tenant(name: str, **fields) -> Tenant:
    return Tenant(name=name, api_keys=fields.pop("api_keys", {}), watermark=NO_MARK, **fields)


@pytest.mark.parametrize("referer, allowed", [
    (None, True), ("", True), ("https://shop-a.example/p/1", True),
    ("http://SHOP-A.example:8080/", True), ("https://www.shop-b.example/", True),
    ("https://shop-b.example/", False), ("https://evil.example/shop-a.example", False),
    ("https://shop-a.example.evil.example/", False), ("not a url", False),
    ("https://[broken/", False)])
def test_referrers_allow_listed_hosts_and_pages_that_send_none(referer, allowed):
    shop = tenant("shop-a", referrers=("shop-a.example", "*.shop-b.example"))
    assert shop.allows_referrer(referer) is allowed
    assert tenant("open").allows_referrer(referer) is True


def test_a_key_resolves_to_its_tenant_and_name_and_nothing_else():
    a = tenant("shop-a", api_keys={hash_api_key("k1"): "site", hash_api_key("k2"): "shop-a"})
    b = tenant("shop-b", api_keys={hash_api_key("k3"): "shop-b"})
    tenants = Tenants({"shop-a": a, "shop-b": b}, from_file=True)
    assert tenants.resolve_key("k1") == (a, "site")
    assert tenants.resolve_key("k3") == (b, "shop-b")
    assert tenants.resolve_key("k4") is None


def test_preflights_are_answered_for_every_tenants_origins():
    tenants = Tenants({"a": tenant("a", cors_origins=("https://a.example",)),
                       "b": tenant("b", cors_origins=("https://b.example", "https://a.example"))})
    assert tenants.cors_origins == ("https://a.example", "https://b.example")


def test_links_carry_t_only_for_tenants_from_a_file():
    shop = tenant("shop-a")
    assert Tenants({"shop-a": shop}, from_file=True).link_name(shop) == "shop-a"
    assert Tenants({"default": shop}).link_name(shop) is None
    assert Tenants({"default": shop}).get(None) is shop
