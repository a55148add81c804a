"""Publisher: a random value and an ISO timestamp on ``DATA_SUBJECT`` every ``FREQUENCY`` seconds.

The Python counterpart of Telestion's sample publisher. Configuration (environment, CLI
``--KEY=value``, or ``CONFIG_FILE``):

- ``DATA_SUBJECT``: where to publish (default ``data.random``)
- ``FREQUENCY``: seconds between messages (default ``1``; Telestion's Deno sample counts
  milliseconds instead)
- ``MAX_MESSAGES``: stop after this many messages (default: run until SIGINT/SIGTERM)

Each message is JSON: ``{"value": 0.42, "time": "2024-05-01T12:00:00.000Z"}``. Try it with::

    python examples/publisher.py --dev --DATA_SUBJECT=data.random --FREQUENCY 0.5
"""

from __future__ import annotations

import datetime
import random
import sys
import threading

import telestion_sync as ts


def iso_now() -> str:
    """The current UTC time as JavaScript's ``toISOString()`` writes it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def main() -> int:
    service = ts.start_service()
    subject = str(service.config.get("DATA_SUBJECT", "data.random"))
    frequency = float(service.config.get("FREQUENCY", 1.0))
    max_messages = int(service.config.get("MAX_MESSAGES", 0))  # 0: no limit
    if frequency <= 0:
        service.close()
        raise SystemExit(f"FREQUENCY must be a positive number of seconds, not {frequency}")
    print(f"publisher {service.service_name}: publishing on {subject} every {frequency} s", flush=True)

    done = threading.Event()

    def publish_loop() -> None:
        sent = 0
        while not done.wait(frequency):
            value = {"value": random.random(), "time": iso_now()}
            try:
                service.bus.publish(subject, value)
            except ts.ConnectionClosedError:
                return  # the service is shutting down
            sent += 1
            print(f"published {value} to {subject}", flush=True)
            if sent == max_messages:
                service.stop()
                return

    worker = threading.Thread(target=publish_loop, name="publisher", daemon=True)
    worker.start()
    service.run_forever()  # until SIGINT/SIGTERM or MAX_MESSAGES; then drains and closes the bus
    done.set()
    worker.join()
    print("publisher stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
