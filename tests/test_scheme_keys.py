"""The purse scheme's keys (issue 12, item 3): what an attacker who reads the scheme folder gets.

The scheme folder is made the way an issuer makes it (``semper card new``); the attacker then reads
every file in it, as ``cat`` would, and tries to turn what he read into a working scheme root: a
private key in any file (PEM or DER), or a login to a token in the folder with any word found in
the folder as its PIN. With such a root he issues himself a purse card (his own key, his own load
key), loads it and pays the issuer's real PSAM with it: if the PSAM takes that payment, the
folder gave away the scheme.

Then the scheme on its token: an old folder with PEM keys is refused with what to do, the PIN is
needed and checked, the scheme's token does not end other tokens' logins in the same process, a
copied folder uses its own token, a dead token process is reported, an existing token can hold
the keys.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from semper.client.payment import card_purse
from semper.client.support.personalisation import CardProfile, personalise_purse_card
from semper.client.support.scheme import Scheme
from semper.hardware import errors
from semper.hardware.psam import PsamSession
from semper.hardware.purse import PurseSession
from semper.hardware.simulator import open_card
from semper.hsm.signer import Pkcs11Signer
from semper.hsm.softhsm import SoftHsmStore, provision

SCHEME_PIN = "scheme-pin-5190"
PIN, PUK = b"4321", b"87654321"


def semper(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def issuer_env(tmp_path: Path) -> dict[str, str]:
    """The issuer's environment: its semper folder, and the scheme PIN in a file of its own elsewhere."""
    operator = tmp_path / "operator"
    operator.mkdir(exist_ok=True)
    pin_file = operator / "scheme.pin"
    pin_file.write_text(SCHEME_PIN + "\n")
    pin_file.chmod(0o600)
    return {"SEMPER_HOME": str(tmp_path / "home"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SEMPER_SCHEME_PIN_FILE": str(pin_file), "SEMPER_CARD_KEYS": os.environ["SEMPER_CARD_KEYS"]}


# ---- the attacker ---------------------------------------------------------------------------------
def everything_in(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` and its bytes: what ``cat`` of the folder shows."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_PEM = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


def private_keys_in(files: dict[Path, bytes]) -> list[tuple[str, ec.EllipticCurvePrivateKey]]:
    """Every EC private key a file yields, as PEM anywhere in it or as the whole file in DER."""
    found: list[tuple[str, ec.EllipticCurvePrivateKey]] = []
    for path, data in files.items():
        candidates = [m.group(0) for m in _PEM.finditer(data)]
        keys = []
        for pem in candidates:
            try:
                keys.append(serialization.load_pem_private_key(pem, None))
            except (ValueError, TypeError):
                pass
        try:
            keys.append(serialization.load_der_private_key(data, None))
        except (ValueError, TypeError):
            pass
        found += [(path.name, k) for k in keys if isinstance(k, ec.EllipticCurvePrivateKey)]
    return found


def pin_candidates(files: dict[Path, bytes]) -> list[str]:
    """Every word and line of the folder's text that could be a user or SO PIN (SoftHSM2: 4 to 255 characters)."""
    words: set[str] = set()
    for data in files.values():
        text = data.decode("utf-8", "ignore")
        for piece in re.split(r"[\s\"',:;=]+", text) + text.splitlines():
            piece = piece.strip()
            if 4 <= len(piece) <= 255 and piece.isprintable():
                words.add(piece)
    return sorted(words)[:5000]


_LOGIN = """
import sys
from semper.hardware import errors
from semper.hsm.module import load
from semper.hsm.signer import Pkcs11Signer
conf, candidates = sys.argv[1], sys.stdin.read().splitlines()
for t in load(softhsm_conf=conf).tokens():
    if not t.initialized:
        continue
    token = load(softhsm_conf=conf).token(t.label)
    for pin in candidates:                      # the SO PIN also unlocks SoftHSM2's key files
        try:
            with token.open(rw=True, so_pin=pin):
                print(t.label, "SO", pin)
        except Exception:
            continue
    load(softhsm_conf=conf).reinitialize()      # failed SO logins leave sessions open
    s = Pkcs11Signer(load(softhsm_conf=conf), t.label, b"")
    for pin in candidates:
        try:
            s.verify_pin(pin.encode())
        except errors.HardwareError:
            continue
        print(t.label, pin)
"""


def token_logins(folder: Path, files: dict[Path, bytes]) -> list[str]:
    """Tokens in the folder the attacker can log in to with a PIN read from the folder."""
    confs = [p for p in files if p.name == "softhsm2.conf"]
    out: list[str] = []
    for conf in confs:
        r = subprocess.run([sys.executable, "-c", _LOGIN, str(conf)], input="\n".join(pin_candidates(files)),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out += r.stdout.splitlines()
    return out


@dataclass
class StolenRoot:
    """A scheme root made of a stolen key; the load key of the attacker's card is his own."""

    key: ec.EllipticCurvePrivateKey
    issuer: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @staticmethod
    def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    @property
    def root_point(self) -> bytes:
        return self._point(self.key)

    @property
    def issuer_point(self) -> bytes:
        return self._point(self.issuer)

    def certify(self, point: bytes, common: str, serial: str, role: x509.ObjectIdentifier | None, *,
                non_repudiation: bool = True, key_agreement: bool = False) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                                      x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whoever")]))
             .public_key(public).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30)))
        if role is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([role]), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def verify_card_signature(self, card_cert_der: bytes, record: bytes, signature: bytes) -> None:
        return None                                          # the attacker's own "issuer" asks nothing

    def sign_load(self, command_record: bytes) -> bytes:
        return self.issuer.sign(command_record, ec.ECDSA(hashes.SHA256()))


def forged_card_pays(psam_image: Path, root: StolenRoot, folder: Path) -> bool:
    """A card issued under ``root``, loaded by the attacker, pays the issuer's PSAM: did the PSAM take it?"""
    image = folder / "forged.card"
    image.unlink(missing_ok=True)
    personalise_purse_card(image, root, CardProfile(PIN, PUK, max_balance=20_000), sync=False,
                           issuer_point=root.issuer_point)
    with open_card(image, sync=False) as card, open_card(psam_image, sync=False) as psam_card:
        purse, psam = PurseSession(card), PsamSession(psam_card)
        card_purse.load(purse, root, 20_000, PIN)
        before = psam.info().batch_total
        try:                        # the PSAM itself asked (a seller's payee would refuse the hello before it)
            info = purse.info()
            _, request = psam.begin_debit(info.card_number, info.debit_counter + 1, 15_000, info.currency)
            _, proof = purse.debit(psam.certificate(), request)
            psam.complete_debit(purse.certificate(), proof)
        except Exception:                                     # refused somewhere: the forgery did not work
            return False
        return psam.info().batch_total == before + 15_000


# ---- the attack ----------------------------------------------------------------------------------
def test_reading_the_scheme_folder_gives_no_key_that_issues_cards(tmp_path: Path) -> None:
    env = issuer_env(tmp_path)
    psam_image = tmp_path / "psam.card"
    made = semper(env, "card", "new", "--image", str(psam_image), "--psam")
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "home" / "scheme"
    files = everything_in(folder)
    assert files, "the issuer's scheme folder is empty"

    keys = private_keys_in(files)
    paid = [name for name, key in keys if forged_card_pays(psam_image, StolenRoot(key), tmp_path)]
    assert paid == [], (f"the issuer's PSAM took 150.00 EUR from a card the attacker issued himself with the key "
                        f"read from {', '.join(paid)} in the scheme folder")
    assert keys == [], f"the scheme folder holds private keys in plain form: {[n for n, _ in keys]}"
    logins = token_logins(folder, files)
    assert logins == [], f"a token in the scheme folder opens with a PIN found in the same folder: {logins}"


def test_the_attackers_tools_find_a_pin_left_in_the_folder(tmp_path: Path) -> None:
    """The check above can fail: PINs written next to the token are found, and the CLI refuses to read one there."""
    env = issuer_env(tmp_path)
    made = semper(env, "card", "new", "--image", str(tmp_path / "psam.card"), "--psam")
    assert made.returncode == 0
    so_pin = made.stdout.split("keep it offline): ")[1].split()[0]
    folder = tmp_path / "home" / "scheme"
    (folder / "notes.txt").write_text(f"pin: {SCHEME_PIN}\nso pin: {so_pin}\n")
    assert token_logins(folder, everything_in(folder)) == [f"semper-scheme SO {so_pin}",
                                                          f"semper-scheme {SCHEME_PIN}"]
    inside = semper({**env, "SEMPER_SCHEME_PIN_FILE": str(folder / "notes.txt")},
                    "card", "new", "--image", str(tmp_path / "psam2.card"), "--psam")
    assert inside.returncode == 2 and "inside the scheme folder" in inside.stderr
    assert not (tmp_path / "psam2.card").exists()


# ---- the scheme on its token ---------------------------------------------------------------------
def test_a_folder_with_the_old_pem_keys_is_refused_with_what_to_do(tmp_path: Path) -> None:
    env = issuer_env(tmp_path)
    old = tmp_path / "home" / "scheme"
    old.mkdir(parents=True)
    for name in ("root-key.pem", "root-cert.pem", "issuer-key.pem", "issuer-cert.pem"):
        (old / name).write_text(f"old {name}\n")
    r = semper(env, "card", "new", "--image", str(tmp_path / "psam.card"), "--psam")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "root-key.pem, issuer-key.pem" in r.stderr and f"mv {old} {old}.old" in r.stderr
    assert "issue the old scheme's cards and PSAMs again" in r.stderr
    assert sorted(p.name for p in old.iterdir()) == ["issuer-cert.pem", "issuer-key.pem", "root-cert.pem",
                                                     "root-key.pem"]        # nothing made, nothing removed
    assert not (tmp_path / "psam.card").exists()


def test_the_scheme_is_made_once_and_opens_only_with_its_pin(tmp_path: Path) -> None:
    env = issuer_env(tmp_path)
    short = tmp_path / "short.pin"
    short.write_text("12345678\n")                    # a card PIN: guessed offline from a copy of the folder
    weak = semper({**env, "SEMPER_SCHEME_PIN_FILE": str(short)}, "card", "new", "--image", str(tmp_path / "a.card"),
                  "--psam")
    assert weak.returncode == 2 and "at least 12 characters" in weak.stderr
    assert not (tmp_path / "home" / "scheme").exists() and not (tmp_path / "a.card").exists()
    first = semper(env, "card", "new", "--image", str(tmp_path / "a.card"), "--psam")
    assert first.returncode == 0 and "SO PIN (shown once" in first.stdout
    again = semper(env, "card", "new", "--image", str(tmp_path / "b.card"), "--psam")
    assert again.returncode == 0 and "SO PIN" not in again.stdout
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin\n")
    r = semper({**env, "SEMPER_SCHEME_PIN_FILE": str(wrong)}, "card", "new", "--image", str(tmp_path / "c.card"),
               "--psam")
    assert r.returncode == 1 and "wrong PIN" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c.card").exists()
    with open_card(tmp_path / "a.card", sync=False) as a, open_card(tmp_path / "b.card", sync=False) as b:
        root = x509.load_pem_x509_certificate((tmp_path / "home" / "scheme" / "root-cert.pem").read_bytes())
        for psam in (PsamSession(a), PsamSession(b)):
            x509.load_der_x509_certificate(psam.certificate()).verify_directly_issued_by(root)


def test_the_schemes_token_leaves_other_logins_in_the_process_alone(tmp_path: Path, scheme) -> None:
    """The scheme's token is in a SoftHSM2 folder of its own: using it must not end a bank's login here."""
    store = SoftHsmStore.in_folder(tmp_path / "bank-tokens")
    provision(store, "bank", b"bank-pin-1", b"bank-so-pin-1")
    with Pkcs11Signer.open("bank", softhsm_conf=store.conf) as bank:
        bank.verify_pin(b"bank-pin-1")
        cert = scheme.certify(bank.public_point(), "a bank", "BANK", None)
        scheme.sign_load(b"a load command")
        signature = bank.sign_digest(b"\x01" * 32)                 # still logged in
    cert.verify_directly_issued_by(scheme.root_cert)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"\x01" * 32, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_a_copied_scheme_folder_uses_its_own_token_and_a_dead_agent_is_reported(tmp_path: Path) -> None:
    pin = SCHEME_PIN.encode()
    with Scheme.load_or_create(tmp_path / "scheme", pin) as original:
        root = original.root_cert
    shutil.copytree(tmp_path / "scheme", tmp_path / "copy")
    shutil.rmtree(tmp_path / "scheme")                                # the copy must not need the original
    copy = Scheme.open(tmp_path / "copy", pin)
    assert copy.root_cert == root
    point = ec.generate_private_key(ec.SECP256R1()).public_key()
    copy.certify(point, "x", "X", None).verify_directly_issued_by(root)
    os.kill(copy.root_signer.agent.pid, 9)                           # the agent this test started
    try:
        copy.certify(point, "x", "X", None)
    except errors.TokenError as e:
        assert "ended unexpectedly" in str(e)
    else:
        raise AssertionError("a certificate was made without the token process")
    finally:
        copy.close()


def test_the_scheme_can_use_an_existing_token(tmp_path: Path) -> None:
    store = SoftHsmStore.in_folder(tmp_path / "hsm")
    provision(store, "operator", b"operator-pin", b"operator-so-pin")
    with Scheme.create(tmp_path / "scheme", b"operator-pin", token_label="operator",
                       softhsm_conf=store.conf) as made:
        assert made.so_pin is None and not (tmp_path / "scheme" / "softhsm").exists()
    with Scheme.open(tmp_path / "scheme", b"operator-pin") as opened:
        assert opened.root_cert == made.root_cert
        command = b"LCM1 any load command"
        issuer = opened.issuer_cert.public_key()
        assert isinstance(issuer, ec.EllipticCurvePublicKey)
        issuer.verify(opened.sign_load(command), command, ec.ECDSA(hashes.SHA256()))
