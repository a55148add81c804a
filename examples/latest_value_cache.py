"""Latest-value cache: remembers the last message per subject and answers requests for it.

The Python counterpart of Telestion's sample latest-value cache. Configuration (environment,
CLI ``--KEY=value``, or ``CONFIG_FILE``):

- ``DATA_SUBJECT``: the namespace to cache, ending in ``>`` (default ``data.>``)
- ``REQUEST_SUBJECT``: the namespace to answer on, ending in ``>`` (default ``latest.>``)
- ``MAX_MESSAGES``: stop after answering this many requests (default: run until SIGINT/SIGTERM)

A message on ``data.temp.sensor1`` is stored under the key ``temp.sensor1``; a request on
``latest.temp.sensor1`` is answered with that message's payload and headers unchanged (an empty
reply when nothing was stored yet). Several instances may run with one ``SERVICE_NAME``: each
request goes to one of them (the queue group is the service name). Try it with::

    python examples/latest_value_cache.py --dev
    python examples/publisher.py --dev --DATA_SUBJECT data.random
    python examples/requester.py --dev --REQUEST_SUBJECT latest.random
"""

from __future__ import annotations

import sys
import threading
from typing import Dict, Optional, Tuple

import telestion_sync as ts


def namespace(service: ts.Service, key: str, default: str) -> str:
    subject = str(service.config.get(key, default))
    if subject != ">" and not subject.endswith(".>"):
        service.close()
        raise SystemExit(f"{key} must end in '>' (like 'data.>'), not {subject!r}")
    return subject


def main() -> int:
    service = ts.start_service()
    data_subject = namespace(service, "DATA_SUBJECT", "data.>")
    request_subject = namespace(service, "REQUEST_SUBJECT", "latest.>")
    max_messages = int(service.config.get("MAX_MESSAGES", 0))  # 0: no limit

    store: Dict[str, Tuple[bytes, Optional[Dict[str, str]]]] = {}
    lock = threading.Lock()  # data and requests arrive on different threads
    answered = 0

    def on_data(msg: ts.Message) -> None:
        key = msg.subject[len(data_subject) - 1 :]  # what the ">" matched
        with lock:
            store[key] = (msg.payload, dict(msg.headers) or None)
        print(f"stored {len(msg.payload)} bytes for key {key}", flush=True)

    def on_request(msg: ts.Message) -> None:
        nonlocal answered  # endpoint callbacks run one at a time, in order
        key = msg.subject[len(request_subject) - 1 :]
        with lock:
            payload, headers = store.get(key, (b"", None))
        msg.respond(payload, headers=headers, codec="raw")  # the stored message, unchanged
        answered += 1
        print(f"answered request {answered} for key {key} with {len(payload)} bytes", flush=True)
        if answered == max_messages:
            service.stop()

    service.bus.subscribe(data_subject, on_data, codec="raw")
    service.endpoint(request_subject, on_request, name="latest", codec="raw")
    service.bus.flush()  # the server has both subscriptions now
    print(
        f"latest-value cache {service.service_name}: caching {data_subject}, answering on {request_subject}",
        flush=True,
    )
    service.run_forever()  # until SIGINT/SIGTERM or MAX_MESSAGES; then drains and closes the bus
    print("latest-value cache stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
