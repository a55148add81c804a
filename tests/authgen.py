"""Test credentials for NATS auth: NKey pairs, hand-signed operator/account/user JWTs, .creds
files and the nats-server config text that accepts them.

Only ``nkeys`` (ed25519 NKeys) and the standard library are used, so the material is independent
of telestion_sync and can be cross-checked with nats-py against a real nats-server.

A NATS JWT is ``b64url(header) "." b64url(claims) "." b64url(sig)`` (base64url without padding),
where ``header`` is ``{"typ":"JWT","alg":"ed25519-nkey"}`` and ``sig`` is the issuer NKey's
ed25519 signature over the first two parts. Claims: ``jti`` (an id: base32 of a hash of the claims
JSON written with an empty ``jti``), ``iat``, ``iss`` (issuer public key), ``sub`` (subject
public key), ``name``, optional ``exp``, and ``nats`` (``type``, ``version: 2`` and the
type-specific fields). Operators sign themselves, accounts are signed by the operator, users by
their account.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import nkeys

from telestion_sync.server import _quote  # nats-server config quoting, one definition

NO_LIMIT = -1

JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}

# Limits spelled out: a missing limit decodes as 0, which nats-server reads as "none allowed".
ACCOUNT_LIMITS: Dict[str, Any] = {
    "subs": NO_LIMIT,
    "data": NO_LIMIT,
    "payload": NO_LIMIT,
    "imports": NO_LIMIT,
    "exports": NO_LIMIT,
    "wildcards": True,
    "conn": NO_LIMIT,
    "leaf": NO_LIMIT,
}
USER_LIMITS: Dict[str, Any] = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT}


# --- NKeys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NKey:
    """An NKey pair: ``seed`` ("SO..."/"SA..."/"SU...") and ``public`` ("O..."/"A..."/"U...")."""

    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(self.seed.encode()).sign(data))


def new_nkey(prefix: int) -> NKey:
    """A fresh random NKey pair of one role (``nkeys.PREFIX_BYTE_USER`` ...)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return NKey(seed=bytes(seed).decode(), public=bytes(kp.public_key).decode())


def new_operator_key() -> NKey:
    return new_nkey(nkeys.PREFIX_BYTE_OPERATOR)


def new_account_key() -> NKey:
    return new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)


def new_user_key() -> NKey:
    return new_nkey(nkeys.PREFIX_BYTE_USER)


# --- JWTs -----------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def claims_id(claims: Dict[str, Any]) -> str:
    """The ``jti``: base32 (no padding) of the SHA-256 of the claims JSON with ``jti`` empty."""
    body = dict(claims, jti="")
    return base64.b32encode(hashlib.sha256(_json(body)).digest()).decode().rstrip("=")


def encode_jwt(claims: Dict[str, Any], issuer: NKey) -> str:
    """Sign ``claims`` (``iss`` and ``jti`` are filled in) with ``issuer``."""
    claims = dict(claims, iss=issuer.public)
    claims["jti"] = claims_id(claims)
    signing_input = b64url(_json(JWT_HEADER)) + "." + b64url(_json(claims))
    return signing_input + "." + b64url(issuer.sign(signing_input.encode()))


def decode_jwt(token: str) -> Dict[str, Any]:
    """The claims of a JWT (the signature is not checked; see :func:`verify_jwt`)."""
    return dict(json.loads(b64url_decode(token.split(".")[1])))


def verify_jwt(token: str) -> bool:
    """Whether the signature matches the ``iss`` public key of the claims."""
    head, body, sig = token.split(".")
    raw = base64.b32decode(decode_jwt(token)["iss"])  # prefix byte, 32-byte key, CRC-16
    verify_key = nkeys.nacl.signing.VerifyKey(raw[1:33])  # PyNaCl, as nkeys itself uses
    try:
        verify_key.verify((head + "." + body).encode(), b64url_decode(sig))
    except nkeys.nacl.exceptions.BadSignatureError:
        return False
    return True


def _claims(
    subject: NKey, name: str, nats: Dict[str, Any], iat: Optional[int], exp: Optional[int]
) -> Dict[str, Any]:
    claims: Dict[str, Any] = {"iat": int(time.time()) if iat is None else iat, "name": name}
    claims["sub"] = subject.public
    if exp is not None:
        claims["exp"] = exp
    claims["nats"] = nats
    return claims


def operator_jwt(operator: NKey, name: str = "test-operator") -> str:
    """A self-signed operator JWT."""
    return encode_jwt(_claims(operator, name, {"type": "operator", "version": 2}, None, None), operator)


