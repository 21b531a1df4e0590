"""The CA's tables: its settings, the registrations operators made, the certificates it issued.

Standard SQL only (see ``db``). Serial numbers are stored as hex text (they exceed BIGINT), DER as
base64 text, times as ISO 8601 UTC text (which sorts like time).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from ..support.db import Transaction
from ..support.migrations import Schema

_VERSION_1 = (
    """CREATE TABLE IF NOT EXISTS ca_meta (
        name VARCHAR(64) PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS registrations (
        reg_id VARCHAR(64) PRIMARY KEY,
        common_name TEXT NOT NULL,
        email TEXT,
        role VARCHAR(16) NOT NULL,
        hosts TEXT NOT NULL,
        mac_key VARCHAR(64),
        created_at VARCHAR(32) NOT NULL,
        used_at VARCHAR(32),
        serial VARCHAR(64))""",
    """CREATE TABLE IF NOT EXISTS certificates (
        serial VARCHAR(64) PRIMARY KEY,
        reg_id VARCHAR(64),
        common_name TEXT NOT NULL,
        role VARCHAR(16) NOT NULL,
        key_sha256 VARCHAR(64) NOT NULL,
        not_after VARCHAR(32) NOT NULL,
        der_b64 TEXT NOT NULL,
        issued_at VARCHAR(32) NOT NULL,
        revoked_at VARCHAR(32),
        revocation_reason VARCHAR(32))""",
    "CREATE INDEX IF NOT EXISTS certificates_by_key ON certificates (key_sha256)",
    # one row per issued certificate: the TR39 key of its name (client.support.names.key), so a
    # look-alike of any name this CA issued is found with one indexed lookup
    """CREATE TABLE IF NOT EXISTS name_keys (
        serial VARCHAR(64) PRIMARY KEY,
        name_key TEXT NOT NULL,
        common_name TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS name_keys_by_key ON name_keys (name_key)",
)
SCHEMA = Schema.baseline("ca", _VERSION_1)


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- settings ---------------------------------------------------------------------------------
def get_meta(tx: Transaction, name: str) -> str | None:
    row = tx.one("SELECT value FROM ca_meta WHERE name = ?", (name,))
    return row[0] if row else None


def set_meta(tx: Transaction, name: str, value: str) -> None:
    if tx.execute("UPDATE ca_meta SET value = ? WHERE name = ?", (value, name)).rowcount == 0:
        tx.execute("INSERT INTO ca_meta (name, value) VALUES (?, ?)", (name, value))


# ---- registrations ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Registration:
    reg_id: str
    common_name: str
    email: str | None
    role: str
    hosts: tuple[str, ...]
    mac_key: bytes | None
    created_at: str
    used_at: str | None
    serial: str | None


_REG_COLS = "reg_id, common_name, email, role, hosts, mac_key, created_at, used_at, serial"


def _registration(row: tuple[object, ...]) -> Registration:
    reg_id, cn, email, role, hosts, mac, created, used, serial = row
    return Registration(str(reg_id), str(cn), email if email is None else str(email), str(role),
                        tuple(str(hosts).split()), bytes.fromhex(str(mac)) if mac else None, str(created),
                        used if used is None else str(used), serial if serial is None else str(serial))


def insert_registration(tx: Transaction, r: Registration) -> None:
    tx.execute(f"INSERT INTO registrations ({_REG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (r.reg_id, r.common_name, r.email, r.role, " ".join(r.hosts), r.mac_key.hex() if r.mac_key else None,
                r.created_at, r.used_at, r.serial))


def find_registration(tx: Transaction, reg_id: str) -> Registration | None:
    row = tx.one(f"SELECT {_REG_COLS} FROM registrations WHERE reg_id = ?", (reg_id,))
    return _registration(row) if row else None


def list_registrations(tx: Transaction) -> list[Registration]:
    return [_registration(r) for r in tx.all(f"SELECT {_REG_COLS} FROM registrations ORDER BY created_at, reg_id")]


