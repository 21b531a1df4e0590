"""``semper judge`` as a command, on the exported bundles of fault cases; tampered and foreign evidence."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from test_exchange_faults import exchange_with_fault, fault_for
from test_exchange_support import REPO, World, world

from semper.client.exchange.judge import judge
from semper.client.payment.item import item_verifiers


def semper_judge(world: World, bundle: Path, tmp_path: Path, ca: str | None = None) -> tuple[int, dict[str, Any], str]:
    ca_file = tmp_path / "judge-ca.pem"
    ca_file.write_text(ca or world.root_pem)
    purse = tmp_path / "purse-root.pem"
    from cryptography.hazmat.primitives.serialization import Encoding
    purse.write_bytes(world.purse_root.public_bytes(Encoding.PEM))
    r = subprocess.run([sys.executable, "-m", "semper.client.cli", "judge", str(bundle), "--ca", str(ca_file),
                        "--purse-root", str(purse), "--json"], cwd=REPO, capture_output=True, text=True, timeout=60,
                       check=False,
                       env={**os.environ, "SEMPER_HOME": str(tmp_path / "home")})
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def test_the_judge_rules_on_a_resolved_and_on_a_false_commitment_case(world: World, tmp_path: Path,
                                                                      fresh_images: Any) -> None:
    resolved = exchange_with_fault(world, tmp_path / "a", fresh_images, "gen-ver", dishonest="originator",
                                   stop_before="item")
    code, ruling, err = semper_judge(world, resolved["bundle"], tmp_path)
    assert code == 0, err
    assert ruling["bundle"]["ok"] and ruling["exchange"]["protocol"] == "gen-ver"
    assert ruling["originator"]["fulfilled"] and ruling["originator"]["how"] == "by the third party's replacement"
    assert ruling["responder"]["fulfilled"] and ruling["fair"]
    assert [d["outcome"] for d in ruling["third_party"]] == ["resolved"]
    # the seller's own bundle (it stopped before its item) shows the buyer's valid payment too
    from semper.client.support.archive import Archive
    with Archive.open(resolved["seller"].archive.path, sign=world.identities["seller"].sign) as a:
        own = a.export(resolved["originator"].xid, tmp_path / "seller.zip")
    code, ruling, err = semper_judge(world, own, tmp_path)
    assert code == 0 and ruling["bundle"]["ok"] and ruling["responder"]["fulfilled"], err
    lying = exchange_with_fault(world, tmp_path / "b", fresh_images, "gen-ver", dishonest="originator",
                                stop_before="item", offer_hook=_lie)
    code, ruling, err = semper_judge(world, lying["bundle"], tmp_path)
    assert code == 0, err
    assert ruling["responder"]["fulfilled"] and not ruling["originator"]["fulfilled"] and not ruling["fair"]
    assert ruling["originator"]["how"] == "commitment false" and "originator owes" in ruling["ruling"]


def _lie(deal: Any) -> Any:
    """The seller's offer with an escrowed key that does not open its report."""
    from semper.client.transfer.escrow import seal
    from semper.client.transfer.information import InformationOffer
    from semper.client.transfer.managers import PackageOffer

    class Lying(InformationOffer):
        def commit(self, d: Any, b: Any, escrow: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            c, a = super().commit(d, b, escrow)
            c["escrow"] = seal(escrow.point, os.urandom(32), b.xid, c["ciphertext_sha256"])
            return c, a
    info, receipt = deal.offer.members
    deal.offer = PackageOffer((Lying(info.data, "report.bin"), receipt), deal.offer.label)
    return deal


def test_the_judge_sees_a_plain_dispute_and_a_revocation(world: World, tmp_path: Path, fresh_images: Any) -> None:
    _stop, tamper = fault_for(world, "plain", "accept", "forged", None)
    plain = exchange_with_fault(world, tmp_path / "p", fresh_images, "plain", dishonest="responder", tamper=tamper)
    code, ruling, err = semper_judge(world, plain["bundle"], tmp_path)
    assert code == 0, err
    assert ruling["originator"]["fulfilled"] and not ruling["responder"]["fulfilled"] and not ruling["fair"]
    assert any("forged or altered" in r for r in ruling["responder"]["reasons"])
    revoked = exchange_with_fault(world, tmp_path / "r", fresh_images, "rev-rev", dishonest="originator",
                                  stop_before="item")
    code, ruling, err = semper_judge(world, revoked["bundle"], tmp_path)
    assert code == 0 and ruling["fair"] and ruling["originator"]["how"] == ruling["responder"]["how"] == "revoked"


def test_tampered_or_foreign_evidence_counts_for_nothing(world: World, tmp_path: Path, fresh_images: Any) -> None:
    res = exchange_with_fault(world, tmp_path / "a", fresh_images, "gen-ver", dishonest="originator",
                              stop_before="item")
    bundle: Path = res["bundle"]
    # the buyer edits its archive export: drops the third party's decision from an entry's content
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(edited, "w") as dst:
        manifest = json.loads(src.read("manifest.json"))
        decision_files = {e["file"] for e in manifest["entries"] if e["kind"] == "statement:decision"}
        for info in src.infolist():
            data = src.read(info)
            if info.filename in decision_files:
                data = data[:-40] + bytes(40)
            dst.writestr(info, data)
    ruling = judge(edited, world.trust, item_verifiers(purse_root=world.purse_root))
    assert not ruling.bundle_ok and any("altered" in p for p in ruling.bundle_problems)
    # without a valid decision, the buyer's case rests on its payment: the seller's item is not shown
    assert ruling.responder.fulfilled and not ruling.originator.fulfilled and not ruling.fair
    # a judge who trusts another CA finds no evidence at all here
    code, ruling, err = semper_judge(world, bundle, tmp_path, ca=_foreign_root_pem())
    assert code == 1, err                       # a bundle that is not ok is not a settled ruling (issue 17)
    assert not ruling["bundle"]["ok"] and ruling["exchange"]["xid"] is None
    assert "no valid signed proposal" in ruling["ruling"]
    # not a bundle at all: one line, exit status 1
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    code, ruling, err = semper_judge(world, tmp_path / "junk.zip", tmp_path)
    assert code == 1 and err.startswith("semper: ") and len(err.strip().splitlines()) == 1


def _foreign_root_pem() -> str:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM).decode()
