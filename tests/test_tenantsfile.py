"""The tenants file: parsing, defaults from the environment, every refusal at once, and the
gunicorn master's checks of it."""

from __future__ import annotations

import textwrap

import pytest
from PIL import Image

from qcimage import create_app
from qcimage.config import ConfigError, hash_api_key, load_settings
from qcimage.tenants import DEFAULT_TENANT, LinkDefaults

KEY_A, KEY_B = "key-of-shop-a-0123456789", "key-of-shop-b-0123456789"
HASH_A, HASH_B = hash_api_key(KEY_A), hash_api_key(KEY_B)


@pytest.fixture
def logo(tmp_path):
    path = tmp_path / "logo.png"
    Image.new("RGBA", (120, 60), (200, 30, 30, 255)).save(path)
    return path


@pytest.fixture
def tenants_env(env, tmp_path):
    """``env`` with a tenants file instead of QCIMAGE_API_KEYS; write(text) sets its text."""
    env = {k: v for k, v in env.items() if k != "QCIMAGE_API_KEYS"}
    path = tmp_path / "tenants.toml"
    env["QCIMAGE_TENANTS_FILE"] = str(path)

    def write(text: str) -> dict:
        path.write_text(textwrap.dedent(text))
        return env
    return write


def problems(env) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    return error.value.problems


def test_without_a_file_the_environment_is_the_default_tenant(env):
    env["QCIMAGE_CORS_ORIGINS"] = "https://shop.example"
    settings = load_settings(env)
    tenants = settings.tenants
    assert list(tenants.by_name) == [DEFAULT_TENANT] and not tenants.from_file
    tenant = tenants.get(None)
    assert tenant.api_keys == settings.api_keys
    assert tenant.watermark == settings.watermark
    assert tenant.cors_origins == ("https://shop.example",)
    assert (tenant.lookup_limit, tenant.image_limit) == (settings.limits.lookup,
                                                         settings.limits.image)
    assert tenant.defaults == LinkDefaults()
    # Links of the environment's tenant carry no t: the ones issued before still verify.
    assert tenants.link_name(tenant) is None


def test_a_tenants_file_gives_each_site_its_own_settings(tenants_env, logo):
    env = tenants_env(f"""
        [tenants.shop-a]
        api_keys = ["{HASH_A}", "rotated:{HASH_B.upper()}"]
        cors_origins = ["https://shop-a.example"]
        referrers = ["shop-a.example", "*.Shop-A.example"]
        lookup_rate_limit = "5 per minute"
        image_rate_limit = "50 per minute"

        [tenants.shop-a.watermark]
        text = "SHOP-A"
        logos = ["{logo}"]
        position = "north_west"
        logo_position = "south_east"
        opacity = 0.5
        margin = 0
        scale = 0.3
        logo_scale = 0.1
        tile = false

        [tenants.shop-a.defaults]
        width = 640
        quality = 70
        format = "jpeg"
        srcset_widths = [1280, 320]
        link_ttl = 3600

        [tenants.shop-b]
        api_keys = ["{hash_api_key('b2')}"]
        """)
    env["QCIMAGE_CORS_ORIGINS"] = "https://everyone.example"
    tenants = load_settings(env).tenants
    assert tenants.from_file and sorted(tenants.by_name) == ["shop-a", "shop-b"]
    a, b = tenants.get("shop-a"), tenants.get("shop-b")
    assert a.api_keys == {HASH_A: "shop-a", HASH_B: "rotated"}
    assert [(layer.text, layer.logo, layer.gravity, layer.scale)
            for layer in a.watermark.layers] == [
        ("SHOP-A", None, "north_west", 0.3), (None, logo, "south_east", 0.1)]
    assert {(layer.opacity, layer.margin, layer.tile)
            for layer in a.watermark.layers} == {(0.5, 0, False)}
    assert a.referrers == ("shop-a.example", "*.shop-a.example")
    assert (a.lookup_limit, a.image_limit) == ("5 per minute", "50 per minute")
    assert a.defaults == LinkDefaults(640, 70, "jpeg", (320, 1280), 3600)
    # Left out: the environment's values.
    assert b.cors_origins == ("https://everyone.example",)
    assert b.lookup_limit == "100 per 15 minutes" and b.defaults == LinkDefaults()
    assert [layer.text for layer in b.watermark.layers] == ["qcimage"]
    assert tenants.cors_origins == ("https://everyone.example", "https://shop-a.example")
    assert tenants.link_name(a) == "shop-a" and tenants.get(None) is None
    assert tenants.resolve_key(KEY_B) == (a, "rotated")
    assert tenants.resolve_key("b2") == (b, "shop-b")
    assert tenants.resolve_key("nobody's") is None


