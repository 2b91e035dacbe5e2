"""The OpenAPI document stays in step with the routes and schemas; /docs renders from the app."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from flask import Flask
from marshmallow import missing, validate
from openapi_spec_validator import validate as validate_spec

from qcimage import create_app
from qcimage.openapi import UNDOCUMENTED_ENDPOINTS, build_spec
from qcimage.schemas import ImageQuerySchema, LinkQuerySchema, ProductQuerySchema
from qcimage.services.signing import SIGNED_PARAMS, Signer
from qcimage.vocabulary import OUTPUT_FORMATS
from tests.conftest import API_KEY, SIGNING_KEY, add_image, add_product

QUERY_SCHEMAS = {"/api/qc-images": ProductQuerySchema, "/api/image": ImageQuerySchema,
                 "/api/links/resolve": LinkQuerySchema}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def spec(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def _query_parameters(spec: dict, path: str) -> dict[str, dict]:
    return {p["name"]: p for p in spec["paths"][path]["get"]["parameters"] if p["in"] == "query"}


def _documented_routes(app: Flask) -> set[tuple[str, str]]:
    return {(rule.rule, method.lower()) for rule in app.url_map.iter_rules()
            if rule.endpoint not in UNDOCUMENTED_ENDPOINTS
            for method in rule.methods - IGNORED_METHODS}


def test_spec_is_valid_openapi_3(spec):
    validate_spec(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_is_in_the_spec_and_every_operation_is_a_route(app, spec):
    documented = {(path, method) for path, operations in spec["paths"].items()
                  for method in operations}
    assert documented == _documented_routes(app)
    assert {"/api/qc-images", "/api/image", "/health", "/health/ready"} <= set(spec["paths"])


def test_spec_follows_the_url_map_it_is_built_from():
    # /metrics (and any other route) is documented only where the app has it.
    app = Flask(__name__)
    app.add_url_rule("/health", "health", lambda: "")
    assert set(build_spec(app)["paths"]) == {"/health"}


@pytest.mark.parametrize("path", sorted(QUERY_SCHEMAS))
def test_every_schema_field_is_documented_with_its_rules(spec, path):
    schema = QUERY_SCHEMAS[path]()
    parameters = _query_parameters(spec, path)
    assert set(parameters) == {field.data_key or name for name, field in schema.fields.items()}
    for name, field in schema.fields.items():
        parameter = parameters[field.data_key or name]
        documented = parameter["schema"]
        assert parameter["required"] == field.required, name
        default = None if field.load_default is missing else field.load_default
        assert documented.get("default") == default, name
        expected_enum = field.metadata.get("enum")
        for validator in field.validators:
            if isinstance(validator, validate.Range):
                assert (documented["minimum"], documented["maximum"]) == (
                    validator.min, validator.max), name
            elif isinstance(validator, validate.Regexp):
                assert documented["pattern"] == validator.regex.pattern.replace(r"\Z", "$")
            elif isinstance(validator, validate.OneOf):
                expected_enum = list(validator.choices)
            elif isinstance(validator, validate.Length):
                assert documented.get("maxLength") == validator.max, name
        assert documented.get("enum") == expected_enum, name


@pytest.mark.parametrize("path", sorted(QUERY_SCHEMAS))
def test_documented_patterns_match_what_the_schema_accepts(spec, path):
    # The spec says "^...$" (ECMA-262: "$" is the very end), the code "\\Z": a client that
    # validates with the spec must accept and refuse exactly what the server does.
    schema = QUERY_SCHEMAS[path]()
    for name, parameter in _query_parameters(spec, path).items():
        pattern = parameter["schema"].get("pattern")
        if pattern is None:
            continue
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
        example = parameter["schema"]["example"]
        for value in (example, example + "\n", "", "a/b", "a b", "a" * 64, "a" * 65):
            by_spec = re.fullmatch(pattern[1:-1], value) is not None
            by_schema = not schema.validate({**_required(schema), name: value})
            assert by_spec == by_schema, (name, value)


def _required(schema) -> dict[str, str]:
    return {name: field.metadata["example"] for name, field in schema.fields.items()
            if field.required}


def _valid_values(parameter: dict) -> list:
    documented = parameter["schema"]
    if "enum" in documented:
        return list(documented["enum"])
    if documented["type"] == "integer":
        return [documented["minimum"], documented["maximum"]]
    return [documented.get("example", "x")]


def _signed_image_query(**params) -> str:
    values = {"url": "n4EYdIoE", **{k: str(v) for k, v in params.items()}}
    values["sig"] = Signer([SIGNING_KEY]).sign({k: values.get(k) for k in SIGNED_PARAMS})
    return "/api/image?" + urlencode(values)


def test_each_documented_lookup_parameter_value_is_accepted(spec, api_get, upstream):
    for name, parameter in _query_parameters(spec, "/api/qc-images").items():
        for value in _valid_values(parameter):
            # link stands instead of id; its documented example names Weidian 7494645791.
            params = {name: value} if name == "link" else {"id": "7494645791", name: value}
            platform = str(params.get("storePlatform", "WEIDIAN")).upper()
            add_product(upstream, product_id="7494645791", platform=platform)
            response = api_get(**params)
            assert response.status_code == 200, (name, value, response.get_json())


def test_each_documented_image_parameter_value_is_accepted(spec, client, upstream, jpeg_source):
    add_image(upstream, jpeg_source)
    for name, parameter in _query_parameters(spec, "/api/image").items():
        if name in ("url", "sig"):
            continue  # every request below carries both
        for value in _valid_values(parameter):
            # Small renders: bounds matter here, not the encoder's speed at 2000 px.
            params = {"width": 100, name: value} if name != "width" else {name: value}
            response = client.get(_signed_image_query(**params))
            # The lowest documented expiry is valid, and long past: gone, not invalid.
            expected = 410 if name == "expires" and value < time.time() else 200
            if name == "t":  # well formed and signed, but this server has no such site
                expected = 403
                assert response.get_json()["error"] == "unknown_tenant"
            assert response.status_code == expected, (name, value, response.get_json())


def test_only_the_lookups_need_an_api_key(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearer"]["scheme"] == "bearer"
    secured = {path for path, operations in spec["paths"].items()
               for operation in operations.values() if operation.get("security")}
    assert secured == {"/api/qc-images", "/api/links/resolve"}
    for path in secured:
        assert spec["paths"][path]["get"]["security"] == [{"apiKey": []}, {"bearer": []}]
    assert "security" not in spec


def test_every_error_response_has_the_error_shape(spec):
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": "#/components/schemas/Error"}, (path, status)


def test_image_responses_are_documented_with_types_and_headers(spec):
    image = spec["paths"]["/api/image"]["get"]
    ok = image["responses"]["200"]
    assert set(ok["content"]) == set(OUTPUT_FORMATS.values())
    assert {"ETag", "Cache-Control", "Vary"} <= set(ok["headers"])
    assert set(image["responses"]["304"]["headers"]) == {
        "ETag", "Cache-Control", "Vary", "X-Accel-Expires", "CDN-Cache-Control",
        "Surrogate-Control"}
    assert {"X-Accel-Expires", "CDN-Cache-Control", "Surrogate-Control"} <= set(ok["headers"])
    assert "451" in image["responses"]
    assert {"400", "403", "404", "410", "413", "422", "429", "502", "503", "504"} <= set(
        image["responses"])
    assert "sig" in image["description"] and "410" in image["description"]
    assert "If-None-Match" in {p["name"] for p in image["parameters"] if p["in"] == "header"}


def test_lookup_responses_are_documented(spec):
    responses = spec["paths"]["/api/qc-images"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProductResponse"}
    assert {"400", "401", "403", "404", "429", "502", "503", "504"} <= set(responses)


def test_spec_needs_no_key_and_is_not_rate_limited(env):
    client = create_app({**env, "QCIMAGE_LOOKUP_RATE_LIMIT": "1 per hour",
                         "QCIMAGE_IMAGE_RATE_LIMIT": "1 per hour"}).test_client()
    for _ in range(5):
        response = client.get("/api/openapi.json")
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and "src" not in attrs:
            self.inline_scripts += 1
        url = attrs.get("src") or (attrs.get("href") if tag == "link" else None)
        if url:
            self.urls.append(url)


def test_docs_page_loads_only_its_own_assets_under_a_self_only_csp(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = dict(part.strip().split(" ", 1) for part in
               response.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    page = _Assets()
    page.feed(response.get_data(as_text=True))
    assert page.inline_scripts == 0
    assert page.urls
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.data


def test_docs_script_points_swagger_ui_at_this_spec(client):
    script = client.get("/docs/qcimage-docs.js")
    assert script.mimetype == "text/javascript"
    assert '"/api/openapi.json"' in script.get_data(as_text=True)


def test_docs_assets_outside_the_allow_list_are_404(client):
    # The bundle's own index.html has inline scripts and points at a third-party spec.
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/../__init__.py").status_code == 404


def test_api_routes_keep_the_strict_csp(client):
    assert client.get("/api/openapi.json").headers["Content-Security-Policy"].startswith(
        "default-src 'none'")
    response = client.get("/api/qc-images", headers={"X-API-Key": API_KEY})
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_lookup_images_document_their_optional_rendered_size(spec):
    link = spec["components"]["schemas"]["ImageLink"]
    assert link["properties"]["width"]["type"] == "integer"
    assert link["properties"]["height"]["type"] == "integer"
    assert "when a render of it is known" in link["properties"]["width"]["description"]
    assert sorted(link["required"]) == ["original", "srcset", "watermarked"]
