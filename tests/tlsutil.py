"""TLS fixtures for the tests: trustme certificate authorities and nats-server TLS configs.

A :class:`TLSFiles` holds one trusted CA (server certificate for ``localhost`` and ``127.0.0.1``,
a client certificate, certificates issued only for ``nats.test`` and only for ``localhost``) and a
second, untrusted CA (with its own client certificate), all written as PEM files into one folder.
``TLSFirstServer`` is a ``NatsServer`` for ``handshake_first`` configs (it never sends a plain INFO).
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any, Dict, List, Optional

import trustme

from telestion_sync.server import NatsServer, _quote, free_port

from .conftest import wait_until

ALIAS_HOSTNAME = "nats.test"


class TLSFiles:
    """Certificates of a test module, as trustme objects and as PEM files under ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.ca = trustme.CA(organization_name="telestion-sync tests")
        self.wrong_ca = trustme.CA(organization_name="someone else")
        self.server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.alias = self.ca.issue_cert(ALIAS_HOSTNAME)
        self.localhost = self.ca.issue_cert("localhost")  # a name only, no IP address
        self.client = self.ca.issue_cert("client@telestion.test", common_name="test-client")
        self.wrong_client = self.wrong_ca.issue_cert("intruder@telestion.test", common_name="intruder")

        self.ca_file = self._write("ca.pem", self.ca.cert_pem)
        self.wrong_ca_file = self._write("wrong-ca.pem", self.wrong_ca.cert_pem)
        self.server_cert, self.server_key = self._write_leaf("server", self.server)
        self.alias_cert, self.alias_key = self._write_leaf("alias", self.alias)
        self.localhost_cert, self.localhost_key = self._write_leaf("localhost", self.localhost)
        self.client_cert, self.client_key = self._write_leaf("client", self.client)
        self.wrong_client_cert, self.wrong_client_key = self._write_leaf("wrong-client", self.wrong_client)

    def _write(self, name: str, blob: Any) -> str:
        path = os.path.join(self.folder, name)
        blob.write_to_path(path)
        return path

    def _write_leaf(self, name: str, leaf: trustme.LeafCert) -> tuple[str, str]:
        cert = os.path.join(self.folder, f"{name}-cert.pem")
        for i, pem in enumerate(leaf.cert_chain_pems):
            pem.write_to_path(cert, append=i > 0)
        key = self._write(f"{name}-key.pem", leaf.private_key_pem)
        return cert, key

    # --- nats-server configuration ---------------------------------------------------------------

    def server_config(
        self,
        *,
        verify: bool = False,
        handshake_first: bool = False,
        alias: bool = False,
        localhost_only: bool = False,
        timeout: float = 2.0,
    ) -> str:
        """A nats-server ``tls {}`` block: TLS required; ``verify`` asks for a client certificate
        signed by the trusted CA; ``handshake_first`` wants the TLS handshake before INFO;
        ``alias`` presents the certificate issued only for ``nats.test``, ``localhost_only`` the
        one issued only for ``localhost`` (else: ``localhost`` and ``127.0.0.1``)."""
        if alias:
            cert, key = self.alias_cert, self.alias_key
        elif localhost_only:
            cert, key = self.localhost_cert, self.localhost_key
        else:
            cert, key = self.server_cert, self.server_key
        lines = [f"cert_file: {_quote(cert)}", f"key_file: {_quote(key)}", f"timeout: {timeout}"]
        if verify:
            lines += [f"ca_file: {_quote(self.ca_file)}", "verify: true"]
        if handshake_first:
            lines.append("handshake_first: true")
        return "tls {\n  " + "\n  ".join(lines) + "\n}"

    def nats_server(self, **options: Any) -> NatsServer:
        """A (not yet started) NatsServer with a monitoring port and the TLS config ``options``."""
        kind = TLSFirstServer if options.get("handshake_first") else NatsServer
        server = kind(config=self.server_config(**options), monitor_port=free_port())
        if isinstance(server, TLSFirstServer):
            server.client_context = self.client_context(client_cert=True)
        return server

    # --- client side -------------------------------------------------------------------------------

    def client_context(self, *, client_cert: bool = False) -> ssl.SSLContext:
        """A client SSLContext that trusts the test CA (and presents the client certificate)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        if client_cert:
            self.client.configure_cert(ctx)
        return ctx


def connection_named(srv: NatsServer, name: str, timeout: float = 5.0) -> Dict[str, Any]:
    """The ``connz`` entry of the client that sent ``name`` in its CONNECT (waits for it to be
    listed; fails the test after ``timeout`` seconds)."""
    found: List[Dict[str, Any]] = []

    def listed() -> bool:
        conns: List[Dict[str, Any]] = srv.monitor("connz?auth=true").get("connections") or []
        found[:] = [c for c in conns if c.get("name") == name]
        return bool(found)

    wait_until(listed, timeout, what=f"a connection named {name!r} in connz")
    return found[0]


class TLSFirstServer(NatsServer):
    """A NatsServer whose clients must start with the TLS handshake (``handshake_first``).

    ``NatsServer.start`` waits for a plain ``INFO``, which such a server never sends, so this
    one waits until a TLS handshake succeeds and the ``INFO`` arrives over TLS.
    """

    client_context: Optional[ssl.SSLContext] = None

    def _accepts_clients(self) -> bool:
        assert self.client_context is not None
        with socket.create_connection((self.host, self.port), timeout=0.5) as raw:
            raw.settimeout(0.5)
            with self.client_context.wrap_socket(raw, server_hostname=self.host) as s:
                return s.recv(4).startswith(b"INFO")
