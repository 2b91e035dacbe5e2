"""The link resolver: a corpus of store and agent links, refusals, and arbitrary text."""

import re
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcimage.services.links import AGENTS, MARKETPLACES, SHORT_LINKS, LinkError, resolve

WD, TB, TM, AL = "WEIDIAN", "TAOBAO", "TMALL", "1688"

# (link as people paste it, platform, id)
STORE_LINKS = [
    ("https://weidian.com/item.html?itemID=7494645791", WD, "7494645791"),
    ("https://weidian.com/item.html?itemId=7494645791&spider_token=a1b2", WD, "7494645791"),
    ("https://weidian.com/item.html?item_id=7494645791", WD, "7494645791"),
    ("https://www.weidian.com/item.html?itemID=6123456789", WD, "6123456789"),
    ("https://m.weidian.com/item.html?itemID=6123456789&wfr=wx", WD, "6123456789"),
    ("https://shop1726453019.v.weidian.com/item.html?itemID=7231950392", WD, "7231950392"),
    ("https://weidian.com/fastorder/item.html?spider=1&itemID=5870251234", WD, "5870251234"),
    ("http://weidian.com/item.html?itemID=7494645791", WD, "7494645791"),
    ("weidian.com/item.html?itemID=7494645791", WD, "7494645791"),
    ("HTTPS://WEIDIAN.COM/item.html?ITEMID=7494645791", WD, "7494645791"),
    ("https://item.taobao.com/item.htm?id=684012345678", TB, "684012345678"),
    ("https://item.taobao.com/item.htm?spm=a1z10.1-c.w4004-2.2.3e1c&id=684012345678&ns=1",
     TB, "684012345678"),
    ("https://world.taobao.com/item/684012345678.htm", TB, "684012345678"),
    ("https://world.taobao.com/item/684012345678.htm?spm=a21wu.1", TB, "684012345678"),
    ("https://m.intl.taobao.com/detail/detail.html?id=684012345678", TB, "684012345678"),
    ("https://h5.m.taobao.com/awp/core/detail.htm?id=684012345678&ft=t", TB, "684012345678"),
    ("https://a.m.taobao.com/i684012345678.htm", TB, "684012345678"),
    ("https://market.m.taobao.com/app/dinamic/h5-tb-detail/index.html?id=684012345678",
     TB, "684012345678"),
    ("http://item.taobao.com/item.htm?id=684012345678", TB, "684012345678"),
    ("item.taobao.com/item.htm?id=684012345678", TB, "684012345678"),
    ("https://detail.tmall.com/item.htm?id=800000000001", TM, "800000000001"),
    ("https://detail.tmall.com/item.htm?spm=a220m.1000858&id=800000000001&skuId=5012",
     TM, "800000000001"),
    ("https://detail.m.tmall.com/item.htm?id=800000000001", TM, "800000000001"),
    ("https://chaoshi.detail.tmall.com/item.htm?id=800000000001", TM, "800000000001"),
    ("https://detail.tmall.hk/hk/item.htm?id=800000000001", TM, "800000000001"),
    ("https://detail.1688.com/offer/1688000001.html", AL, "1688000001"),
    ("https://detail.1688.com/offer/612345678901.html?spm=a26352.13672862", AL, "612345678901"),
    ("https://m.1688.com/offer/612345678901.html", AL, "612345678901"),
    ("https://detail.m.1688.com/page/index.html?offerId=612345678901", AL, "612345678901"),
    ("detail.1688.com/offer/612345678901.html", AL, "612345678901"),
]

