"""Credentials for CONNECT: user/password, token, NKey seed, JWT creds.

Every secret may be a callable returning it, called at each (re)connect, so it can come from a
vault and be rotated. Secrets are resolved only while building the CONNECT frame and never kept
in reprs, exceptions, logs or stats. NKey and JWT logins sign the server's nonce with ``nkeys``.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any, Callable, Dict, Optional, Union

from .errors import AuthenticationError, ConfigError

Secret = Union[str, Callable[[], str], None]

_CREDS_BLOCK = re.compile(r"-{3,}BEGIN ([A-Z ]+)-{3,}\s*\n(.*?)\n\s*-{3,}END \1-{3,}", re.DOTALL)


def _resolve(secret: Secret, what: str) -> Optional[str]:
    if secret is None:
        return None
    value = secret() if callable(secret) else secret
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{what} must be a str (or a callable returning one), not {type(value).__name__}")
    return value


def _looks_like_seed(text: str) -> bool:
    return len(text) >= 50 and text[:1] == "S" and "\n" not in text and "/" not in text


def _describe(value: str) -> str:
    """A value for an error message: a file path is shown, anything else could be a secret."""
    v = value.strip()
    looks_like_path = ("/" in v or v.endswith((".creds", ".nk", ".seed", ".txt"))) and not (
        v.startswith("eyJ") or _looks_like_seed(v) or "-----" in v
    )
    return repr(value) if looks_like_path and len(v) < 1024 else "(value not shown: it may be a secret)"


def _read_file(value: str, problem: str) -> str:
    """The text of the file named by ``value``; ConfigError saying ``problem`` when unreadable."""
    try:
        with open(os.path.expanduser(value.strip())) as f:
            return f.read()
    except OSError as exc:
        reason = exc.strerror
    # Raised outside the except block: the OSError names the file, which may be the secret
    # itself, and must not ride along as __context__.
    raise ConfigError(f"{problem} {_describe(value)}: {reason}")


def load_seed(value: str) -> bytes:
    """An NKey seed given as the seed itself or as the path of a file that holds it."""
    text = value.strip()
    if not _looks_like_seed(text):
        text = _read_file(value, "nkey_seed is neither a seed nor a readable seed file")
        match = re.search(r"\bS[A-Z2-7]{50,}\b", text)
        if match is None:
            raise ConfigError(f"the seed file {_describe(value)} holds no NKey seed")
        text = match.group(0)
    return text.encode()


def parse_creds(value: str) -> tuple[str, bytes]:
    """``(jwt, seed)`` from a ``.creds`` file's text or path (nsc's format)."""
    text = value
    if "-----BEGIN" not in text:
        text = _read_file(value, "creds is neither the text of a .creds file nor a readable file")
    blocks = {name: body.strip() for name, body in _CREDS_BLOCK.findall(text)}
    jwt = next((b for n, b in blocks.items() if "JWT" in n), None)
    seed = next((b for n, b in blocks.items() if "SEED" in n), None)
    if not jwt or not seed:
        raise ConfigError("the creds file holds no user JWT and NKey seed blocks")
    return jwt, seed.encode()


def sign_nonce(seed: bytes, nonce: str) -> tuple[str, str]:
    """``(public_key, signature)`` for the server's nonce, signature as raw base64url."""
    import nkeys  # imported here: only NKey/JWT logins need it

    kind = ""
    try:
        kp = nkeys.from_seed(bytearray(seed))
    except Exception as exc:  # nkeys raises its own ErrInvalidSeed etc.
        kind = type(exc).__name__
    if kind:  # raised here, so the nkeys error (and the seed in it) is not its __context__
        raise AuthenticationError(f"invalid NKey seed: {kind}")
    try:
        sig = kp.sign(nonce.encode())
        return kp.public_key.decode(), base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    finally:
        kp.wipe()


class Credentials:
    """The secrets a connection logs in with; resolved at each connect, shown as ``***``."""

    def __init__(
        self,
        user: Secret = None,
        password: Secret = None,
        token: Secret = None,
        nkey_seed: Secret = None,
        creds: Secret = None,
    ) -> None:
        self._user = user
        self._password = password
        self._token = token
        self._nkey_seed = nkey_seed
        self._creds = creds

    def connect_fields(
        self,
        url_user: Optional[str],
        url_password: Optional[str],
        url_token: Optional[str],
        nonce: Optional[str],
    ) -> Dict[str, Any]:
        """The CONNECT fields that log in: ``user``/``pass``, ``auth_token``, ``nkey``/``jwt``
        and ``sig``. Explicit options win over credentials in the URL."""
        fields: Dict[str, Any] = {}
        creds = _resolve(self._creds, "creds")
        seed_value = _resolve(self._nkey_seed, "nkey_seed")
        if creds is not None:
            jwt, seed = parse_creds(creds)
            fields["jwt"] = jwt
            if nonce is not None:
                fields["sig"] = sign_nonce(seed, nonce)[1]
        elif seed_value is not None:
            seed = load_seed(seed_value)
            if nonce is None:
                raise AuthenticationError("the server sent no nonce to sign; does it expect NKeys?")
            fields["nkey"], fields["sig"] = sign_nonce(seed, nonce)
        user = _resolve(self._user, "user")
        if user is None:
            user = url_user
        if user is not None:
            password = _resolve(self._password, "password")
            fields["user"] = user
            fields["pass"] = password if password is not None else (url_password or "")
        token = _resolve(self._token, "token")
        if token is None:
            token = url_token
        if token is not None:
            fields["auth_token"] = token
        return fields

    def __repr__(self) -> str:
        kinds = [
            k
            for k, v in (
                ("user", self._user),
                ("password", self._password),
                ("token", self._token),
                ("nkey_seed", self._nkey_seed),
                ("creds", self._creds),
            )
            if v is not None
        ]
        return f"<Credentials {', '.join(kinds) or 'none'} (secrets hidden)>"
