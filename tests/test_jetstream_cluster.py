"""JetStream across clients and servers: a three-node cluster losing its stream leader, and
interop with nats-py's JetStream API on the same server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Dict, List

import pytest

import telestion_sync as ts
from telestion_sync.server import NatsCluster, NatsServer

from .conftest import wait_until


def _ready(js: ts.JetStream, timeout: float = 20) -> None:
    """Wait until the cluster's JetStream meta leader answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            js.account_info(timeout=1)
            return
        except ts.Error:
            assert time.monotonic() < deadline, "JetStream meta leader not elected"
            time.sleep(0.1)


@pytest.mark.timeout(90)
def test_cluster_kill_stream_leader_while_publishing() -> None:
    with NatsCluster(3, jetstream=True) as cluster:
        stores = {n._dir for n in cluster.nodes}
        assert len(stores) == 3  # each node its own store
        with ts.connect(
            cluster.urls, reconnect_time_wait=0.1, max_reconnect_attempts=-1, on_error=lambda e: None
        ) as bus:
            js = bus.jetstream(timeout=2)
            _ready(js)
            deadline = time.monotonic() + 20
            while True:
                try:
                    info = js.create_stream("R3", subjects=["r3.>"], replicas=3)
                    break
                except ts.Error:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert info.config.replicas == 3
            wait_until(lambda: (js.stream_info("R3").cluster or ts.ClusterInfo()).leader is not None, 20)
            consumer = js.create_consumer("R3", durable="follower", replicas=3)
            acked: Dict[int, bytes] = {}
            failures: List[BaseException] = []
            stop = threading.Event()
            count = [0]

            def publisher() -> None:
                i = 0
                while not stop.is_set():
                    payload = b"m%d" % i
                    try:
                        ack = js.publish(
                            "r3.data", payload, msg_id=f"id-{i}", timeout=2, retry_attempts=10, retry_wait=0.2
                        )
                    except ts.Error as exc:  # not acknowledged: try the same message again
                        failures.append(exc)
                        continue
                    acked[ack.seq] = payload
                    i += 1
                    count[0] = i

            t = threading.Thread(target=publisher)
            t.start()
            wait_until(lambda: count[0] >= 200, 20, "publishing before the kill")
            leader = js.stream_info("R3").cluster.leader  # type: ignore[union-attr]
            victim = next(n for n in cluster.nodes if n.name == leader)
            victim.kill()
            at_kill = count[0]
            wait_until(lambda: count[0] >= at_kill + 300, 40, "publishing after the kill")
            stop.set()
            t.join(10)
            assert not t.is_alive()
            info = js.stream_info("R3")
            assert info.cluster is not None and info.cluster.leader != leader
            # Every acknowledged message is in the stream, exactly where its ack said.
            assert info.state.messages == len(acked) == count[0]
            for seq in (min(acked), max(acked), *list(acked)[::50]):
                assert js.get_msg("R3", seq).payload == acked[seq]
            seen: List[bytes] = []
            end = time.monotonic() + 30
            while len(seen) < len(acked) and time.monotonic() < end:
                for m in consumer.fetch(500, timeout=2):
                    seen.append(m.payload)
                    m.ack()
            assert sorted(seen) == sorted(acked.values())  # the consumer went on


# --- interop with nats-py ---------------------------------------------------------------------





def _run(coro: Any) -> Any:
    """Run a nats-py coroutine to completion on a loop of its own (in this thread)."""
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_nats_py_publishes_we_consume(fresh_js_server: NatsServer) -> None:
    import nats

    async def produce() -> List[int]:
        nc = await nats.connect(fresh_js_server.url)
        js = nc.jetstream()
        await js.add_stream(name="PY", subjects=["py.>"])
        seqs = []
        for i in range(100):
            ack = await js.publish("py.data", b'{"i": %d}' % i, headers={"Nats-Msg-Id": f"py-{i}"})
            seqs.append(ack.seq)
        await nc.close()
        return seqs

    assert _run(produce()) == list(range(1, 101))
    with ts.connect(fresh_js_server.url) as bus:
        js = bus.jetstream()
        c = js.create_consumer("PY", durable="here")
        got = []
        while len(got) < 100:
            batch = c.fetch(40, timeout=2)
            assert batch
            for m in batch:
                m.ack()
                got.append(m.data["i"])
        assert got == list(range(100))
        assert js.get_msg("PY", 5).headers["Nats-Msg-Id"] == "py-4"


def test_we_publish_nats_py_consumes_and_its_durable_is_usable_here(fresh_js_server: NatsServer) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    with ts.connect(fresh_js_server.url) as bus:
        js = bus.jetstream()
        js.create_stream("MIX", subjects=["mix.>"])
        for i in range(50):
            js.publish_async("mix.data", {"i": i})
        js.publish_async_complete(10)

        async def consume_and_create() -> List[Any]:
            nc = await nats.connect(fresh_js_server.url)
            pjs = nc.jetstream()
            sub = await pjs.pull_subscribe("mix.data", durable="pyreader")
            out = []
            while len(out) < 50:
                for m in await sub.fetch(25, timeout=5):
                    await m.ack()
                    out.append(m.data)
            await pjs.add_consumer(
                "MIX",
                ConsumerConfig(
                    durable_name="shared", ack_policy=AckPolicy.EXPLICIT, filter_subject="mix.data"
                ),
            )
            await nc.close()
            return out

        payloads = _run(consume_and_create())
        assert payloads == [b'{"i":%d}' % i for i in range(50)]
        c = js.consumer("MIX", "shared")
        assert c.cached_info is not None and c.cached_info.config.filter_subject == "mix.data"
        msgs = c.fetch(100, timeout=2)
        assert [m.data["i"] for m in msgs] == list(range(50))
        for m in msgs:
            m.ack_sync()
        assert c.info().num_ack_pending == 0 and c.info().num_pending == 0
        # The durable nats-py read from is at its end here as well.
        assert js.consumer("MIX", "pyreader").fetch(10, timeout=0.3) == []


def test_nats_py_ordered_and_ours_agree(fresh_js_server: NatsServer) -> None:
    import nats

    with ts.connect(fresh_js_server.url) as bus:
        js = bus.jetstream()
        js.create_stream("ORD", subjects=["ord.>"])
        for i in range(300):
            js.publish_async(f"ord.{i % 3}", b"%d" % i)
        js.publish_async_complete(10)
        ours = [m.payload for m in js.history("ord.1")]

        async def theirs() -> List[bytes]:
            nc = await nats.connect(fresh_js_server.url)
            pjs = nc.jetstream()
            sub = await pjs.subscribe("ord.1", ordered_consumer=True)
            out = []
            while len(out) < 100:
                msg = await sub.next_msg(timeout=5)
                out.append(msg.data)
            await nc.close()
            return out

        assert _run(theirs()) == ours and len(ours) == 100