AGENT_LINKS = [
    ("https://www.pandabuy.com/product?url=https%3A%2F%2Fweidian.com%2Fitem.html%3FitemID%3D"
     "7494645791&inviteCode=ABC", WD, "7494645791"),
    ("https://www.pandabuy.com/product?ref=xyz&url=https%3A%2F%2Fitem.taobao.com%2Fitem.htm%3F"
     "id%3D684012345678", TB, "684012345678"),
    ("https://pandabuy.com/product?url=https://detail.1688.com/offer/612345678901.html",
     AL, "612345678901"),
    ("https://www.superbuy.com/en/page/buy/?url=https%3A%2F%2Fitem.taobao.com%2Fitem.htm%3F"
     "id%3D684012345678", TB, "684012345678"),
    ("https://www.superbuy.com/en/page/buy?nTag=Home-search&from=search-input&url=https%3A%2F%2F"
     "weidian.com%2Fitem.html%3FitemID%3D7494645791", WD, "7494645791"),
    ("https://www.wegobuy.com/en/page/buy?from=search-input&url=https%3A%2F%2Fdetail.tmall.com"
     "%2Fitem.htm%3Fid%3D800000000001", TM, "800000000001"),
    ("https://www.allchinabuy.com/en/page/buy/?url=https%3A%2F%2Fdetail.1688.com%2Foffer%2F"
     "1688000001.html", AL, "1688000001"),
    ("https://www.kakobuy.com/item/details?url=https%3A%2F%2Fweidian.com%2Fitem.html%3FitemID%3D"
     "7494645791&affcode=qc", WD, "7494645791"),
    ("https://www.hagobuy.com/item/details?url=https%3A%2F%2Fitem.taobao.com%2Fitem.htm%3Fid%3D"
     "684012345678", TB, "684012345678"),
    ("https://www.sugargoo.com/#/home/productDetail?productLink=https%253A%252F%252Fweidian.com"
     "%252Fitem.html%253FitemID%253D7494645791", WD, "7494645791"),
    ("https://www.sugargoo.com/index/item/index.html?tp=taobao&productLink=https%3A%2F%2F"
     "item.taobao.com%2Fitem.htm%3Fid%3D684012345678", TB, "684012345678"),
    ("https://cnfans.com/product/?shop_type=weidian&id=7494645791", WD, "7494645791"),
    ("https://cnfans.com/product/?shop_type=taobao&id=684012345678&ref=123", TB, "684012345678"),
    ("https://cnfans.com/product?id=612345678901&platform=ALI_1688", AL, "612345678901"),
    ("https://mulebuy.com/product/?shop_type=weidian&id=7494645791", WD, "7494645791"),
    ("https://mulebuy.com/product/?shop_type=taobao&id=684012345678", TB, "684012345678"),
    ("https://joyabuy.com/product/?shop_type=ali_1688&id=1688000001", AL, "1688000001"),
    ("https://joyabuy.com/product/?id=7494645791&shop_type=weidian", WD, "7494645791"),
    ("https://www.acbuy.com/product?id=7494645791&source=WD", WD, "7494645791"),
    ("https://www.acbuy.com/product?id=684012345678&source=TB&u=abc", TB, "684012345678"),
    ("https://www.acbuy.com/product?id=612345678901&source=AL", AL, "612345678901"),
    ("https://oopbuy.com/product/weidian/7494645791", WD, "7494645791"),
    ("https://oopbuy.com/product/1688/612345678901", AL, "612345678901"),
    ("https://oopbuy.com/product/1/684012345678?inviteCode=P0Q", TB, "684012345678"),
    ("https://m.oopbuy.com/pages/goods/details?channelId=weidian&inviteCode=P0Q&spuNo=7494645791",
     WD, "7494645791"),
    ("https://hoobuy.com/product/2/7494645791", WD, "7494645791"),
    ("https://hoobuy.com/product/1/684012345678?inviteCode=x", TB, "684012345678"),
    ("https://hoobuy.com/product/0/612345678901", AL, "612345678901"),
    ("https://www.cssbuy.com/item-micro-7494645791.html", WD, "7494645791"),
    ("https://www.cssbuy.com/item-684012345678.html", TB, "684012345678"),
    ("https://www.cssbuy.com/item-1688-612345678901.html?promotionCode=x", AL, "612345678901"),
    # An agent we do not list, wrapping a store link the common way.
    ("https://newagent.example/goods?url=https%3A%2F%2Fweidian.com%2Fitem.html%3FitemID%3D"
     "7494645791", WD, "7494645791"),
    # Twice wrapped: an agent link inside another agent's.
    ("https://www.kakobuy.com/item/details?url=" + quote(
        "https://www.pandabuy.com/product?url=" + quote(
            "https://weidian.com/item.html?itemID=7494645791", safe=""), safe=""),
     WD, "7494645791"),
    # Copied out of HTML source.
    ("https://item.taobao.com/item.htm?spm=a1z10&amp;id=684012345678", TB, "684012345678"),
]

