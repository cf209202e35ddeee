"""Unit tests for tensorwasm_gateway.access.proxies: whose x-forwarded-for is believed."""

from __future__ import annotations

import pytest
from tensorwasm_gateway.access.proxies import FACE_PROOF_KEY, NO_PROXIES, TrustedProxies


def test_configured_networks_are_trusted_and_others_not() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    assert proxies.forwards("10.1.2.3", ())
    assert proxies.forwards("[::1]", ())
    assert not proxies.forwards("192.168.0.1", ())
    assert not NO_PROXIES.forwards("127.0.0.1", ())


def test_the_http_face_is_trusted_by_its_proof_only() -> None:
    proxies = TrustedProxies(face_secret="s3cret-of-this-process")
    assert proxies  # something is trusted
    assert proxies.forwards("127.0.0.1", ((FACE_PROOF_KEY, "s3cret-of-this-process"),))
    assert not proxies.forwards("127.0.0.1", ((FACE_PROOF_KEY, "guessed"),))
    assert not proxies.forwards("127.0.0.1", ())
    # Without a secret, no proof is accepted, not even an empty one.
    assert not NO_PROXIES.forwards("127.0.0.1", ((FACE_PROOF_KEY, ""),))


def test_a_spec_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError):
        TrustedProxies(["proxy.example"])
