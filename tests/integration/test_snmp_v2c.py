"""The SNMPv2c client of the PDU read path over real UDP on 127.0.0.1: against the PDU
simulator (checked with net-snmp's snmpget) and against small hostile agents that
answer too big, refuse, lie about request ids, send garbage or answer late."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from provisiond.drivers.pdu import ber
from provisiond.drivers.pdu.apc_snmp import DEVICE_WATTS, OUTLET_COMMAND, OUTLET_WATTS
from provisiond.drivers.pdu.base import PduBadReply, PduTarget, PduUnreachable, PduUnsupported
from provisiond.drivers.pdu.snmp_v2c import V2cClient
from provisiond.rack.bmc_sim import BmcFarm
from provisiond.rack.pdu_sim import PduSim

T = TypeVar("T")
OIDS = [f"1.3.6.1.4.1.99.{i}" for i in range(1, 98)]
Answer = Callable[[ber.Response, int], bytes | None]


def reply(
    req: ber.Response,
    values: Sequence[bytes | None] | None = None,
    *,
    status: int = 0,
    index: int = 0,
    request_id: int | None = None,
    community: bytes | None = None,
    pdu_type: int = ber.RESPONSE,
) -> bytes:
    """A Response to ``req``: its names, with ``values`` (default INTEGER i for the i-th)."""
    names = [b"\x06" + bytes((len(vb.oid),)) + vb.oid for vb in req.varbinds]
    if values is None:
        values = [
            ber.encode_integer(int(ber.oid_text(vb.oid).rsplit(".", 1)[1])) for vb in req.varbinds
        ]
    return ber.encode_message(
        1,
        req.community if community is None else community,
        pdu_type,
        req.request_id if request_id is None else request_id,
        list(zip(names, values, strict=True)),
        non_repeaters=status,
        max_repetitions=index,
    )


class Agent(asyncio.DatagramProtocol):
    """A tiny SNMP agent whose every answer comes from ``answer(request, n)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[ber.Response] = []
        self.peers: set[tuple[str, int]] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        request = ber.decode_message(data)
        self.requests.append(request)
        self.peers.add(addr)
        out = self.answer(request, len(self.requests))
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


