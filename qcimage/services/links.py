"""Store and buying-agent links → (platform, product id), by parsing only: never fetched."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

from . import ServiceError

# DESIGN §1: a `link` is at most this long; longer is refused before parsing.
MAX_LINK_LENGTH = 2048
# Item ids on all four marketplaces are decimal numbers.
_ITEM_ID = re.compile(r"[0-9]{5,20}\Z")
# Agents name the platform in a parameter or path segment, each in its own words.
PLATFORM_CODES = MappingProxyType({
    "weidian": "WEIDIAN", "wd": "WEIDIAN", "micro": "WEIDIAN",
    "taobao": "TAOBAO", "tb": "TAOBAO",
    "tmall": "TMALL", "tm": "TMALL",
    "1688": "1688", "ali_1688": "1688", "alibaba": "1688", "al": "1688",
})
# Parameters in which agents carry the whole marketplace link.
_WRAPPING_PARAMS = ("url", "productlink")
# Wrapped links are percent-encoded once per layer; three is more than any agent uses.
_MAX_DEPTH = 3
# What people paste around a link: more than this many link-like words is not a link.
_MAX_CANDIDATES = 8


@dataclass(frozen=True)
class Site:
    """One site's link shape: where the item id (and, for agents, the platform) sits."""

    name: str
    hosts: tuple[str, ...]            # the host itself or any subdomain of it
    example: str                      # shown in the README, resolved by the tests
    platform: str | None = None       # fixed (a marketplace), else named by a code
    id_params: tuple[str, ...] = ()   # lower-case query/fragment parameter names
    code_params: tuple[str, ...] = ()
    path: re.Pattern[str] | None = None   # groups: ``id`` and, for agents, ``code``
    codes: Mapping[str | None, str] = field(default_factory=lambda: PLATFORM_CODES)


