"""Telestion's testbed contract (TESTBED.spec) for Python services built on telestion_sync.

Run it like any Telestion service: the configuration comes from the environment and the CLI
arguments (``--KEY=value``, ``--KEY value``, ``--dev``). ``X_DISABLE_NATS=1`` starts the service
without NATS. The script always exits 0 and prints, as its last stdout line, one JSON object::

    {"started": bool, "nats_api_available": bool, "nats_connected": bool,
     "env": {...}, "config": {...} (only when started), "error": "..." (only on failure)}

``config`` holds every key with a value, each as a string (non-string values from a JSON config
file are JSON-encoded). Library logging goes to stderr, so stdout carries only the result.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _not_started(env: Dict[str, str]) -> Dict[str, Any]:
    """The result before (or without) a started service."""
    return {"started": False, "nats_api_available": False, "nats_connected": False, "env": env}


def run() -> Dict[str, Any]:
    """Start the service as the environment and CLI say, report what happened, close it."""
    env = dict(os.environ)
    nats = env.get("X_DISABLE_NATS") != "1"
    result = _not_started(env)
    try:
        import telestion_sync as ts

        service = ts.start_service(nats=nats, argv=sys.argv[1:], env=env, connect_timeout=1.0)
    except Exception as exc:  # the contract: report the failure, never crash
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    try:
        result["started"] = True
        result["nats_api_available"] = service.nats_enabled
        result["nats_connected"] = service.nats_enabled and service.bus.is_connected
        result["config"] = {k: _as_text(v) for k, v in service.config.items() if v is not None}
    finally:
        service.close()
    return result


def main() -> int:
    try:
        result = run()
    except Exception as exc:  # anything unexpected still ends in one JSON line and exit 0
        result = {**_not_started(dict(os.environ)), "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
