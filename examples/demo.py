"""A short tour of telestion_sync on an embedded nats-server (run it with ``scripts/demo``).

It starts a real nats-server on a free port, then shows publish/subscribe with a callback, a
pull subscription, request/reply (including an error reply), CBOR for binary data, the bus's
counters, and a request over the server's WebSocket port, printing each step. Everything is
plain blocking Python: no asyncio.
"""

from __future__ import annotations

import sys
import threading

import telestion_sync as ts
from telestion_sync.server import NatsServer, free_port


def main() -> int:
    with NatsServer(websocket_port=free_port()) as server:
        print(f"embedded nats-server running at {server.url} (WebSocket {server.websocket_url})")
        # on_error receives what goes wrong in the background (here: the failing handler).
        on_error = lambda err: print(f"  error handler: {err}")  # noqa: E731
        with ts.connect(server.url, name="demo", on_error=on_error) as bus:
            print(f"connected: {bus!r}")

            # 1. Publish/subscribe with a callback (runs on the subscription's own thread).
            received = threading.Event()
            readings = []

            def on_temp(msg: ts.Message) -> None:
                readings.append(msg.data)
                print(f"  callback got {msg.subject}: {msg.data}")
                if len(readings) == 3:
                    received.set()

            bus.subscribe("telemetry.>", on_temp)
            bus.flush()
            print("publishing three JSON readings on telemetry.temp ...")
            for celsius in (21.5, 21.7, 22.0):
                bus.publish("telemetry.temp", {"celsius": celsius})
            received.wait(5)

            # 2. A pull subscription: no callback, take messages when you want them.
            events = bus.subscribe("events.*")
            bus.flush()
            bus.publish("events.door", {"open": True})
            bus.publish("events.light", {"on": False})
            print("pulling from events.* ...")
            for _ in range(2):
                msg = events.next_msg(timeout=1.0)
                print(f"  next_msg -> {msg.subject}: {msg.data}")

            # 3. Request/reply: the handler's return value is the reply.
            bus.reply("svc.add", lambda msg: msg.data["a"] + msg.data["b"])

            def divide(msg: ts.Message) -> float:
                return msg.data["a"] / msg.data["b"]

            bus.reply("svc.divide", divide)
            answer = bus.request("svc.add", {"a": 1, "b": 2}, timeout=2.0)
            print(f"request svc.add 1+2 -> {answer.data}")
            try:
                bus.request("svc.divide", {"a": 1, "b": 0}, timeout=2.0)
            except ts.ServiceError as exc:
                print(f"request svc.divide 1/0 -> ServiceError {exc.code}: {exc.description}")
            try:
                bus.request("svc.nobody", timeout=2.0)
            except ts.NoRespondersError as exc:
                print(f"request svc.nobody -> {exc}")

            # 4. CBOR: binary data inside structures, marked by a Content-Type header.
            images = bus.subscribe("camera.meta")
            bus.flush()
            bus.publish("camera.meta", {"frame": 7, "thumb": b"\x89PNG\r\n"}, codec="cbor")
            msg = images.next_msg(timeout=1.0)
            print(f"CBOR message, Content-Type {msg.headers['Content-Type']!r}: {msg.data}")

            bus.flush()
            stats = bus.stats
            print(
                f"round trip {bus.rtt() * 1e6:.0f} us; sent {stats.out_msgs} msgs, "
                f"received {stats.in_msgs} msgs"
            )
        # 5. The same bus over the server's WebSocket port (what a browser or an HTTP proxy uses).
        with ts.connect(server.websocket_url, name="demo-ws") as ws_bus:
            ws_bus.reply("svc.hello", lambda msg: f"hello {msg.data} over {ws_bus.transport['scheme']}://")
            answer = ws_bus.request("svc.hello", "ground station", timeout=2.0)
            print(f"over {ws_bus.connected_url}: request svc.hello -> {answer.data!r}")
        print("bus closed; stopping the server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
