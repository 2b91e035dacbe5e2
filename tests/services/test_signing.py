"""Signer: canonical form, rotation, expiry."""

from __future__ import annotations

import pytest

from qcimage.services.signing import SignatureExpired, SignatureInvalid, Signer

KEY = "k" * 40
PARAMS = {"url": "n4EYdIoE", "width": "960", "quality": "80", "format": "webp",
          "expires": "2000000000"}


def test_signature_round_trip():
    signer = Signer([KEY], clock=lambda: 1_000_000_000)
    signer.verify(PARAMS, signer.sign(PARAMS))


def test_order_of_parameters_does_not_matter():
    signer = Signer([KEY])
    assert signer.sign(PARAMS) == signer.sign(dict(reversed(list(PARAMS.items()))))


@pytest.mark.parametrize("name, value", [("width", "0960"), ("width", "960 "), ("url", "n4EYdIoe"),
                                         ("format", "WEBP"), ("expires", None), ("quality", "8")])
def test_any_change_of_raw_value_breaks_the_signature(name, value):
    signer = Signer([KEY], clock=lambda: 0)
    sig = signer.sign(PARAMS)
    changed = dict(PARAMS)
    if value is None:
        del changed[name]
    else:
        changed[name] = value
    with pytest.raises(SignatureInvalid):
        signer.verify(changed, sig)


def test_separators_cannot_shift_values_between_fields():
    signer = Signer([KEY])
    a = {"url": "ab", "width": "1"}
    b = {"url": "a", "width": "b1"}
    assert signer.sign(a) != signer.sign(b)


def test_rotation_first_key_signs_all_verify():
    old = Signer(["o" * 40])
    rotated = Signer(["n" * 40, "o" * 40], clock=lambda: 0)
    rotated.verify(PARAMS, old.sign(PARAMS))
    assert rotated.sign(PARAMS) != old.sign(PARAMS)
    with pytest.raises(SignatureInvalid):
        Signer(["n" * 40], clock=lambda: 0).verify(PARAMS, old.sign(PARAMS))


def test_expired_signature_is_reported_as_expired():
    signer = Signer([KEY], clock=lambda: 2_000_000_001)
    with pytest.raises(SignatureExpired):
        signer.verify(PARAMS, signer.sign(PARAMS))


def test_missing_or_junk_signature_is_invalid():
    signer = Signer([KEY])
    for sig in (None, "", "A" * 43, "é" * 20):
        with pytest.raises(SignatureInvalid):
            signer.verify(PARAMS, sig)


def test_expiry_is_rounded_up_to_the_bucket():
    signer = Signer([KEY], clock=lambda: 1_000_000_123)
    assert signer.expiry(3600, 86400) % 86400 == 0
    assert signer.expiry(3600, 86400) >= 1_000_000_123 + 3600
    assert signer.expiry(0, 86400) is None