BASE = "https://weidian.com/item.html?itemID=7494645791"
AGENT = "https://cnfans.com/product/?shop_type=taobao&id=684012345678"
# What people paste around a link.
PASTED = [
    (f"<{BASE}>", WD, "7494645791"),
    (f"[QC pics]({BASE})", WD, "7494645791"),
    (f"**{BASE}**", WD, "7494645791"),
    (f"`{BASE}`", WD, "7494645791"),
    (f"{BASE}.", WD, "7494645791"),
    (f"{BASE},", WD, "7494645791"),
    (f"{BASE}!!", WD, "7494645791"),
    (f"({BASE})", WD, "7494645791"),
    (f"\"{BASE}\"", WD, "7494645791"),
    (f"'{BASE}'", WD, "7494645791"),
    (f"  {BASE}\n", WD, "7494645791"),
    (f"【{BASE}】", WD, "7494645791"),
    (f"（{BASE}）", WD, "7494645791"),
    (f"「{BASE}」", WD, "7494645791"),
    (f"看看这个{BASE}，谢谢", WD, "7494645791"),
    (f"W2C these? {BASE} thanks!", WD, "7494645791"),
    (f"GL or RL? link: {AGENT}", TB, "684012345678"),
    (f"<{AGENT}>.", TB, "684012345678"),
    (f"[cnfans]({AGENT})", TB, "684012345678"),
    (f"{AGENT}\t(size 42)", TB, "684012345678"),
    ("//item.taobao.com/item.htm?id=684012345678", TB, "684012345678"),
    ("https://www.weidian.com/item.html?itemID=7494645791#comments", WD, "7494645791"),
    ("m.weidian.com/item.html?itemID=7494645791", WD, "7494645791"),
    ("www.cssbuy.com/item-micro-7494645791.html", WD, "7494645791"),
    # A short link first, then the full one: the full one is used.
    ("https://m.tb.cn/h.5abcD or https://item.taobao.com/item.htm?id=684012345678",
     TB, "684012345678"),
]

CORPUS = STORE_LINKS + AGENT_LINKS + PASTED

REFUSED = [
    # Short links: only their site can expand them, and we never fetch.
    ("https://m.tb.cn/h.5abcDeF?tk=xyz", "short link"),
    ("【淘宝】https://m.tb.cn/h.5abcD?tk=x CZ0001 「Nike Dunk」点击链接直接打开", "short link"),
    ("https://e.tb.cn/h.gXyz", "short link"),
    ("https://s.click.taobao.com/t?e=m%3D2", "short link"),
    ("https://k.weidian.com/AbC123", "short link"),
    ("https://qr.1688.com/s/AbCdEf", "short link"),
    ("https://pandabuy.page.link/aBcD", "short link"),
    ("https://agent.app.link/xyz", "short link"),
    ("https://bit.ly/3xyz", "short link"),
    ("https://www.pandabuy.com/product?url=https%3A%2F%2Fm.tb.cn%2Fh.5abc", "short link"),
    # Marketplace pages that are not items.
    ("https://weidian.com/?userid=1234567", "not an item page"),
    ("https://shop123456.taobao.com/", "not an item page"),
    ("https://s.taobao.com/search?q=dunk", "not an item page"),
    ("https://detail.1688.com/offer/abc.html", "not an item page"),
    ("https://item.taobao.com/item.htm?id=12ab34567", "not an item page"),
    ("https://weidian.com/item.html?itemID=123", "not an item page"),
    # Agents' pages without an item, or with a platform nobody uses.
    ("https://www.pandabuy.com/", "names no item"),
    ("https://cnfans.com/product/?shop_type=jd&id=7494645791", "names no item"),
    ("https://hoobuy.com/product/7/7494645791", "names no item"),
    # Other sites, and text that is no link.
    ("https://example.com/item.html?itemID=7494645791", "not supported"),
    ("https://weidian.com.evil.example/item.html?itemID=7494645791", "not supported"),
    ("https://evilweidian.com/item.html?itemID=7494645791", "not supported"),
    ("https://amazon.com/dp/B000000000", "not supported"),
    ("", "no link found"),
    ("just some words", "no link found"),
    ("7494645791", "product id, not a link"),
]