def test_text_left_out_of_a_watermark_table_means_logos_only(tenants_env, logo):
    env = tenants_env(f"""
        [tenants.logo-only]
        api_keys = ["{HASH_A}"]
        watermark = {{ logos = ["{logo}"], position = "center" }}
        """)
    (layer,) = load_settings(env).tenants.get("logo-only").watermark.layers
    assert layer.text is None and layer.logo == logo and layer.gravity == "center"


@pytest.mark.parametrize("body, expected", [
    ('api_keys = ["{a}"]\ncolour = "red"',
     "tenant 'shop-a', field 'colour': unknown field"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", size = 3 }}',
     "tenant 'shop-a', field 'watermark.size': unknown field"),
    ('api_keys = ["{a}"]\ndefaults = {{ widht = 500 }}',
     "tenant 'shop-a', field 'defaults.widht': unknown field"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", position = "top_left" }}',
     "tenant 'shop-a', field 'watermark.position': must be one of north_west"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", logo_position = "middle" }}',
     "tenant 'shop-a', field 'watermark.logo_position': must be one of"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", font = "/no/such/font.ttf" }}',
     "tenant 'shop-a', field 'watermark.font': /no/such/font.ttf is not a readable TrueType"),
    ('api_keys = ["{a}"]\nwatermark = {{ logos = ["/no/such/logo.png"] }}',
     "tenant 'shop-a', field 'watermark.logos': must be a list of readable PNG, JPEG"),
    ('api_keys = ["{a}"]\nwatermark = {{ logos = ["{not_image}"] }}',
     "tenant 'shop-a', field 'watermark.logos': must be a list of readable PNG, JPEG"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", font = "{not_image}" }}',
     "tenant 'shop-a', field 'watermark.font': {not_image} is not a readable TrueType"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", opacity = 1.5 }}',
     "tenant 'shop-a', field 'watermark.opacity': must be from 0.05 to 1.0"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "A", tile = "yes" }}',
     "tenant 'shop-a', field 'watermark.tile': must be true or false"),
    ('api_keys = ["{a}"]\nwatermark = {{ text = "  " }}',
     "tenant 'shop-a', field 'watermark.text': must be non-blank text"),
    ('api_keys = ["{a}"]\nwatermark = {{ logos = [] }}',
     "tenant 'shop-a', field 'watermark': draws nothing"),
    ('api_keys = ["{a}"]\nlookup_rate_limit = "lots"',
     "tenant 'shop-a', field 'lookup_rate_limit': must be a rate like"),
    ('api_keys = ["{a}"]\nimage_rate_limit = 300',
     "tenant 'shop-a', field 'image_rate_limit': must be a rate like"),
    ('api_keys = []', "tenant 'shop-a', field 'api_keys': at least one"),
    ('cors_origins = ["https://a.example"]', "tenant 'shop-a', field 'api_keys': at least one"),
    ('api_keys = ["abc123"]', "tenant 'shop-a', field 'api_keys': entries must be"),
    ('api_keys = ["{a}", "{a}"]', "tenant 'shop-a', field 'api_keys': the same key hash"),
    ('api_keys = ["{a}"]\ncors_origins = ["https://a.example/path"]',
     "tenant 'shop-a', field 'cors_origins': must be a list of origins"),
    ('api_keys = ["{a}"]\nreferrers = ["https://a.example/"]',
     "tenant 'shop-a', field 'referrers': must be a list of host names"),
    ('api_keys = ["{a}"]\ndefaults = {{ width = 5000 }}',
     "tenant 'shop-a', field 'defaults.width': must be from 100 to 2000"),
    ('api_keys = ["{a}"]\ndefaults = {{ format = "gif" }}',
     "tenant 'shop-a', field 'defaults.format': must be one of"),
    ('api_keys = ["{a}"]\ndefaults = {{ srcset_widths = [50] }}',
     "tenant 'shop-a', field 'defaults.srcset_widths': must be a list of integers"),
])
def test_each_invalid_field_is_named_with_its_tenant(tenants_env, tmp_path, body, expected):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("a text file, neither an image nor a font")
    env = tenants_env("[tenants.shop-a]\n" + body.format(a=HASH_A, not_image=not_image) + "\n")
    expected = expected.format(not_image=not_image)
    found = problems(env)
    assert any(expected in problem for problem in found), found
    assert all(problem.startswith(env["QCIMAGE_TENANTS_FILE"] + ": ") for problem in found)