def account_jwt(
    account: NKey, operator: NKey, name: str = "test-account", revoked: Sequence[str] = ()
) -> str:
    """An account JWT signed by ``operator``, without limits; ``revoked`` user public keys have
    every JWT issued until now revoked."""
    nats: Dict[str, Any] = {
        "limits": dict(ACCOUNT_LIMITS),
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    }
    if revoked:
        nats["revocations"] = {pub: int(time.time()) + 1 for pub in revoked}
    return encode_jwt(_claims(account, name, nats, None, None), operator)


def _perm(allow: Optional[Sequence[str]], deny: Optional[Sequence[str]]) -> Dict[str, List[str]]:
    perm: Dict[str, List[str]] = {}
    if allow is not None:
        perm["allow"] = list(allow)
    if deny is not None:
        perm["deny"] = list(deny)
    return perm


def user_jwt(
    user: NKey,
    account: NKey,
    name: str = "test-user",
    *,
    pub_allow: Optional[Sequence[str]] = None,
    pub_deny: Optional[Sequence[str]] = None,
    sub_allow: Optional[Sequence[str]] = None,
    sub_deny: Optional[Sequence[str]] = None,
    iat: Optional[int] = None,
    exp: Optional[int] = None,
) -> str:
    """A user JWT signed by ``account``; ``exp`` (unix seconds) makes it expire."""
    nats: Dict[str, Any] = {
        "pub": _perm(pub_allow, pub_deny),
        "sub": _perm(sub_allow, sub_deny),
        **USER_LIMITS,
        "type": "user",
        "version": 2,
    }
    return encode_jwt(_claims(user, name, nats, iat, exp), account)


# --- .creds files ---------------------------------------------------------------------------


def creds_text(jwt: str, seed: str) -> str:
    """A .creds file in the format ``nsc`` writes (user JWT, then user seed)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def write_creds(path: str, jwt: str, seed: str) -> str:
    with open(path, "w") as f:
        f.write(creds_text(jwt, seed))
    os.chmod(path, 0o600)
    return path


def write_seed(path: str, seed: str) -> str:
    with open(path, "w") as f:
        f.write(seed + "\n")
    os.chmod(path, 0o600)
    return path


# --- server configs -------------------------------------------------------------------------


@dataclass
class User:
    """A JWT user: its NKey, its JWT and the text of its .creds file."""

    key: NKey
    jwt: str

    @property
    def seed(self) -> str:
        return self.key.seed

    @property
    def creds(self) -> str:
        return creds_text(self.jwt, self.key.seed)

    def write_creds(self, path: str) -> str:
        return write_creds(path, self.jwt, self.key.seed)


@dataclass
class OperatorSetup:
    """An operator and one account, with the server config for operator mode (MEMORY resolver)."""

    operator: NKey = field(default_factory=new_operator_key)
    account: NKey = field(default_factory=new_account_key)

    def __post_init__(self) -> None:
        self.operator_jwt = operator_jwt(self.operator)
        self.account_jwt = account_jwt(self.account, self.operator)

    def user(self, name: str = "test-user", **options: Any) -> User:
        """A new user of this account (options as for :func:`user_jwt`)."""
        key = new_user_key()
        return User(key, user_jwt(key, self.account, name, **options))

    def foreign_user(self, name: str = "stranger", **options: Any) -> User:
        """A user signed by an account the server does not know."""
        key = new_user_key()
        return User(key, user_jwt(key, new_account_key(), name, **options))

    def config(self) -> str:
        return operator_config(self.operator_jwt, {self.account.public: self.account_jwt})

    def revoke(self, user: User) -> str:
        """Re-sign the account with ``user`` revoked; return the new server config."""
        self.account_jwt = account_jwt(self.account, self.operator, revoked=[user.key.public])
        return self.config()


def operator_config(op_jwt: str, accounts: Dict[str, str]) -> str:
    """nats-server config for operator mode with every account JWT preloaded in memory."""
    preload = "\n".join(f"  {pub}: {_quote(jwt)}" for pub, jwt in accounts.items())
    return f"operator: {_quote(op_jwt)}\nresolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n"


def nkey_config(*public_keys: str) -> str:
    """nats-server config that admits exactly these NKey users."""
    users = ", ".join(f"{{ nkey: {_quote(pub)} }}" for pub in public_keys)
    return f"authorization {{ users = [ {users} ] }}\n"


def token_config(token: str) -> str:
    """nats-server config that requires this token."""
    return f"authorization {{ token: {_quote(token)} }}\n"
