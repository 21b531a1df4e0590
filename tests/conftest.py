"""Shared fixtures for the in-process card tests: no pcscd, no network, everything under tmp_path.

Personalising a card runs the whole issuer station over APDUs, so it is done once per session
(``pristine``) and each test gets its own copy of the two images. Images are opened with
``sync=False``: durability against power loss is what the store tests check with explicit
truncation, not with fsync.

Card images are sealed under per-card keys kept outside them (``card_applet_sim/keys.py``). The
whole session, child processes included, shares one key folder (``SEMPER_CARD_KEYS``), so copies of
the pristine images open anywhere, whatever ``SEMPER_HOME`` a test gives a child process.

The cards this session personalises keep their PIN and PUK verifiers at the lowest scrypt cost a card
accepts (N = 2^10 instead of the production 2^14; ``TEST_PIN_KDF_LOG2_N``): a verifier records its own
cost, so these cards verify at that cost wherever they are served, and a suite that verifies PINs
thousands of times (the card state machine) does not spend most of its time in scrypt. What a PIN
guess costs is the test of card_applet_sim's defaults (test_card_image_attacks.py), which personalises
its card at the production cost; cards made by ``semper card new`` in a child process keep it too.

Likewise the RSA keys banks made in this process generate on their tokens (the mint's ten blind-signing
keys and the payment-instruction key of every test bank) are 1024-bit (``TEST_RSA_BITS``) instead of
2048: SoftHSM2 takes about 0.2 s for each 2048-bit pair, some 60 s over the suite. Nothing here depends
on the size (blind signatures and OAEP read it from the key); banks made by ``semper bank init`` in a
child process (the getting-started page, the demos, chaos) keep 2048, and test_conftest_costs.py checks
that the production defaults are unchanged.
"""
from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres import PostgresCluster, Storage, missing_reason

from semper.card_applet_sim import pin as card_pin
from semper.client.support.personalisation import CardProfile, personalise_psam, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import SimulatedCard, open_card
from semper.hsm.rsa import RsaTokenKeys

PIN = b"1234"
PUK = b"12345678"
MAX_BALANCE = 20000
EUR = 978
SCHEME_PIN = b"scheme-pin-2580"      # the scheme tokens' PIN in tests (never written into a scheme folder)
TEST_PIN_KDF_LOG2_N = 10             # scrypt cost of the PIN verifiers of cards made here (the card's lowest)
card_pin.PIN_KDF_LOG2_N = TEST_PIN_KDF_LOG2_N
TEST_RSA_BITS = 1024                 # size of the RSA keys test banks generate on their tokens (production 2048)
_production_rsa_generate = RsaTokenKeys.generate


def _generate_test_size(self: RsaTokenKeys, key_id: bytes, label: str, bits: int = TEST_RSA_BITS) -> Any:
    return _production_rsa_generate(self, key_id, label, bits)


