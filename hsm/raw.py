"""The few PKCS#11 calls python-pkcs11 does not offer, made through the module's function list.

python-pkcs11 has no C_InitToken, and logs in only while opening a session (a failed login there
leaves the new session open, and a second login on an open session is impossible). semper needs
``verify_pin`` to be one C_Login on the signer's own session, and ``semper token init`` to create a
token without putting the SO PIN on a command line (``softhsm2-util --so-pin`` would show it in the
process table). So these calls go through ``C_GetFunctionList`` with ctypes.

Loading the same path with ctypes returns the library python-pkcs11 already opened (the dynamic
loader keeps one copy), so both share the module's state: its initialisation, sessions and logins.
"""
from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, byref, c_char_p, c_ubyte, c_ulong, c_void_p

CKU_SO, CKU_USER, CKU_CONTEXT_SPECIFIC = 0, 1, 2
CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS = 1, 3

# CK_FUNCTION_LIST in the order of the PKCS#11 2.40 header, up to the last entry used here
_FUNCTIONS = ("C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList", "C_GetSlotInfo",
              "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN",
              "C_SetPIN", "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo",
              "C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout")


class _Version(Structure):
    _fields_ = [("major", c_ubyte), ("minor", c_ubyte)]


class _FunctionList(Structure):
    _fields_ = [("version", _Version)] + [(name, c_void_p) for name in _FUNCTIONS]


class _SessionInfo(Structure):
    _fields_ = [("slotID", c_ulong), ("state", c_ulong), ("flags", c_ulong), ("ulDeviceError", c_ulong)]


_InitToken = ctypes.CFUNCTYPE(c_ulong, c_ulong, c_char_p, c_ulong, c_char_p)
_Login = ctypes.CFUNCTYPE(c_ulong, c_ulong, c_ulong, c_char_p, c_ulong)
_Logout = ctypes.CFUNCTYPE(c_ulong, c_ulong)
_GetSessionInfo = ctypes.CFUNCTYPE(c_ulong, c_ulong, POINTER(_SessionInfo))


class RawModule:
    """C_InitToken, C_Login, C_Logout and C_GetSessionInfo of one loaded PKCS#11 library."""

    def __init__(self, path: str) -> None:
        self._dll = ctypes.CDLL(path)
        ptr = POINTER(_FunctionList)()
        rv = self._dll.C_GetFunctionList(byref(ptr))
        if rv != 0 or not ptr:
            raise OSError(f"C_GetFunctionList of {path} returned 0x{rv:X}")
        table = ptr.contents
        self._init_token = _InitToken(table.C_InitToken)
        self._login = _Login(table.C_Login)
        self._logout = _Logout(table.C_Logout)
        self._session_info = _GetSessionInfo(table.C_GetSessionInfo)

    def init_token(self, slot_id: int, so_pin: bytes, label: str) -> int:
        """Return value of C_InitToken; ``label`` is padded with blanks to 32 bytes as PKCS#11 wants."""
        raw_label = label.encode("utf-8").ljust(32, b" ")
        return int(self._init_token(slot_id, so_pin, len(so_pin), raw_label))

    def login(self, session: int, user_type: int, pin: bytes) -> int:
        return int(self._login(session, user_type, pin, len(pin)))

    def logout(self, session: int) -> int:
        return int(self._logout(session))

    def session_state(self, session: int) -> tuple[int, int]:
        """(return value, CKS_ state) of the session."""
        info = _SessionInfo()
        rv = int(self._session_info(session, byref(info)))
        return rv, int(info.state)
