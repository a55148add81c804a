"""Logger: prints a hex dump of every message on ``log.>``.

The Python counterpart of Telestion's sample logger. Configuration (environment, CLI
``--KEY=value``, or ``CONFIG_FILE``):

- ``LOG_SUBJECT``: what to listen to (default ``log.>``)
- ``MAX_MESSAGES``: stop after this many messages (default: run until SIGINT/SIGTERM)

Payloads are shown as raw bytes, whatever their encoding (JSON, CBOR, binary). Try it with::

    python examples/logger.py --dev
    # elsewhere: telestion_sync bus.publish("log.demo", b"hello")
"""

from __future__ import annotations

import sys

import telestion_sync as ts


def hex_dump(data: bytes) -> str:
    """``hexdump -C`` style: offset, 16 bytes in hex, the printable ones as text."""
    if not data:
        return "(empty payload)"
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hex_part = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hex_part:<47}  |{text}|")
    return "\n".join(lines)


def main() -> int:
    service = ts.start_service()
    subject = str(service.config.get("LOG_SUBJECT", "log.>"))
    max_messages = int(service.config.get("MAX_MESSAGES", 0))  # 0: no limit
    count = 0

    def log_message(msg: ts.Message) -> None:
        nonlocal count  # callbacks of one subscription run one at a time, in order
        count += 1
        headers = f" headers {dict(msg.headers)}" if msg.headers else ""
        print(f"{msg.subject}: {len(msg.payload)} bytes{headers}\n{hex_dump(msg.payload)}", flush=True)
        if count == max_messages:
            service.stop()

    service.bus.subscribe(subject, log_message, codec="raw")
    service.bus.flush()  # the server has the subscription now
    print(f"logger {service.service_name}: listening on {subject}", flush=True)
    service.run_forever()  # until SIGINT/SIGTERM or MAX_MESSAGES; then drains and closes the bus
    print("logger stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