def test_the_corpus_is_as_large_as_promised():
    assert len(CORPUS) >= 80 and len(REFUSED) >= 20


@pytest.mark.parametrize("text,platform,product_id", CORPUS)
def test_a_link_resolves_to_its_platform_and_id(text, platform, product_id):
    resolved = resolve(text)
    assert (resolved.platform, resolved.product_id) == (platform, product_id)


@pytest.mark.parametrize("text,problem", REFUSED)
def test_a_link_that_cannot_be_resolved_offline_says_why(text, problem):
    with pytest.raises(LinkError) as refused:
        resolve(text)
    assert refused.value.status == 400 and refused.value.code == "unsupported_link"
    assert problem in refused.value.message


@pytest.mark.parametrize("host", sorted(SHORT_LINKS))
def test_every_short_link_asks_for_the_full_address(host):
    with pytest.raises(LinkError, match="paste the full address"):
        resolve(f"https://{host}/AbC123")


@pytest.mark.parametrize("site", MARKETPLACES + AGENTS, ids=lambda site: site.name)
def test_each_site_is_documented_with_an_example_that_resolves(site):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"| {site.name} | `{site.example}` |" in readme
    assert resolve(site.example).product_id in site.example


def test_at_least_ten_agents_are_covered():
    assert len(AGENTS) >= 10


def _digits_of(text: str) -> str:
    """The input with every layer of percent-encoding undone, as an agent link nests."""
    layers = [text]
    for _ in range(3):
        layers.append(unquote(layers[-1]))
    return "\n".join(layers)


def _check_property(text: str) -> None:
    try:
        resolved = resolve(text)
    except LinkError as refused:
        assert refused.status == 400 and refused.message
        return
    assert re.fullmatch(r"[0-9]{5,20}", resolved.product_id)
    assert resolved.product_id in _digits_of(text.replace("&amp;", "&"))
    assert resolved.platform in (WD, TB, TM, AL)


_hosts = st.sampled_from([h for s in MARKETPLACES + AGENTS for h in s.hosts]
                         + list(SHORT_LINKS) + ["example.com"])
_words = st.sampled_from(["item.html", "item.htm", "offer/", "product/", "?", "&", "=", "#", "/",
                          "itemID", "id", "url", "productLink", "shop_type", "weidian", "1",
                          "%25", "%3D", "%26", "https://", "item-micro-", ".html", "１２３４５"])
_linkish = st.builds(lambda scheme, host, parts: scheme + host + "".join(parts),
                     st.sampled_from(["", "https://", "http://", "//"]), _hosts,
                     st.lists(st.one_of(_words, st.text(max_size=6),
                                        st.from_regex(r"[0-9]{1,22}", fullmatch=True)),
                              max_size=12))


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), _linkish,
                 st.builds(lambda a, link, b: a + link + b, st.text(max_size=20), _linkish,
                           st.text(max_size=20))))
def test_arbitrary_text_is_refused_or_resolves_to_digits_from_the_input(text):
    _check_property(text)