def _path(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


MARKETPLACES = (
    Site("Weidian", ("weidian.com",), "https://weidian.com/item.html?itemID=7494645791",
         platform="WEIDIAN", id_params=("itemid", "item_id")),
    Site("Tmall", ("tmall.com", "tmall.hk"), "https://detail.tmall.com/item.htm?id=800000000001",
         platform="TMALL", id_params=("id",)),
    Site("Taobao", ("taobao.com",), "https://item.taobao.com/item.htm?id=684012345678",
         platform="TAOBAO", id_params=("id",),
         path=_path(r"^/(?:item/(?P<id>[0-9]+)\.htm|i(?P<id2>[0-9]+)\.htm)")),
    Site("1688", ("1688.com",), "https://detail.1688.com/offer/1688000001.html",
         platform="1688", id_params=("offerid",),
         path=_path(r"^/offer/(?P<id>[0-9]+)\.html")),
)

_SHOP_TYPE = dict(id_params=("id",), code_params=("shop_type", "platform"))
AGENTS = (
    # The marketplace link itself, percent-encoded in `url=` (or `productLink=`).
    Site("Pandabuy", ("pandabuy.com",), "https://www.pandabuy.com/product?url="
         "https%3A%2F%2Fweidian.com%2Fitem.html%3FitemID%3D7494645791"),
    Site("Superbuy", ("superbuy.com",), "https://www.superbuy.com/en/page/buy/?url="
         "https%3A%2F%2Fitem.taobao.com%2Fitem.htm%3Fid%3D684012345678"),
    Site("Wegobuy", ("wegobuy.com",), "https://www.wegobuy.com/en/page/buy?from=search-input"
         "&url=https%3A%2F%2Fdetail.tmall.com%2Fitem.htm%3Fid%3D800000000001"),
    Site("AllChinaBuy", ("allchinabuy.com",), "https://www.allchinabuy.com/en/page/buy/?url="
         "https%3A%2F%2Fdetail.1688.com%2Foffer%2F1688000001.html"),
    Site("Kakobuy", ("kakobuy.com",), "https://www.kakobuy.com/item/details?url="
         "https%3A%2F%2Fweidian.com%2Fitem.html%3FitemID%3D7494645791"),
    Site("Hagobuy", ("hagobuy.com",), "https://www.hagobuy.com/item/details?url="
         "https%3A%2F%2Fitem.taobao.com%2Fitem.htm%3Fid%3D684012345678"),
    # In the fragment, and percent-encoded twice.
    Site("Sugargoo", ("sugargoo.com",), "https://www.sugargoo.com/#/home/productDetail?"
         "productLink=https%253A%252F%252Fweidian.com%252Fitem.html%253FitemID%253D7494645791"),
    # The id, and the platform in a parameter.
    Site("CNFans", ("cnfans.com",),
         "https://cnfans.com/product/?shop_type=weidian&id=7494645791", **_SHOP_TYPE),
    Site("Mulebuy", ("mulebuy.com",),
         "https://mulebuy.com/product/?shop_type=taobao&id=684012345678", **_SHOP_TYPE),
    Site("JoyaBuy", ("joyabuy.com",),
         "https://joyabuy.com/product/?shop_type=ali_1688&id=1688000001", **_SHOP_TYPE),
    Site("ACBuy", ("acbuy.com",), "https://www.acbuy.com/product?id=7494645791&source=WD",
         id_params=("id",), code_params=("source",)),
    Site("Oopbuy", ("oopbuy.com",), "https://oopbuy.com/product/weidian/7494645791",
         id_params=("spuno",), code_params=("channelid",),
         path=_path(r"^/product/(?P<code>[a-z0-9_]+)/(?P<id>[0-9]+)"),
         codes={**PLATFORM_CODES, "1": "TAOBAO"}),
    # The platform coded in the path.
    Site("Hoobuy", ("hoobuy.com",), "https://hoobuy.com/product/2/7494645791",
         path=_path(r"^/product/(?P<code>[0-9])/(?P<id>[0-9]+)"),
         codes={"0": "1688", "1": "TAOBAO", "2": "WEIDIAN"}),
    Site("CSSBuy", ("cssbuy.com",), "https://www.cssbuy.com/item-micro-7494645791.html",
         path=_path(r"^/item-(?:(?P<code>micro|1688)-)?(?P<id>[0-9]+)\.html"),
         codes={**PLATFORM_CODES, None: "TAOBAO"}),
)

# Links that only their own site can expand (by a redirect we never follow).
SHORT_LINKS = MappingProxyType({
    "tb.cn": "Taobao", "s.click.taobao.com": "Taobao", "k.weidian.com": "Weidian",
    "qr.1688.com": "1688", "page.link": "the agent's app", "app.link": "the agent's app",
    "bit.ly": "the shortener", "tinyurl.com": "the shortener", "t.cn": "the shortener",
    "url.cn": "the shortener",
})

# Everything but what ends a link in running text: whitespace, quotes, brackets of any
# width, and every non-ASCII character (a copied address is percent-encoded).
_URL = re.compile(
    r"(?i:https?:)?(?://)?"
    r"(?P<host>(?i:(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}))(?::[0-9]{1,5})?"
    # Not re.IGNORECASE here: it would let non-ASCII letters that fold to ASCII ones in.
    r"(?P<rest>[/?#][^\s\"'<>()\[\]{}`*\x00-\x1f\x7f-\U0010ffff]*)?")
_TRAILING = ".,;:!?"


@dataclass(frozen=True)
class ResolvedLink:
    """What a link names: the platform (one of vocabulary.PLATFORMS) and the item's id."""

    platform: str
    product_id: str


class LinkError(ServiceError):
    """A link that cannot be resolved offline; the message says what to paste instead."""

    status = 400
    code = "unsupported_link"

    def __init__(self, message: str, *, rank: int = 0):
        super().__init__(message)
        self.rank = rank  # the most specific of several candidates' problems is reported


_PASTE = "open the item's page and paste the full address from the browser's address bar"


def resolve(text: str) -> ResolvedLink:
    """The (platform, id) of the first item link in ``text``, or LinkError saying why not."""
    problems = []
    for match in islice(_URL.finditer(text.replace("&amp;", "&")), _MAX_CANDIDATES):
        try:
            return _resolve_url(match.group("host"), match.group("rest") or "", 0)
        except LinkError as problem:
            problems.append(problem)
    if problems:
        raise max(problems, key=lambda p: p.rank)
    if _ITEM_ID.match(text.strip()):
        raise LinkError("that is a product id, not a link: send it as id (with storePlatform), "
                        "or paste the item's link")
    raise LinkError("no link found: paste the address of an item on Weidian, Taobao, Tmall or "
                    "1688, or of a buying agent's page for it")


def _resolve_url(host: str, rest: str, depth: int) -> ResolvedLink:
    host = host.lower()
    rest = rest.rstrip(_TRAILING)
    short = _site_of(host, SHORT_LINKS)
    if short:
        raise LinkError(f"{host} is a short link that only {SHORT_LINKS[short]} can expand, "
                        f"and qcimage never follows links: {_PASTE}", rank=3)
    path, params = _split(rest)
    for site in MARKETPLACES:
        if _site_of(host, site.hosts):
            found = _item(site, path, params)
            if found:
                return found
            raise LinkError(f"this {site.name} link is not an item page (it has no item id): "
                            f"{_PASTE}", rank=2)
    agent = next((site for site in AGENTS if _site_of(host, site.hosts)), None)
    found = _item(agent, path, params) if agent else None
    if found:
        return found
    wrapped = _wrapped(rest, params, depth)
    if wrapped:
        return wrapped
    if agent:
        raise LinkError(f"this {agent.name} link names no item: {_PASTE} (or the store's link)",
                        rank=2)
    raise LinkError(f"links from {host} are not supported: paste the item's address on "
                    "Weidian, Taobao, Tmall or 1688, or a supported agent's (README lists them)",
                    rank=1)


def _site_of(host: str, hosts) -> str | None:
    return next((h for h in hosts if host == h or host.endswith("." + h)), None)


def _split(rest: str) -> tuple[str, dict[str, str]]:
    """The path, and the query's and fragment's parameters (lower-case names, first wins)."""
    parts = urlsplit("//host" + rest)
    fragment = parts.fragment
    fragment_query = fragment.partition("?")[2] if "?" in fragment else fragment
    params: dict[str, str] = {}
    for query in (parts.query, fragment_query):
        for name, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(name.lower(), value)
    return parts.path, params


def _item(site: Site, path: str, params: Mapping[str, str]) -> ResolvedLink | None:
    product_id, code = None, None
    match = site.path.match(path) if site.path else None
    if match:
        groups = match.groupdict()
        product_id = groups.get("id") or groups.get("id2")
        code = groups.get("code")
    else:
        product_id = next((params[n] for n in site.id_params if n in params), None)
        code = next((params[n] for n in site.code_params if n in params), None)
    if product_id is None or not _ITEM_ID.match(product_id):
        return None
    platform = site.platform or site.codes.get(code.lower() if code else None)
    return ResolvedLink(platform, product_id) if platform else None


def _wrapped(rest: str, params: Mapping[str, str], depth: int) -> ResolvedLink | None:
    """The marketplace link an agent carries in ``url=``/``productLink=``, resolved."""
    if depth >= _MAX_DEPTH:
        return None
    for name in _WRAPPING_PARAMS:
        if name not in params:
            continue
        value = params[name]
        for _ in range(_MAX_DEPTH):
            if "://" in value or "%" not in value:
                break
            value = unquote(value)
        # Pasted unencoded, the wrapped link's own parameters look like the agent's: the
        # rest of the address after `url=` is then the wrapped link, whole.
        raw = re.search(rf"[?&#/]{name}=(.*)", rest, re.IGNORECASE)
        tails = [value] + ([raw.group(1)] if raw and "://" in raw.group(1) else [])
        problem = None
        for tail in tails:
            match = _URL.match(tail.strip())
            if match:
                try:
                    return _resolve_url(match.group("host"), match.group("rest") or "",
                                        depth + 1)
                except LinkError as error:
                    problem = problem or error
        if problem:
            raise problem
    return None