@pytest.mark.parametrize("text, expected", [
    ("[tenants.shop-a\n", "not valid TOML"),
    ("", "defines no tenants"),
    ('[tenant.shop-a]\napi_keys = ["{a}"]\n', "unknown top-level field 'tenant'"),
    ('[tenants.Shop_A]\napi_keys = ["{a}"]\n', "tenant 'Shop_A': the name must match"),
    ('[tenants.shop-a]\napi_keys = ["{a}"]\n[tenants.shop-b]\napi_keys = ["x:{a}"]\n',
     "tenant 'shop-b', field 'api_keys': a key hash also belongs to tenant 'shop-a'"),
])
def test_file_level_problems(tenants_env, text, expected):
    found = problems(tenants_env(text.format(a=HASH_A)))
    assert any(expected in problem for problem in found), found


def test_every_problem_in_the_file_is_listed_at_once(tenants_env):
    env = tenants_env(f"""
        [tenants.shop-a]
        api_keys = ["{HASH_A}"]
        colour = "red"
        watermark = {{ text = "A", position = "top", font = "/missing.ttf" }}

        [tenants.shop-b]
        api_keys = ["{HASH_A}"]
        image_rate_limit = "many"
        """)
    found = "\n".join(problems(env))
    for expected in ("'shop-a', field 'colour'", "'shop-a', field 'watermark.position'",
                     "'shop-a', field 'watermark.font'", "'shop-b', field 'api_keys'",
                     "'shop-b', field 'image_rate_limit'"):
        assert expected in found


@pytest.mark.parametrize("name", ["QCIMAGE_API_KEYS", "QCIMAGE_WATERMARK_TEXT",
                                  "QCIMAGE_WATERMARK_LOGOS", "QCIMAGE_WATERMARK_TILE"])
def test_the_file_refuses_to_mix_with_environment_keys_or_watermark(tenants_env, env, name):
    mixed = tenants_env(f'[tenants.shop-a]\napi_keys = ["{HASH_A}"]\n')
    mixed[name] = env.get(name, "true" if name.endswith("TILE") else "x")
    found = problems(mixed)
    assert any(problem.startswith(f"{name} must be unset when QCIMAGE_TENANTS_FILE is set")
               for problem in found), found


def test_an_unreadable_file_is_named(env, tmp_path):
    env = {k: v for k, v in env.items() if k != "QCIMAGE_API_KEYS"}
    env["QCIMAGE_TENANTS_FILE"] = str(tmp_path / "absent.toml")
    assert problems(env) == [f"QCIMAGE_TENANTS_FILE: cannot read {tmp_path / 'absent.toml'} "
                             "(No such file or directory)"]


def test_an_invalid_file_refuses_to_start_the_app(tenants_env):
    env = tenants_env(f'[tenants.shop-a]\napi_keys = ["{HASH_A}"]\nwatermark = {{ text = 1 }}\n')
    with pytest.raises(ConfigError, match="tenant 'shop-a', field 'watermark.text'"):
        create_app(env)


def test_production_with_a_file_needs_no_api_keys_variable(tenants_env):
    settings = load_settings(tenants_env(f'[tenants.shop-a]\napi_keys = ["{HASH_A}"]\n'))
    assert settings.api_keys == {} and settings.is_production


@pytest.fixture
def master_env(monkeypatch, tenants_env):
    """The gunicorn master's view: the real environment, snapshot unset."""
    def use(text: str) -> None:
        for name, value in tenants_env(text).items():
            monkeypatch.setenv(name, value)
    # Recorded as unset, so what pin_tenants_file() pins is removed after the test.
    monkeypatch.setenv("QCIMAGE_TENANTS_SNAPSHOT", "")
    monkeypatch.delenv("QCIMAGE_TENANTS_SNAPSHOT")
    return use


def test_the_master_refuses_to_start_naming_tenant_and_field(master_env):
    from qcimage import startup_report

    master_env(f'[tenants.shop-a]\napi_keys = ["{HASH_A}"]\nreferrers = ["a b"]\n')
    report = startup_report(workers=1)
    assert report.startswith("qcimage cannot start (QCIMAGE_ENV=production): 1 problem(s)")
    assert "tenant 'shop-a', field 'referrers': must be a list of host names" in report


def test_the_master_pins_a_valid_file_and_keeps_it_when_the_next_is_broken(master_env):
    import os

    from qcimage import pin_tenants_file

    good = f'[tenants.shop-a]\napi_keys = ["{HASH_A}"]\n'
    master_env(good)
    assert pin_tenants_file() == []
    assert os.environ["QCIMAGE_TENANTS_SNAPSHOT"] == good
    master_env(good + "watermark = { position = 'nowhere' }\n")
    problems = pin_tenants_file()
    assert any("field 'watermark.position'" in problem for problem in problems)
    assert os.environ["QCIMAGE_TENANTS_SNAPSHOT"] == good
    # A worker started now reads the pinned text, not the broken file.
    assert list(load_settings(os.environ).tenants.by_name) == ["shop-a"]