def with_agents(
    answer: Answer,
    fn: Callable[[V2cClient, list[PduTarget], list[Agent]], Awaitable[T]],
    n: int = 1,
) -> T:
    async def main() -> T:
        loop = asyncio.get_running_loop()
        agents, transports, targets = [], [], []
        for i in range(n):
            transport, agent = await loop.create_datagram_endpoint(
                lambda: Agent(answer), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            agents.append(agent)
            transports.append(transport)
            targets.append(PduTarget(f"pdu{i}", "127.0.0.1", port, community="c0mm", timeout=0.3))
        client = V2cClient()
        try:
            return await fn(client, targets, agents)
        finally:
            client.close()
            for transport in transports:
                transport.close()

    return asyncio.run(main())


def test_too_big_is_split_until_it_fits() -> None:
    def answer(req: ber.Response, _: int) -> bytes:
        return reply(req, status=1) if len(req.varbinds) > 10 else reply(req)

    async def read(client: V2cClient, targets: list[PduTarget], agents: list[Agent]) -> Any:
        return await client.get(targets[0], OIDS), [len(r.varbinds) for r in agents[0].requests]

    values, sizes = with_agents(answer, read)
    assert values == list(range(1, 98))
    assert sizes[:2] == [49, 24] and sum(s for s in sizes if s <= 10) == 97


def test_error_status_names_the_object_and_a_refused_set() -> None:
    def answer(req: ber.Response, _: int) -> bytes:
        status = 17 if req.pdu_type == ber.SET else 5  # notWritable / genErr
        return reply(req, [None] * len(req.varbinds), status=status, index=len(req.varbinds))

    async def read(client: V2cClient, targets: list[PduTarget], _: list[Agent]) -> None:
        await client.get(targets[0], OIDS[:3])

    with pytest.raises(
        PduUnsupported, match=r"refused to read: genErr at 1\.3\.6\.1\.4\.1\.99\.3$"
    ):
        with_agents(answer, read)

    async def switch(client: V2cClient, targets: list[PduTarget], agents: list[Agent]) -> None:
        await client.set(targets[0], OIDS[4], 2)

    with pytest.raises(PduUnsupported, match=r"refused to switch: notWritable at .*99\.5$"):
        with_agents(answer, switch)


def test_strays_are_dropped_and_the_true_answer_taken() -> None:
    def answer(req: ber.Response, _: int) -> bytes | None:
        assert agent.transport is not None
        wrong = [ber.encode_integer(666)] * len(req.varbinds)
        for stray in (
            reply(req, wrong, request_id=req.request_id + 1),  # another request's id
            reply(req, wrong, community=b"other"),
            reply(req, wrong, pdu_type=ber.GET),
            b"\x30\x84\xff\xff\xff\xff\x02\x01\x01",  # a huge length field
            b"garbage",
        ):
            agent.transport.sendto(stray, next(iter(agent.peers)))
        return reply(req)

    agent: Agent

    async def read(client: V2cClient, targets: list[PduTarget], agents: list[Agent]) -> Any:
        nonlocal agent
        agent = agents[0]
        return await client.get(targets[0], OIDS[:5])

    assert with_agents(answer, read) == [1, 2, 3, 4, 5]


def test_a_malformed_answer_or_other_objects_is_a_bad_reply_at_once() -> None:
    def truncated(req: ber.Response, _: int) -> bytes:
        # Lengths all right, the request id readable, but the last value's tag unknown.
        return reply(req, [ber.encode_integer(1)] * 4 + [b"\x07\x01\x05"])

    async def read(client: V2cClient, targets: list[PduTarget], _: list[Agent]) -> None:
        await client.get(targets[0], OIDS[:5])

    async def read_patient(client: V2cClient, targets: list[PduTarget], _: list[Agent]) -> None:
        await client.get(dataclasses.replace(targets[0], timeout=3.0), OIDS[:5])

    started = time.monotonic()
    with pytest.raises(
        PduBadReply, match=r"pdu0 .* sent a malformed SNMP answer: unknown value tag 0x07"
    ) as caught:
        with_agents(truncated, read_patient)
    # Not a timeout: the first answer decides (well under 0.1 s; a timeout would be 6 s).
    assert time.monotonic() - started < 1.5
    assert "c0mm" not in caught.value.message

    def other(req: ber.Response, _: int) -> bytes:
        names = [ber.encode_oid("1.3.6.1.2.1.1.1.0")] * len(req.varbinds)
        values = [ber.encode_integer(0)] * len(req.varbinds)
        return ber.encode_message(
            1, req.community, ber.RESPONSE, req.request_id, list(zip(names, values, strict=True))
        )

    with pytest.raises(PduBadReply, match="other or reordered objects"):
        with_agents(other, read)


def test_silence_is_unreachable_within_the_bound_and_a_late_answer_counts() -> None:
    async def read(client: V2cClient, targets: list[PduTarget], agents: list[Agent]) -> Any:
        target = PduTarget(
            "pdu0", "127.0.0.1", targets[0].port, community="c0mm", timeout=0.3, retries=1
        )
        started = time.monotonic()
        try:
            return await client.get(target, OIDS[:2])
        finally:
            took = time.monotonic() - started
            # Two 0.3 s tries; the upper bound leaves room for a busy CI machine.
            assert 0.55 <= took < 3.0 and len(agents[0].requests) == 2, took

    with pytest.raises(PduUnreachable, match=r"\(2 tries, SNMPv2c\)") as caught:
        with_agents(lambda req, n: None, read)
    assert caught.value.retryable and "wrong community or address" in caught.value.hint

    def late(req: ber.Response, n: int) -> None:
        # The first try is answered after the retry went out; the retry is ignored.
        transport = agent_of[0].transport
        if n == 1 and transport is not None:
            peer = next(iter(agent_of[0].peers))
            asyncio.get_running_loop().call_later(0.4, transport.sendto, reply(req), peer)

    agent_of: list[Agent] = []

    async def read_late(client: V2cClient, targets: list[PduTarget], agents: list[Agent]) -> Any:
        agent_of.extend(agents)
        target = PduTarget(
            "pdu0", "127.0.0.1", targets[0].port, community="c0mm", timeout=0.3, retries=1
        )
        return await client.get(target, OIDS[:2])

    assert with_agents(late, read_late) == [1, 2]


def test_many_agents_are_read_concurrently_through_one_socket() -> None:
    def slow(req: ber.Response, n: int) -> bytes:
        time.sleep(0.002)
        return reply(req)

    async def read(client: V2cClient, targets: list[PduTarget], agents: list[Agent]) -> Any:
        values = await asyncio.gather(*(client.get(t, OIDS) for t in targets))
        return values, {p for a in agents for p in a.peers}

    values, peers = with_agents(slow, read, n=50)
    assert all(v == list(range(1, 98)) for v in values)
    assert len(peers) == 1  # one client socket for all 50 agents


@pytest.fixture
def rack() -> Iterator[tuple[BmcFarm, PduSim]]:
    with BmcFarm(2) as farm, PduSim.attached(farm, outlets=4) as pdus:
        yield farm, pdus


@pytest.mark.skipif(shutil.which("snmpget") is None, reason="net-snmp's snmpget is missing")
def test_the_simulator_reads_the_same_as_net_snmp(rack: tuple[BmcFarm, PduSim]) -> None:
    farm, pdus = rack
    farm.set_power(0, True)
    pdus.call(lambda: pdus.pdu(0).outlets[3].power(False))
    host, port = pdus.endpoint(0)
    oids = [DEVICE_WATTS]
    for n in range(1, 6):  # outlet 5 does not exist
        oids += [f"{OUTLET_COMMAND}.{n}", f"{OUTLET_WATTS}.{n}"]
    out = subprocess.run(
        ["snmpget", "-v2c", "-c", "private", "-On", "-Oq", "-t", "2", "-r", "1",
         f"{host}:{port}", *oids],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    theirs: dict[str, int | None] = {}
    for line in out.splitlines():
        oid, value = line.split(" ", 1)
        theirs[oid.lstrip(".")] = int(value) if value.lstrip("-").isdigit() else None

    async def read() -> list[int | None]:
        client = V2cClient()
        try:
            return await client.get(PduTarget("pdu1", host, port, community="private"), oids)
        finally:
            client.close()

    ours = dict(zip(oids, asyncio.run(read()), strict=True))
    assert ours == theirs
    assert ours[DEVICE_WATTS] == 128 and ours[f"{OUTLET_COMMAND}.3"] == 2
    assert ours[f"{OUTLET_WATTS}.1"] == 120 and ours[f"{OUTLET_COMMAND}.5"] is None
