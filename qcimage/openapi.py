"""Blueprint for the OpenAPI 3 document (built from the schemas and url_map) and /docs.

The operations' parameters, answers and notes are in ``openapi_operations``.
"""

from __future__ import annotations

from importlib.metadata import version

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import (Blueprint, Flask, abort, current_app, render_template, send_from_directory,
                   url_for)
from marshmallow import Schema, fields, validate
from swagger_ui_bundle import swagger_ui_path

from .extensions import limiter, talisman
from .openapi_operations import NOTES, OPERATIONS, RATE_HEADERS, UNDOCUMENTED_ENDPOINTS
from .schemas import ErrorSchema, LinkResponseSchema, ProductResponseSchema

bp = Blueprint("openapi", __name__)
limiter.exempt(bp)
_EXTENSION_KEY = "qcimage.openapi"

# The app-wide policy is default-src 'none'. Swagger UI needs its own scripts and styles,
# fetches the spec (and "try it out" calls) from this origin, and its stylesheet draws
# icons from data: URIs. Nothing else: no inline script, no eval, no third party.
DOCS_CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": ["'self'", "data:"],
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}
# The only Swagger UI files the page loads: the bundle's demo index.html and OAuth page
# (inline scripts, a petstore URL) are not served.
DOCS_ASSETS = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js",
                         "favicon-32x32.png", "favicon-16x16.png"})


class HealthSchema(Schema):
    """What ``GET /health`` answers."""

    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class ReadinessSchema(Schema):
    """What ``GET /health/ready`` answers when the instance may take traffic."""

    status = fields.String(required=True, validate=validate.OneOf(["ready", "degraded"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


def _rule_description(self, field, ret, **kwargs) -> dict:
    # The schemas' human rule doubles as the parameter's description.
    rule = field.metadata.get("rule")
    return {"description": f"`{field.name}` {rule}."} if rule else {}


def _ecma_pattern(self, field, ret, **kwargs) -> dict:
    # Python's end anchor \Z is not ECMA-262 (the dialect OpenAPI patterns use); "$"
    # without the multiline flag means the same there.
    pattern = ret.get("pattern")
    return {"pattern": pattern.replace(r"\Z", "$")} if pattern else {}


def _optional_is_absent(self, field, ret, **kwargs) -> dict:
    # load_default=None means "may be left out", not "may be sent as null": a query
    # string has no null, so neither a null default nor nullable belongs in the spec.
    if field.load_default is None:
        ret.pop("default", None)
        ret.pop("nullable", None)
    return {}


def build_spec(app: Flask) -> dict:
    """The OpenAPI 3 document for the routes ``app`` has, as a plain dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="qcimage", version=version("qcimage"), openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Watermarked, web-ready images from marketplace QC photos. Every "
                             "error (status ≥ 400) has the `Error` JSON shape."},
    )
    for func in (_rule_description, _ecma_pattern, _optional_is_absent):
        plugin.converter.add_attribute_function(func)
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header",
                                               "name": "X-API-Key"})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "The same API key, as a bearer "
                                                              "token."})
    for name, text in RATE_HEADERS.items():
        spec.components.header(name, {"description": text, "required": False,
                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}})
    spec.components.header("Retry-After", {"description": "Seconds to wait before retrying.",
                                           "required": True,
                                           "schema": {"type": "string", "pattern": "^[0-9]+$"}})
    for name, schema in (("Error", ErrorSchema), ("ProductResponse", ProductResponseSchema),
                         ("LinkResponse", LinkResponseSchema),
                         ("Health", HealthSchema), ("Readiness", ReadinessSchema)):
        spec.components.schema(name, schema=schema)
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        operation = OPERATIONS.get(rule.rule)
        if rule.endpoint in UNDOCUMENTED_ENDPOINTS or operation is None:
            continue
        methods = sorted(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
        spec.path(path=rule.rule, operations={method: operation() for method in methods})
    document = spec.to_dict()
    _add_notes(document)
    return document


def _add_notes(document: dict) -> None:
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                note = NOTES.get((path, parameter["name"]))
                if note:
                    parameter["description"] = f"{parameter.get('description', '')} {note}".strip()


def spec_for(app: Flask) -> dict:
    """The app's document, built on first use: by then every blueprint is registered."""
    document = app.extensions.get(_EXTENSION_KEY)
    if document is None:
        document = app.extensions[_EXTENSION_KEY] = build_spec(app)
    return document


@bp.get("/api/openapi.json")
def spec():
    return spec_for(current_app), 200, {"Cache-Control": "public, max-age=300"}


@bp.get("/docs")
@talisman(content_security_policy=DOCS_CSP)
def docs():
    return render_template("docs.html")


@bp.get("/docs/qcimage-docs.js")
@talisman(content_security_policy=DOCS_CSP)
def docs_script():
    body = render_template("docs.js", spec_url=url_for("openapi.spec"))
    return body, 200, {"Content-Type": "text/javascript; charset=utf-8",
                       "Cache-Control": "public, max-age=300"}


@bp.get("/docs/assets/<path:filename>")
@talisman(content_security_policy=DOCS_CSP)
def asset(filename: str):
    if filename not in DOCS_ASSETS:
        abort(404)
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)