def burn_registration(tx: Transaction, reg_id: str, serial: str, when: str) -> bool:
    """Mark the registration used by ``serial``; False when another request used it first.

    One conditional UPDATE: whichever transaction commits it first wins, on SQLite and PostgreSQL.
    The MAC key is forgotten in the same statement.
    """
    cur = tx.execute("UPDATE registrations SET used_at = ?, serial = ?, mac_key = NULL "
                     "WHERE reg_id = ? AND used_at IS NULL", (when, serial, reg_id))
    return cur.rowcount == 1


# ---- certificates -----------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedCert:
    serial: str
    reg_id: str | None
    common_name: str
    role: str
    key_sha256: str
    not_after: str
    der: bytes
    issued_at: str
    revoked_at: str | None
    revocation_reason: str | None

    @property
    def serial_int(self) -> int:
        return int(self.serial, 16)


_CERT_COLS = ("serial, reg_id, common_name, role, key_sha256, not_after, der_b64, issued_at, revoked_at, "
              "revocation_reason")


def _cert(row: tuple[object, ...]) -> IssuedCert:
    serial, reg_id, cn, role, key, not_after, der, issued, revoked, reason = row
    return IssuedCert(str(serial), reg_id if reg_id is None else str(reg_id), str(cn), str(role), str(key),
                      str(not_after), base64.b64decode(str(der)), str(issued),
                      revoked if revoked is None else str(revoked), reason if reason is None else str(reason))


def insert_certificate(tx: Transaction, c: IssuedCert) -> None:
    tx.execute(f"INSERT INTO certificates ({_CERT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (c.serial, c.reg_id, c.common_name, c.role, c.key_sha256, c.not_after, b64(c.der), c.issued_at,
                c.revoked_at, c.revocation_reason))


def find_certificate(tx: Transaction, serial: str) -> IssuedCert | None:
    row = tx.one(f"SELECT {_CERT_COLS} FROM certificates WHERE serial = ?", (serial,))
    return _cert(row) if row else None


def valid_certificates_for_key(tx: Transaction, key_sha256: str, at: str) -> list[IssuedCert]:
    return [_cert(r) for r in tx.all(
        f"SELECT {_CERT_COLS} FROM certificates WHERE key_sha256 = ? AND revoked_at IS NULL AND not_after > ?",
        (key_sha256, at))]


def list_certificates(tx: Transaction) -> list[IssuedCert]:
    return [_cert(r) for r in tx.all(f"SELECT {_CERT_COLS} FROM certificates ORDER BY issued_at, serial")]


def revoke_certificate(tx: Transaction, serial: str, when: str, reason: str) -> bool:
    cur = tx.execute("UPDATE certificates SET revoked_at = ?, revocation_reason = ? "
                     "WHERE serial = ? AND revoked_at IS NULL", (when, reason, serial))
    return cur.rowcount == 1


def revoked_certificates(tx: Transaction) -> list[IssuedCert]:
    return [_cert(r) for r in tx.all(
        f"SELECT {_CERT_COLS} FROM certificates WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial")]


# ---- names ------------------------------------------------------------------------------------
def insert_name_key(tx: Transaction, serial: str, name_key: str, common_name: str) -> None:
    tx.execute("INSERT INTO name_keys (serial, name_key, common_name) VALUES (?, ?, ?)", (serial, name_key,
                                                                                          common_name))


def confusable_names(tx: Transaction, name_key: str, common_name: str) -> list[str]:
    """Names this CA issued that share ``name_key`` but are not ``common_name`` itself."""
    return [str(r[0]) for r in tx.all("SELECT DISTINCT common_name FROM name_keys WHERE name_key = ? "
                                      "AND common_name <> ? ORDER BY common_name", (name_key, common_name))]


def clear_name_keys(tx: Transaction) -> None:
    tx.execute("DELETE FROM name_keys")
