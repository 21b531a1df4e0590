"""Opening a logged-in session on a token."""
from __future__ import annotations

import pkcs11
import pkcs11.exceptions as p11x


def open_user_session(token: pkcs11.Token, pin: bytes, *, rw: bool = False) -> pkcs11.Session:
    """A session logged in as the user. PKCS#11 logins belong to the application, so when another
    session of this process is logged in already, the new session is logged in too."""
    try:
        return token.open(rw=rw, user_pin=pin.decode("utf-8"))
    except p11x.UserAlreadyLoggedIn:
        return token.open(rw=rw)
