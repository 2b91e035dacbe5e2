"""Marshmallow schemas for query strings (requests) and JSON bodies (responses)."""

from __future__ import annotations

import difflib
import re

from marshmallow import (RAISE, Schema, ValidationError, fields, post_load, pre_load, validate,
                         validates_schema)
from werkzeug.datastructures import MultiDict

from .errors import APIError
from .services.signing import SignatureInvalid
from .tenants import TENANT_NAME
from .services.links import MAX_LINK_LENGTH
from .vocabulary import (DEFAULT_WIDTH, FORMAT_ALIASES, IMAGE_ID_PATTERN, MAX_WIDTH, MIN_WIDTH,
                         PLATFORMS, PRODUCT_ID_PATTERN, REQUEST_FORMATS)

# A look-up also takes the aliases, each listed after the format it stands for.
_LOOKUP_FORMATS = tuple(name for fmt in REQUEST_FORMATS for name in
                        (fmt, *(alias for alias, to in FORMAT_ALIASES.items() if to == fmt)))
# Canonical decimal only: "0960", "+960", " 960" and "9.6e2" are refused instead of
# being read as 960, so one output has one URL (and one signature).
_CANONICAL_INT = re.compile(r"^(0|[1-9][0-9]{0,9})\Z")


class CanonicalInteger(fields.Integer):
    """An integer written the one canonical way, within bounds."""

    def __init__(self, lo: int, hi: int, **kwargs):
        self.lo, self.hi = lo, hi
        kwargs.setdefault("metadata", {})["rule"] = f"must be an integer between {lo} and {hi}"
        super().__init__(strict=False, validate=validate.Range(lo, hi), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not _CANONICAL_INT.match(value):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class QuerySchema(Schema):
    """Query-string schema: unknown parameters are errors, repeated ones too."""

    class Meta:
        unknown = RAISE

    @pre_load
    def refuse_repeats(self, data, **kwargs):
        if isinstance(data, MultiDict):
            repeated = sorted(k for k, v in data.lists() if len(v) > 1)
            if repeated:
                raise ValidationError({k: ["Parameter given more than once."] for k in repeated})
            return data.to_dict()
        return data


def _link(**kwargs) -> fields.String:
    return fields.String(
        validate=validate.Length(min=1, max=MAX_LINK_LENGTH),
        metadata={"rule": "must be a store or buying-agent link to the item (at most "
                          f"{MAX_LINK_LENGTH} characters)",
                  "example": "https://weidian.com/item.html?itemID=7494645791"}, **kwargs)


class ProductQuerySchema(QuerySchema):
    id = fields.String(validate=validate.Regexp(PRODUCT_ID_PATTERN),
                       metadata={"rule": "may only contain letters, digits, '_' and '-' "
                                         "(1-50 characters)", "example": "7494645791"})
    link = _link()
    storePlatform = fields.String(
        load_default="WEIDIAN",
        metadata={"rule": "must be one of " + ", ".join(PLATFORMS), "enum": list(PLATFORMS)})
    width = CanonicalInteger(MIN_WIDTH, MAX_WIDTH, load_default=DEFAULT_WIDTH)
    quality = CanonicalInteger(1, 100, load_default=80)
    format = fields.String(
        load_default="webp",
        metadata={"rule": "must be one of " + ", ".join(_LOOKUP_FORMATS),
                  "enum": list(_LOOKUP_FORMATS)})

    @pre_load
    def one_form(self, data, **kwargs):
        # storePlatform has a default, so whether it was sent is only seen here.
        if "link" not in data:
            if "id" not in data:
                raise ValidationError("id or link is required: send id (with storePlatform), "
                                      "or link, the item's store or buying-agent link", "id")
        elif "id" in data:
            raise ValidationError("link replaces id and storePlatform: send one or the "
                                  "other, not both", "link")
        elif "storePlatform" in data:
            raise ValidationError("storePlatform goes with id; a link names its platform "
                                  "itself: send the link alone", "storePlatform")
        return data

    @validates_schema
    def check_choices(self, data, **kwargs):
        errors = {}
        if data["storePlatform"].upper() not in PLATFORMS:
            errors["storePlatform"] = [f"Must be one of: {', '.join(PLATFORMS)}."]
        if data["format"].lower() not in _LOOKUP_FORMATS:
            errors["format"] = [f"Must be one of: {', '.join(_LOOKUP_FORMATS)}."]
        if errors:
            raise ValidationError(errors)

    @post_load
    def normalise(self, data, **kwargs):
        data["storePlatform"] = data["storePlatform"].upper()
        fmt = data["format"].lower()
        data["format"] = FORMAT_ALIASES.get(fmt, fmt)
        return data


class LinkQuerySchema(QuerySchema):
    link = _link(required=True)


class ImageQuerySchema(QuerySchema):
    """The public image URL. Values stay exactly as sent so the signature covers them."""

    @pre_load
    def refuse_repeats(self, data, **kwargs):
        # Two t's name two watermarks: whichever one a reader picked, the link was tampered.
        if isinstance(data, MultiDict) and len(data.getlist("t")) > 1:
            raise SignatureInvalid("the image URL names its site (t) more than once")
        return super().refuse_repeats(data, **kwargs)

    url = fields.String(required=True, validate=validate.Regexp(IMAGE_ID_PATTERN),
                        metadata={"rule": "is an image id: it may only contain letters, "
                                          "digits, '_' and '-' (1-64 characters)",
                                  "example": "n4EYdIoE"})
    width = CanonicalInteger(MIN_WIDTH, MAX_WIDTH, load_default=DEFAULT_WIDTH)
    quality = CanonicalInteger(1, 100, load_default=80)
    format = fields.String(
        load_default="webp", validate=validate.OneOf(REQUEST_FORMATS),
        metadata={"rule": "must be one of " + ", ".join(REQUEST_FORMATS),
                  "enum": list(REQUEST_FORMATS)})
    expires = CanonicalInteger(0, 9_999_999_999, load_default=None)
    t = fields.String(load_default=None, validate=validate.Regexp(TENANT_NAME.pattern),
                      metadata={"rule": "must be the tenant the look-up wrote into the URL",
                                "example": "shop-a"})
    # Any value is checked against the HMAC: a wrong signature is a 403, not a 400.
    sig = fields.String(load_default=None, validate=validate.Length(max=256),
                        metadata={"rule": "must be the signature returned with the URL"})


_HTML_ESCAPED = "amp;"


def _unknown_parameter(name: str, known: list[str]) -> str:
    if name.startswith(_HTML_ESCAPED):
        return (f"{name} is not a known parameter: the link was copied from HTML source, "
                "where & is written &amp;. Replace each &amp; with & (or copy the link "
                "as the look-up's JSON or the page shows it)")
    by_lower = {field.lower(): field for field in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    hint = f"; did you mean {by_lower[close[0]]}?" if close else ""
    return f"{name} is not a known parameter{hint}"


def load_query(schema: Schema, args: MultiDict) -> dict:
    """Validate a query string or raise the 400 that explains the first problem."""
    try:
        return schema.load(args)
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_": error.messages}
        # A link mangled by HTML escaping breaks every parameter: say that, once.
        name = min(messages, key=lambda n: (not n.startswith(_HTML_ESCAPED), n))
        field = schema.fields.get(name)
        if field is None:
            message = _unknown_parameter(name, list(schema.fields))
        elif messages[name] == ["Parameter given more than once."]:
            message = f"{name} given more than once"
        elif messages[name][0].startswith(f"{name} "):
            message = messages[name][0]  # written for people, naming the parameter
        elif messages[name] == [field.error_messages["required"]]:
            message = f"{name} is required"
        else:
            message = f"{name} {field.metadata.get('rule', 'is invalid')}"
        raise APIError(400, "validation_failed", message, details=messages) from None


class ImageLinkSchema(Schema):
    original = fields.String(required=True)
    watermarked = fields.String(required=True)
    srcset = fields.String(required=True)
    # Only once a render at this width showed them: absent, never guessed.
    width = fields.Integer(metadata={
        "description": "pixel width of the `watermarked` image, when a render of it is known"})
    height = fields.Integer(metadata={
        "description": "pixel height of the `watermarked` image, when a render of it is known"})


class ProductResponseSchema(Schema):
    success = fields.Boolean(required=True)
    productId = fields.String(required=True)
    storePlatform = fields.String(required=True)
    totalImages = fields.Integer(required=True)
    truncated = fields.Boolean(required=True, metadata={
        "description": "true when upstream listed more images than QCIMAGE_MAX_PRODUCT_IMAGES "
                       "and only the first ones (upstream order) are in `images`"})
    images = fields.List(fields.Nested(ImageLinkSchema), required=True)


class LinkResponseSchema(Schema):
    success = fields.Boolean(required=True)
    storePlatform = fields.String(required=True)
    productId = fields.String(required=True)


class ErrorSchema(Schema):
    success = fields.Boolean(required=True)
    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()
    requestId = fields.String()
