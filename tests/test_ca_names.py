"""Look-alike names at the CA (issue 12, item 9), over its HTTPS registration path.

A certificate's common name is what the TINGUIN shows as "the seller, as named by its certificate";
a name that looks like another seller's (Cyrillic letters, blank-looking letters, full-width digits,
a different case) must not be certified, or the TINGUIN would show the impostor as verified.
"""
from __future__ import annotations

from typing import Any

import pytest
from test_ca_support import (
    RunningCa,
    SoftwareSigner,
    request_body,
    running_ca,
    tokens,
)

from semper.client.support.channels import ServiceError

SELLER = "Teapot Shop"


def _auth(rc: RunningCa) -> dict[str, str]:
    return {"Authorization": f"Bearer {rc.admin}"}


def _certify(rc: RunningCa, name: str, email: str) -> dict[str, Any]:
    """What an impostor asks of the CA: the operator's registration, then the client's request."""
    client = rc.client()
    made = client.post("/admin/persons", {"name": name, "email": email, "role": "seller"}, _auth(rc))
    return client.post("/register", request_body(SoftwareSigner(), made["registration_key"], name=name, email=email))


def _names(rc: RunningCa) -> list[str]:
    return [c["name"] for c in rc.issued()]


def test_a_cyrillic_look_alike_of_a_certified_seller_is_not_certified(running_ca: RunningCa) -> None:
    _certify(running_ca, SELLER, "sales@teapot.example")
    fake = "Teapot Sh\u043ep"                                    # U+043E CYRILLIC SMALL LETTER O
    with pytest.raises(ServiceError) as e:
        _certify(running_ca, fake, "sales@teap0t.example")
    assert fake not in _names(running_ca), "the CA certified a Cyrillic look-alike of a seller it certified"
    assert e.value.status == 400 and e.value.code == "bad_name"
    assert "U+043E CYRILLIC SMALL LETTER O" in str(e.value)


@pytest.mark.parametrize("fake, named", [
    ("Teapot\u3164Shop", "U+3164 HANGUL FILLER"),
    ("Teapot\uffa0Shop", "U+FFA0 HALFWIDTH HANGUL FILLER"),
    ("Teapot\u2800Shop", "U+2800 BRAILLE PATTERN BLANK"),
    ("Teapot Shop \uff11", "U+FF11 FULLWIDTH DIGIT ONE"),
    ("\u0422eapot Shop", "U+0422 CYRILLIC CAPITAL LETTER TE"),
])
def test_blank_looking_full_width_and_mixed_script_names_are_refused(running_ca: RunningCa, fake: str,
                                                                    named: str) -> None:
    with pytest.raises(ServiceError) as e:
        _certify(running_ca, fake, "x@example.org")
    assert (e.value.status, e.value.code) == (400, "bad_name") and named in str(e.value)
    assert _names(running_ca) == []


@pytest.mark.parametrize("fake", ["\u0405\u04bb\u043e\u0440", "SH0P", "shop", "SHOP"])
def test_a_name_confusable_with_one_issued_to_another_subject_is_refused(running_ca: RunningCa, fake: str) -> None:
    _certify(running_ca, "Shop", "shop@example.org")
    with pytest.raises(ServiceError) as e:
        _certify(running_ca, fake, "other@example.org")
    assert (e.value.status, e.value.code) == (409, "name_confusable") and "'Shop'" in str(e.value)
    assert _names(running_ca) == ["Shop"]


def test_registrations_made_side_by_side_are_checked_again_when_issued(running_ca: RunningCa) -> None:
    client = running_ca.client()
    keys = [client.post("/admin/persons", {"name": n, "email": e, "role": "seller"}, _auth(running_ca))
            ["registration_key"] for n, e in (("Alice Example", "a@example.org"), ("AIice Example", "b@example.org"))]
    client.post("/register", request_body(SoftwareSigner(), keys[0], name="Alice Example", email="a@example.org"))
    with pytest.raises(ServiceError) as e:
        client.post("/register", request_body(SoftwareSigner(), keys[1], name="AIice Example", email="b@example.org"))
    assert (e.value.status, e.value.code) == (409, "name_confusable")
    assert _names(running_ca) == ["Alice Example"]


def test_the_same_name_again_and_ordinary_names_are_still_certified(running_ca: RunningCa) -> None:
    for name, email in ((SELLER, "sales@teapot.example"), (SELLER, "sales@teapot.example"),
                        ("M\u00fcller & S\u00f6hne GmbH", "m@example.de"), ("O'Brien-Smith Ltd.", "o@example.ie"),
                        ("\u0422\u0435\u0430 \u0425\u0430\u0443\u0441", "tea@example.ru"),
                        ("\u5c71\u7530\u592a\u90ce \u3084\u307e\u3060", "y@example.jp"), ("Shop 24", "s@example.org")):
        _certify(running_ca, name, email)
    assert len(_names(running_ca)) == 7


def test_a_database_from_before_the_rule_gets_its_names_keyed(running_ca: RunningCa) -> None:
    from semper.client.servers import ca_store
    from semper.client.servers.ca import CaRefusal, CertificationAuthority
    _certify(running_ca, "Shop", "shop@example.org")
    with running_ca.ca.db.transaction() as tx:                    # as an older CA left its database
        ca_store.clear_name_keys(tx)
        tx.execute("DELETE FROM ca_meta WHERE name = ?", ("name_keys_data",))
    reopened = CertificationAuthority(running_ca.ca.db, running_ca.ca.signer)
    with pytest.raises(CaRefusal) as e:
        reopened.add_person("SH0P", email="x@example.org", role="seller")
    assert e.value.code == "name_confusable"
