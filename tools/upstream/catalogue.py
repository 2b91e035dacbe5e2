"""The stand-in's product look-ups: a sample product shaped as Doppel's qcMedia answer."""
from __future__ import annotations

from tools.samples import Product


def product_document(product: Product) -> dict:
    """The product as Doppel's qcMedia endpoint shapes it (nested, with distractors)."""
    groups = []
    for n, group in enumerate(product.groups, 1):
        media = [{"image": image_id, "type": "photo", "sort": i}
                 for i, image_id in enumerate(group.images)]
        # Videos carry "image": null; parsers must skip non-string image fields.
        media.append({"image": None, "type": "video",
                      "video": f"https://cdn.doppel.example/v/{product.product_id}-{n}.mp4"})
        groups.append({
            "id": f"{product.product_id}-{n}",
            "agent": group.agent,
            "date": group.date,
            "variant": group.variant,
            "note": "Approved by buyer",
            "media": media,
        })
    return {
        "product": {
            "id": product.product_id,
            "storePlatform": product.platform,
            "title": product.title,
            "price": {"amount": product.price_cny, "currency": "CNY"},
            "url": _listing_url(product),
            # An object under "image": not an id, and must not break a recursive scan.
            "image": {"src": f"https://img.doppel.example/p/{product.product_id}.jpg",
                      "width": 800, "height": 800},
            "imageCount": sum(len(g.images) for g in product.groups),
        },
        "qcGroups": groups,
        "meta": {"source": "doppel", "cached": False, "version": "v1"},
    }


def _listing_url(product: Product) -> str:
    return {
        "WEIDIAN": f"https://weidian.com/item.html?itemID={product.product_id}",
        "TAOBAO": f"https://item.taobao.com/item.htm?id={product.product_id}",
        "1688": f"https://detail.1688.com/offer/{product.product_id}.html",
        "TMALL": f"https://detail.tmall.com/item.htm?id={product.product_id}",
    }[product.platform]
