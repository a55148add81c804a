"""The server pool and URL handling: which servers there are and which to try next.

URLs are parsed into :class:`ServerAddr` (credentials percent-decoded, never shown); the pool
holds the given servers and, unless ignored, those a cluster announces in INFO
``connect_urls`` (bounded, and logged into with the credentials of the current URL, as nats.go
does), and rotates through them as nats.go does when reconnecting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union
from urllib.parse import unquote, urlsplit

log = logging.getLogger("telestion_sync.pool")

DEFAULT_PORT = 4222
#: Ports for URLs without one: NATS's for nats:// and tls://; HTTP's for ws:// and wss:// (as
#: nats.go and the browsers' WebSocket do; nats-server's WebSocket port has no default).
DEFAULT_PORTS = {"nats": DEFAULT_PORT, "tls": DEFAULT_PORT, "ws": 80, "wss": 443}
WEBSOCKET_SCHEMES = ("ws", "wss")
#: Servers learned from INFO connect_urls beyond this many are ignored (a hostile peer cannot
#: grow the pool without bound; real clusters are far smaller).
MAX_DISCOVERED_SERVERS = 256


@dataclass(frozen=True)
class ServerAddr:
    """A server URL taken apart; credentials found in the URL are percent-decoded."""

    scheme: str
    host: str
    port: int
    user: Optional[str] = None
    password: Optional[str] = None
    token: Optional[str] = None
    path: str = ""  # ws:// and wss:// only: the HTTP path (and query) of the upgrade request

    @property
    def url(self) -> str:
        """The URL without credentials (safe to log and show)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.path not in ("", "/") else ""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __repr__(self) -> str:  # never show secrets
        return f"ServerAddr({self.url!r})"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def redact_url(url: str) -> str:
    """``url`` with any credentials replaced by ``***`` (for error messages and logs)."""
    scheme, sep, rest = url.rpartition("://") if "://" in url else ("", "", url)
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def parse_server(url: str) -> ServerAddr:
    """Parse ``nats://user:pass@host:port``, ``tls://host``, ``ws://host:port/path``,
    ``wss://host``, ``host:port`` or ``host`` (see :data:`DEFAULT_PORTS`)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"server URL must be a non-empty string, not {type(url).__name__}")
    text = url.strip()
    shown = redact_url(text)
    if "://" not in text:
        text = "nats://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"server URL {shown!r}: scheme must be nats://, tls://, ws:// or wss://, not {scheme}://"
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"server URL {shown!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"server URL {shown!r} has no host")
    user = password = token = None
    if parts.username is not None:
        if parts.password is not None:
            user, password = unquote(parts.username), unquote(parts.password)
        else:
            token = unquote(parts.username)
    path = ""
    if scheme in WEBSOCKET_SCHEMES:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ServerAddr(scheme, host, port, user, password, token, path)


def parse_servers(servers: Union[str, Sequence[str]]) -> List[ServerAddr]:
    """A URL, a comma-separated list of URLs, or a list of them, parsed."""
    if isinstance(servers, str):
        items = [s for s in servers.split(",") if s.strip()]
    else:
        items = list(servers)
    if not items:
        raise ValueError("no server URL given")
    return [parse_server(s) for s in items]


class Server:
    """A pool entry: the address and its reconnect bookkeeping."""

    __slots__ = ("addr", "attempts", "last_attempt", "discovered", "last_auth_error", "speaks_nats")

    def __init__(self, addr: ServerAddr, discovered: bool = False) -> None:
        self.addr = addr
        self.attempts = 0
        self.last_attempt = 0.0
        self.discovered = discovered
        # Known to be a NATS port (it sent INFO, or a cluster announced it): a silent moment on
        # it is a slow server, never a reason for the connection's HTTP probe.
        self.speaks_nats = discovered
        # The server's last refusal since our last successful connect to it (normalized text).
        self.last_auth_error: Optional[str] = None


class ServerPool:
    """The servers to connect to, in the order they are tried (callers hold the connection's
    lock while they change it)."""

    def __init__(
        self, addrs: Sequence[ServerAddr], randomize: bool = True, ignore_discovered: bool = False
    ) -> None:
        self._servers = [Server(a) for a in addrs]
        self._randomize = randomize
        self._ignore_discovered = ignore_discovered
        if randomize:
            random.shuffle(self._servers)

    def __iter__(self) -> Iterator[Server]:
        return iter(list(self._servers))

    def __len__(self) -> int:
        return len(self._servers)

    @property
    def first(self) -> Server:
        return self._servers[0]

    def addrs(self, discovered_only: bool = False) -> List[ServerAddr]:
        return [s.addr for s in self._servers if s.discovered or not discovered_only]

    def has_other(self, srv: Server) -> bool:
        """Whether the pool has a server besides ``srv`` (somewhere to move to)."""
        return any(s is not srv for s in self._servers)

    def rotate(self, current: Optional[Server], max_attempts: int) -> Optional[Server]:
        """nats.go's rotation: the current server goes to the back; servers past their attempt
        limit (``max_attempts`` >= 0) leave the pool. None when the pool is empty."""
        pool = self._servers
        if current is not None and current in pool:
            pool.remove(current)
            pool.append(current)
        if max_attempts >= 0:
            pool[:] = [s for s in pool if s.attempts < max_attempts]
        return pool[0] if pool else None

    def add_discovered(self, info: Dict[str, Any], current: ServerAddr) -> List[str]:
        """Add the servers an INFO announces (``connect_urls``) with ``current``'s scheme and
        credentials; returns the URLs added."""
        if self._ignore_discovered:
            return []
        urls = info.get("connect_urls") or []
        if not isinstance(urls, list):
            return []
        known = {(s.addr.host, s.addr.port) for s in self._servers}
        room = MAX_DISCOVERED_SERVERS - sum(s.discovered for s in self._servers)
        added: List[str] = []
        for hostport in urls:
            try:
                addr = parse_server(f"{current.scheme}://{hostport}")
            except (ValueError, TypeError):
                continue
            if (addr.host, addr.port) in known:
                continue
            if len(added) >= room:
                log.warning("ignoring discovered servers beyond %d", MAX_DISCOVERED_SERVERS)
                break
            known.add((addr.host, addr.port))
            addr = dataclasses.replace(
                addr, user=current.user, password=current.password, token=current.token
            )
            n = len(self._servers)
            self._servers.insert(
                random.randint(0, n) if self._randomize else n, Server(addr, discovered=True)
            )
            added.append(addr.url)
        if added:
            log.debug("discovered servers %s", added)
        return added

    def tls_name(self, srv: Server, tls_hostname: Optional[str]) -> str:
        """The name a server's certificate is checked against: ``tls_hostname`` when given;
        for a discovered server announced by IP address, the host name of a server the user
        gave (as nats.go does), since cluster certificates name hosts, not addresses."""
        if tls_hostname:
            return tls_hostname
        if srv.discovered and is_ip(srv.addr.host):
            for s in self._servers:
                if not s.discovered and not is_ip(s.addr.host):
                    return s.addr.host
        return srv.addr.host


__all__ = [
    "ServerAddr",
    "Server",
    "ServerPool",
    "parse_server",
    "parse_servers",
    "redact_url",
    "DEFAULT_PORT",
    "DEFAULT_PORTS",
    "WEBSOCKET_SCHEMES",
    "MAX_DISCOVERED_SERVERS",
]
