"""``semper token ...`` (PKCS#11 tokens) and ``semper bench sign``.

SoftHSM2 tokens live in a folder with its own ``softhsm2.conf``: ``--dir FOLDER``, else the file
``SOFTHSM2_CONF`` names, else ``$SEMPER_HOME/tokens``. ``--module`` takes any PKCS#11 library;
with OpenSC's the simulated (or a real) card shows up as a token too.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from semper.hardware import errors as hw_errors

from . import UsageError, emit, json_arg, read_secret


def _module(args: argparse.Namespace) -> Any:  # a python-pkcs11 Module, or None (token_module's own type)
    """The module to use, with SoftHSM2 pointed at the right folder; None when that folder is empty."""
    from ..signers import token_module
    return token_module(args.module, Path(args.dir) if args.dir is not None else None)


def _key_id(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raise UsageError(f"--key-id must be hex digits (e.g. 02), not {text!r}") from None


def cmd_init(args: argparse.Namespace) -> int:
    from semper.hsm.softhsm import check_label, check_pin, provision
    try:
        check_label(args.label)
        user_pin = read_secret("new user PIN", args.pin_stdin, confirm=True)
        check_pin(user_pin, "user PIN")
        so_pin = read_secret("new SO PIN (security officer)", args.pin_stdin, confirm=True)
        check_pin(so_pin, "SO PIN")
    except hw_errors.InvalidInputError as e:
        raise UsageError(str(e)) from None
    from ..signers import is_softhsm, softhsm_store
    if not is_softhsm(args.module):
        raise UsageError("'semper token init' creates SoftHSM2 tokens; --module must be a SoftHSM2 library")
    store = softhsm_store(Path(args.dir) if args.dir is not None else None, create=True)
    made = provision(store, args.label, user_pin, so_pin, module=args.module)
    emit(args, {"label": made.label, "serial": made.serial, "key_id": made.key_id.hex(),
                "public_point": made.public_point.hex(), "softhsm2_conf": str(made.store.conf)},
         f"label: {made.label}\nserial: {made.serial}\nkey id: {made.key_id.hex()}\n"
         f"public point: {made.public_point.hex()}\nSOFTHSM2_CONF={made.store.conf}\n"
         f"(other programs see the token with: SOFTHSM2_CONF={made.store.conf} pkcs11-tool --module {made.module} -O)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    module = _module(args)
    if module is None:
        emit(args, [], f"no tokens yet in {Path(args.dir) if args.dir else 'the semper token folder'}; "
                       f"make one with 'semper token init --label LABEL'")
        return 0
    tokens = [t for t in module.tokens() if t.initialized or t.label]
    rows = [{"label": t.label, "serial": t.serial, "manufacturer": t.manufacturer, "model": t.model,
             "state": "PIN blocked" if t.pin_locked else ("PIN: last try" if t.pin_final_try else "ready"),
             "slot": t.slot_description} for t in tokens]

    def text() -> str:
        lines = [f"SOFTHSM2_CONF={module.softhsm_conf}"] if module.is_softhsm else []
        if not rows:
            lines.append(f"no tokens in {module.path}")
        lines += [f"{r['label']!r}  serial {r['serial']}  {r['manufacturer']} {r['model']}  {r['state']}  "
                  f"({r['slot']})" for r in rows]
        return "\n".join(lines)
    emit(args, rows, text)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from semper.hsm import inventory
    module = _module(args)
    if module is None:
        raise hw_errors.TokenError(f"no token labelled {args.label!r}: the token folder does not exist yet; "
                                   f"create it with 'semper token init --label {args.label!r}'")
    info = module.token_info(args.label)
    out: dict[str, object] = {
        "label": info.label, "serial": info.serial, "manufacturer": info.manufacturer, "model": info.model,
        "slot": info.slot_description, "module": module.path, "login_required": info.login_required,
        "pin_blocked": info.pin_locked, "pin_final_try": info.pin_final_try,
        "write_protected": info.write_protected, "objects": []}
    if module.is_softhsm:
        out["softhsm2_conf"] = module.softhsm_conf
    objects = inventory.objects(module, args.label)
    out["objects"] = objects
    if info.login_required and not any(o["kind"] == "private key" for o in objects):
        out["note"] = "private keys show only after login (pkcs11-tool -O --login)"

    def text() -> str:
        flat = {k: v for k, v in out.items() if k != "objects"}
        width = max(len(k) for k in flat)
        lines = [f"{k.replace('_', ' '):>{width}}: {v}" for k, v in flat.items()]
        for o in objects:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in o.items()))
        return "\n".join(lines)
    emit(args, out, text)
    return 0


def cmd_import_cert(args: argparse.Namespace) -> int:
    from semper.hsm.signer import Pkcs11Signer
    try:
        der = Path(args.cert).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {args.cert}: {e.strerror}") from None
    if der.startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        der = x509.load_pem_x509_certificate(der).public_bytes(Encoding.DER)
    module = _module(args)
    if module is None:
        raise hw_errors.TokenError(f"no token labelled {args.label!r}: the token folder does not exist yet")
    with Pkcs11Signer(module, args.label, _key_id(args.key_id)) as signer:
        signer.verify_pin(read_secret(f"PIN of token {args.label}", args.pin_stdin))
        try:
            signer.store_certificate(der)
        except ValueError as e:
            raise UsageError(f"{args.cert} is not an X.509 certificate ({e})") from None
        emit(args, {"label": args.label, "key_id": signer.key_id.hex()},
             f"certificate stored on token {args.label!r} with key id {signer.key_id.hex()}")
    return 0


def register(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    token = sub.add_parser("token", help="PKCS#11 tokens: SoftHSM2 by default, any module with --module")
    tsub = token.add_subparsers(dest="token_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--module", help="PKCS#11 library (default: SoftHSM2, /usr/lib/softhsm/libsofthsm2.so)")
        p.add_argument("--dir", type=Path, help="SoftHSM2 token folder (default: SOFTHSM2_CONF, else "
                                                "$SEMPER_HOME/tokens)")

    p = tsub.add_parser("init", help="create a SoftHSM2 token with an EC P-256 key pair made on it")
    p.add_argument("--label", required=True)
    common(p)
    p.add_argument("--pin-stdin", action="store_true", help="read the user PIN, then the SO PIN, one per line")
    json_arg(p)
    p.set_defaults(fn=cmd_init)

    p = tsub.add_parser("list", help="the tokens a module shows")
    common(p)
    json_arg(p)
    p.set_defaults(fn=cmd_list)

    p = tsub.add_parser("info", help="one token: flags, keys and certificates (JSON)")
    p.add_argument("--label", required=True)
    common(p)
    json_arg(p)
    p.set_defaults(fn=cmd_info)

    p = tsub.add_parser("import-cert", help="store the certificate of the token's key on the token")
    p.add_argument("--label", required=True)
    p.add_argument("--cert", required=True, help="X.509 certificate file (DER or PEM)")
    p.add_argument("--key-id", help="CKA_ID in hex when the token holds several keys")
    common(p)
    p.add_argument("--pin-stdin", action="store_true")
    json_arg(p)
    p.set_defaults(fn=cmd_import_cert)
