"""Requester: sends a request to ``REQUEST_SUBJECT`` every ``FREQUENCY`` seconds, prints the reply.

The Python counterpart of Telestion's sample requester. Configuration (environment, CLI
``--KEY=value``, or ``CONFIG_FILE``):

- ``REQUEST_SUBJECT``: where to send the (empty) requests (default ``latest.random``, which the
  latest-value cache answers with what the publisher last sent on ``data.random``)
- ``OUTPUT_SUBJECT``: optional; each reply is forwarded there unchanged
- ``FREQUENCY``: seconds between requests (default ``1``); ``TIMEOUT``: seconds to wait for a
  reply (default ``2``)
- ``MAX_MESSAGES``: stop after this many requests (default: run until SIGINT/SIGTERM)

Try it with::

    python examples/requester.py --dev --REQUEST_SUBJECT latest.random
"""

from __future__ import annotations

import sys
import threading

import telestion_sync as ts


def main() -> int:
    service = ts.start_service()
    subject = str(service.config.get("REQUEST_SUBJECT", "latest.random"))
    output = service.config.get("OUTPUT_SUBJECT")
    frequency = float(service.config.get("FREQUENCY", 1.0))
    timeout = float(service.config.get("TIMEOUT", 2.0))
    max_messages = int(service.config.get("MAX_MESSAGES", 0))  # 0: no limit
    print(f"requester {service.service_name}: requesting {subject} every {frequency} s", flush=True)

    done = threading.Event()

    def request_loop() -> None:
        sent = 0
        while not done.wait(frequency):
            sent += 1
            try:
                reply = service.bus.request(subject, timeout=timeout)
            except ts.ConnectionClosedError:
                return  # the service is shutting down
            except (ts.TimeoutError, ts.NoRespondersError, ts.ServiceError) as exc:
                print(f"request {sent} to {subject} failed: {type(exc).__name__}: {exc}", flush=True)
            else:
                print(f"reply {sent} from {subject}: {reply.data!r}", flush=True)
                if output:
                    service.bus.publish(str(output), reply.payload, headers=reply.headers or None)
                    print(f"forwarded reply {sent} to {output}", flush=True)
            if sent == max_messages:
                service.stop()
                return

    worker = threading.Thread(target=request_loop, name="requester", daemon=True)
    worker.start()
    service.run_forever()  # until SIGINT/SIGTERM or MAX_MESSAGES; then drains and closes the bus
    done.set()
    worker.join()
    print("requester stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