RsaTokenKeys.generate = _generate_test_size        # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def card_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One folder of card sealing keys for the session and every process it starts."""
    folder = tmp_path_factory.mktemp("card-keys")
    before = os.environ.get("SEMPER_CARD_KEYS")
    os.environ["SEMPER_CARD_KEYS"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SEMPER_CARD_KEYS", None)
    else:
        os.environ["SEMPER_CARD_KEYS"] = before


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's own PostgreSQL (tests/postgres.py), started on first use, stopped by pid at the end."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = PostgresCluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """Where the services a test builds keep their data: SQLite unless the test runs under
    ``postgres.storages()``, which runs it once per back end."""
    backend = getattr(request, "param", "sqlite")
    root = tmp_path_factory.mktemp(f"storage-{backend}")
    if backend == "postgresql":
        return Storage(backend, root, request.getfixturevalue("postgres_cluster"))
    return Storage(backend, root)


@pytest.fixture(scope="session")
def scheme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheme]:
    """The purse scheme of the session: one SoftHSM2 token, made once, its agent process kept open."""
    with Scheme.load_or_create(tmp_path_factory.mktemp("scheme") / "scheme", SCHEME_PIN) as s:
        yield s


@pytest.fixture(scope="session")
def other_scheme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheme]:
    """A second, unrelated scheme root: what it certifies must not be accepted by our cards."""
    with Scheme.load_or_create(tmp_path_factory.mktemp("other-scheme") / "scheme", SCHEME_PIN) as s:
        yield s


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory, scheme: Scheme) -> dict[str, Path]:
    """A personalised buyer card and PSAM, never opened by a test (copy them with ``fresh_images``)."""
    d = tmp_path_factory.mktemp("pristine")
    personalise_purse_card(d / "buyer.card", scheme, CardProfile(PIN, PUK, max_balance=MAX_BALANCE), sync=False)
    personalise_psam(d / "psam.card", scheme, sync=False)
    return {"buyer": d / "buyer.card", "psam": d / "psam.card"}


@pytest.fixture(scope="session")
def fresh_images(pristine: dict[str, Path]) -> Callable[[Path], tuple[Path, Path]]:
    """``fresh_images(folder)`` copies the pristine pair into ``folder``: (buyer image, PSAM image).

    Session-scoped so hypothesis tests (which must not use function-scoped fixtures per example)
    can make a fresh pair for every example.
    """
    def make(folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        buyer, psam = folder / "buyer.card", folder / "psam.card"
        shutil.copyfile(pristine["buyer"], buyer)
        shutil.copyfile(pristine["psam"], psam)
        return buyer, psam
    return make


@pytest.fixture
def images(tmp_path: Path, fresh_images: Callable[[Path], tuple[Path, Path]]) -> tuple[Path, Path]:
    return fresh_images(tmp_path / "cards")


@pytest.fixture
def buyer_image(images: tuple[Path, Path]) -> Path:
    return images[0]


@pytest.fixture
def psam_image(images: tuple[Path, Path]) -> Path:
    return images[1]


@pytest.fixture
def open_image() -> Iterator[Callable[[Path], SimulatedCard]]:
    """``open_image(path)`` opens a card image in process; everything opened is closed afterwards."""
    opened: list[SimulatedCard] = []

    def _open(path: Path) -> SimulatedCard:
        card = open_card(path, sync=False)
        opened.append(card)
        return card
    yield _open
    for card in opened:
        card.close()


@pytest.fixture
def buyer_card(buyer_image: Path, open_image: Callable[[Path], SimulatedCard]) -> SimulatedCard:
    return open_image(buyer_image)


@pytest.fixture
def psam_card(psam_image: Path, open_image: Callable[[Path], SimulatedCard]) -> SimulatedCard:
    return open_image(psam_image)


@pytest.fixture
def card_os(buyer_card: SimulatedCard):
    """The buyer card's CardOS object (raw ``transmit``, ``store``, power)."""
    return buyer_card.card


@pytest.fixture
def psam_os(psam_card: SimulatedCard):
    return psam_card.card


@pytest.fixture
def purse(buyer_card: SimulatedCard) -> PurseSession:
    return PurseSession(buyer_card)


@pytest.fixture
def psam(psam_card: SimulatedCard) -> PsamSession:
    return PsamSession(psam_card)


_ECDSA_SHA256 = bytes.fromhex("06082A8648CE3D040302")         # DER of OID 1.2.840.10045.4.3.2


@pytest.fixture(scope="session")
def damaged_certificate() -> Callable[[bytes, str], bytes]:
    """``damaged_certificate(der, how)``: a certificate made unusable in one of a few ways."""
    def damage(cert: bytes, how: str) -> bytes:
        assert cert.count(_ECDSA_SHA256) == 2                 # in tbsCertificate and the outer signatureAlgorithm
        return {
            "unknown signature algorithm": cert.replace(_ECDSA_SHA256, _ECDSA_SHA256[:-1] + b"\x7f"),
            "truncated": cert[:-10],
            "not DER": b"\x30\x03abc",
            "one byte flipped": cert[:100] + bytes([cert[100] ^ 1]) + cert[101:],
        }[how]
    return damage


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped by SIGTERM (``timeout``, a CI job's cancel) ends as one stopped by Ctrl-C: pytest
    then tears the fixtures down, so the PostgreSQL clusters, pcscd and servers the tests started are
    stopped by pid and their folders removed. Without this, SIGTERM ended the process at once and each
    running cluster stayed behind (found 2026-12-07: three clusters left by runs cut by ``timeout``)."""
    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)      # a second SIGTERM ends it at once
        raise KeyboardInterrupt(f"stopped by signal {signum}")
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) each module runs whole on one worker,
    in its order, so its module-scoped worlds are made once and its tests see them as they do in one process.
    Every module with a test that needs pcscd (mark ``pcsc``) goes to one worker, one module after the other:
    pcscd has one socket per machine (/run/pcscd/pcscd.comm), so two at once would only take turns on
    hardware/pcscd.py's machine lock, a wait that counts against each test's timeout. Without xdist the
    marks are inert."""
    needs_pcscd = {item.path for item in items if item.get_closest_marker("pcsc") is not None}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("pcscd" if item.path in needs_pcscd else item.path.name))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The screenshots the browser tests took and what their hostile pages saw (tests/browser.py records
    them in each test's report), so that a plain run shows them."""
    rows = [(r.nodeid, name, value) for reports in terminalreporter.stats.values() for r in reports
            if getattr(r, "when", None) == "call" for name, value in getattr(r, "user_properties", ())
            if name in ("screenshot", "saw")]
    if rows:
        terminalreporter.section("browser tests: screenshots, and what the pages saw")
        for nodeid, name, value in rows:
            terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {name}: {value}")
