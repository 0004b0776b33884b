"""The OPC UA adapter (contract section 10) against a real agent, the real asyncua server on
a free port and a real asyncua client: the tree, verdicts as data changes, alerts as
events, the Inspect method, and who may connect."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID
from structlog.testing import capture_logs

from adapters.opcua.adapter import OpcuaAdapter
from adapters.opcua.adapter import create as create_opcua
from agent.adapters_wiring import build_adapters
from agent.bootstrap import Agent, bootstrap, build_engine
from agent.config import Settings
from agent.parsing import parse_command
from agent.startup import StartupRefused
from engine.features import FeatureExtractor
from tests.conftest import agent_settings
from tests.support import cli_env

NAMESPACE = "urn:bdi:line1"
STORED = ("Disc", "Stored")  # fitted before the server starts
ALERTS = ("Disc/Left", "Alerts")  # fitted while it serves; a '/' in an id on purpose
ROI_TYPES = {
    "Fitted": ua.VariantType.Boolean,
    "CoresetSize": ua.VariantType.Int32,
    "Calibrated": ua.VariantType.Boolean,
    "Threshold": ua.VariantType.Double,
    "ModelVersion": ua.VariantType.String,
    "LastScore": ua.VariantType.Double,
    "LastIsAnomaly": ua.VariantType.Boolean,
    "LastRegionCount": ua.VariantType.Int32,
    "LastMaxAreaMm2": ua.VariantType.Double,
    "LastRequestId": ua.VariantType.String,
    "LastSource": ua.VariantType.String,
    "LastTimestamp": ua.VariantType.DateTime,
    "Seq": ua.VariantType.UInt64,
    "InspectedCount": ua.VariantType.UInt64,
    "AnomalyCount": ua.VariantType.UInt64,
    "ConsecutiveAnomalies": ua.VariantType.Int32,
}
AGENT_TYPES = {
    "Status": ua.VariantType.String,
    "HealthReason": ua.VariantType.String,
    "Runtime": ua.VariantType.String,
    "QueueSize": ua.VariantType.Int32,
    "InferP95Ms": ua.VariantType.Double,
}


@dataclass
class Served:
    agent: Agent
    adapter: OpcuaAdapter
    images: Path  # the Inspect image root
    pngs: list[bytes]


def run(agent: Agent, name: str, roi: tuple[str, str], **payload: Any) -> dict[str, Any]:
    cmd = parse_command(name, {"role_id": roi[0], "roi_id": roi[1], **payload}, "test")
    reply = agent.bus.execute(cmd, timeout=120)
    assert reply.ok, reply.error
    return {**(reply.body or {}), "request_id": cmd.request_id}


def opcua_settings(root: Path, **opcua: Any) -> Settings:
    return agent_settings(
        root / "data",
        agent_id="line1",
        alert_consecutive=3,
        opcua={"enabled": True, "port": 0, **opcua},
    )


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, extractor: FeatureExtractor, ok_pngs: list[bytes]
) -> Iterator[Served]:
    """One agent and its OPC UA server for the module, built as ``bdi-agent run`` builds
    them (``build_adapters``); a ROI is fitted before the server starts."""
    root = tmp_path_factory.mktemp("opcua")
    images = root / "images"
    images.mkdir()
    settings = opcua_settings(root, image_roots=[str(images)])
    core = build_engine(settings)
    core.extractor = extractor
    agent = bootstrap(settings, core=core)
    agent.start(load_model=False)
    run(agent, "fit_ok", STORED, mm_per_px=0.2, images=ok_pngs[:3])
    (adapter,) = build_adapters(settings, agent)
    assert isinstance(adapter, OpcuaAdapter)
    adapter.start()
    try:
        yield Served(agent, adapter, images, ok_pngs)
    finally:
        adapter.stop()
        agent.stop(timeout=30)


class Inbox:
    """What a subscription delivers: data changes and events, awaited with a timeout."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()

    def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
        self.items.put_nowait(value)

    def event_notification(self, event: Any) -> None:
        self.items.put_nowait(event)

    async def next(self, timeout: float = 30.0) -> Any:
        return await asyncio.wait_for(self.items.get(), timeout)


async def roi_node(client: Client, ns: int, recipe: str, role: str, roi: str) -> Node:
    path = ["BDI", "ROIs", recipe, role, roi]
    return await client.nodes.objects.get_child([f"{ns}:{name}" for name in path])


async def values(node: Node, ns: int, names: list[str]) -> dict[str, ua.DataValue]:
    """The named children's values, read in one request."""
    children = [await node.get_child(f"{ns}:{name}") for name in names]
    read = await node.session.read_attributes(
        [child.nodeid for child in children], ua.AttributeIds.Value
    )
    return dict(zip(names, read, strict=True))


async def alert_type(client: Client, ns: int) -> Node:
    path = ["0:Types", "0:EventTypes", "0:BaseEventType", f"{ns}:AlertEventType"]
    return await client.nodes.root.get_child(path)


def test_tree_has_the_contract_names_and_types(served: Served) -> None:
    async def scenario() -> None:
        async with Client(served.adapter.url) as client:
            assert served.adapter.url.endswith("/bdi/")
            ns = await client.get_namespace_index(NAMESPACE)
            bdi = await client.nodes.objects.get_child(f"{ns}:BDI")
            names = {
                (await child.read_browse_name()).to_string() for child in await bdi.get_children()
            }
            assert names == {f"{ns}:Agent", f"{ns}:ROIs", f"{ns}:Inspect"}

            agent = await bdi.get_child(f"{ns}:Agent")
            for name, vtype in AGENT_TYPES.items():
                variable = await agent.get_child(f"{ns}:{name}")
                assert await variable.read_data_type() == ua.NodeId(vtype.value), name
            read = await values(agent, ns, list(AGENT_TYPES))
            assert read["Status"].Value.Value == "online"
            assert read["Runtime"].Value.Value == "torch"
            assert read["HealthReason"].Value.Value == ""
            assert read["QueueSize"].Value.Value == 0

            roi = await roi_node(client, ns, "default", *STORED)
            for name, vtype in ROI_TYPES.items():
                variable = await roi.get_child(f"{ns}:{name}")
                assert await variable.read_data_type() == ua.NodeId(vtype.value), name
            state = await values(roi, ns, ["Fitted", "CoresetSize", "Calibrated", "Threshold"])
            assert state["Fitted"].Value.Value is True
            assert state["CoresetSize"].Value.Value > 0
            assert state["Calibrated"].Value.Value is False
            # Uncalibrated: no threshold, said as OPC UA says "no value", not as a number.
            assert state["Threshold"].StatusCode.value == ua.StatusCodes.BadNoValue

            seq = await roi.get_child(f"{ns}:Seq")
            with pytest.raises(ua.UaStatusCodeError):  # read-only for clients
                await seq.write_value(ua.Variant(99, ua.VariantType.UInt64))

    asyncio.run(scenario())


def test_a_verdict_changes_seq_and_reads_whole(served: Served) -> None:
    # Waits on the core's verdict events.
    async def scenario() -> None:
        async with Client(served.adapter.url) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            roi = await roi_node(client, ns, "default", *STORED)
            before = await values(roi, ns, ["InspectedCount"])
            inbox = Inbox()
            subscription = await client.create_subscription(50, inbox)
            await subscription.subscribe_data_change(await roi.get_child(f"{ns}:Seq"))
            await inbox.next()  # the current value, on subscribing
            png = served.pngs[5]
            verdict = await asyncio.to_thread(
                run, served.agent, "infer", STORED, mm_per_px=0.2, image=png, heatmap=False
            )
            seq = await inbox.next()
            read = await values(roi, ns, list(ROI_TYPES))
            assert read["Seq"].Value.Value == seq
            assert read["LastRequestId"].Value.Value == verdict["request_id"]
            assert read["LastScore"].Value.Value == pytest.approx(verdict["score"])
            assert read["LastSource"].Value.Value == "test"
            assert read["LastRegionCount"].Value.Value == len(verdict["regions"])
            assert isinstance(read["LastTimestamp"].Value.Value, datetime)
            # Uncalibrated verdict: no decision, and no stand-in a PLC could take for one.
            assert read["LastIsAnomaly"].StatusCode.value == ua.StatusCodes.BadNoValue
            inspected = read["InspectedCount"].Value.Value
            assert inspected == before["InspectedCount"].Value.Value + 1

    asyncio.run(scenario())


def test_consecutive_anomalies_raise_an_alert_event(served: Served) -> None:
    # Waits on the core's state, verdict and alert events.
    agent = served.agent

    async def scenario() -> None:
        async with Client(served.adapter.url) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            await asyncio.to_thread(
                run, agent, "fit_ok", ALERTS, mm_per_px=0.2, images=served.pngs[:3]
            )
            roi = await wait_for_roi(client, ns, *ALERTS)  # appears once fitted
            events = Inbox()
            subscription = await client.create_subscription(50, events)
            kind = await alert_type(client, ns)
            await subscription.subscribe_events(roi, kind)
            on_server = Inbox()
            server_subscription = await client.create_subscription(50, on_server)
            await server_subscription.subscribe_events(client.nodes.server, kind)

            # ok_scores=[0]: every score is over the threshold, every verdict anomalous.
            await asyncio.to_thread(
                run, agent, "calibrate_ng", ALERTS, ok_scores=[0.0], ng_scores=[]
            )
            for _ in range(4):
                verdict = await asyncio.to_thread(
                    run, agent, "infer", ALERTS, mm_per_px=0.2, image=served.pngs[5], heatmap=False
                )
                assert verdict["is_anomaly"] is True
            alert = await events.next()
            assert (alert.Kind, alert.Severity, alert.Count) == ("consecutive_anomalies", 700, 3)
            assert (alert.RecipeId, alert.RoleId, alert.RoiId) == ("default", *ALERTS)
            assert alert.SourceNode == roi.nodeid and isinstance(alert.Since, datetime)
            assert (await on_server.next()).Kind == "consecutive_anomalies"
            await wait_for_value(roi, ns, "AnomalyCount", 4)  # the fourth verdict too
            counts = await values(roi, ns, ["ConsecutiveAnomalies", "Calibrated"])
            assert counts["ConsecutiveAnomalies"].Value.Value == 4
            assert counts["Calibrated"].Value.Value is True

            await asyncio.to_thread(run, agent, "calibrate_ng", ALERTS, ok_scores=[100.0])
            await asyncio.to_thread(
                run, agent, "infer", ALERTS, mm_per_px=0.2, image=served.pngs[5], heatmap=False
            )
            cleared = await events.next()
            assert (cleared.Kind, cleared.Severity) == ("cleared", 100)
            assert events.items.empty()  # one alert for the run of four
            await wait_for_value(roi, ns, "ConsecutiveAnomalies", 0)

    asyncio.run(scenario())


async def wait_for_roi(client: Client, ns: int, role: str, roi: str, timeout: float = 30) -> Node:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await roi_node(client, ns, "default", role, roi)
        except ua.UaStatusCodeError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def wait_for_value(
    node: Node, ns: int, name: str, expected: Any, timeout: float = 30
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := (await values(node, ns, [name]))[name].Value.Value) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{name} is {value}, not {expected}"
        await asyncio.sleep(0.05)


def test_inspect_scores_a_file_under_the_roots(served: Served) -> None:
    image = served.images / "part-1.png"
    image.write_bytes(served.pngs[6])
    expected = run(served.agent, "infer", STORED, mm_per_px=0.2, image=served.pngs[6])["score"]

    async def scenario() -> None:
        async with Client(served.adapter.url) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            bdi = await client.nodes.objects.get_child(f"{ns}:BDI")
            inspect = await bdi.get_child(f"{ns}:Inspect")
            score, is_anomaly, request_id = await bdi.call_method(inspect, *STORED, str(image))
            assert score == pytest.approx(expected)
            assert is_anomaly is None  # uncalibrated: null, not false
            assert isinstance(request_id, str) and request_id

            outside = ua.CallMethodRequest(
                ObjectId=bdi.nodeid,
                MethodId=inspect.nodeid,
                InputArguments=[ua.Variant(v) for v in (*STORED, "/etc/hostname")],
            )
            (result,) = await client.uaclient.call([outside])
            assert result.StatusCode.value == ua.StatusCodes.BadInvalidArgument
            message = result.InputArgumentDiagnosticInfos[0].AdditionalInfo
            assert "outside the allowed image roots" in message

    asyncio.run(scenario())


def test_off_loopback_without_a_user_and_certificate_is_refused(
    served: Served, tmp_path: Path
) -> None:
    settings = opcua_settings(tmp_path, host="0.0.0.0")
    with pytest.raises(StartupRefused, match="BDI_OPCUA__ALLOW_INSECURE"):
        create_opcua(settings, served.agent)
    half = opcua_settings(tmp_path, host="127.0.0.1", username="plc", password="secret")
    with pytest.raises(StartupRefused, match="BDI_OPCUA__CERT_FILE"):
        create_opcua(half, served.agent)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = opcua_settings(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(StartupRefused, match="is taken"):
            create_opcua(busy, served.agent)


def test_allow_insecure_serves_off_loopback_with_a_warning(served: Served, tmp_path: Path) -> None:
    settings = opcua_settings(tmp_path, host="0.0.0.0", allow_insecure=True)
    adapter = create_opcua(settings, served.agent)
    with capture_logs() as logs:
        adapter.start()
    try:
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert any("ALLOW_INSECURE" in e["event"] for e in warnings)

        async def scenario() -> None:
            client = Client(f"opc.tcp://127.0.0.1:{adapter.port}/bdi/")
            await client.connect()
            ns = await client.get_namespace_index(NAMESPACE)
            path = [f"{ns}:BDI", f"{ns}:Agent", f"{ns}:Status"]
            status = await client.nodes.objects.get_child(path)
            inbox = Inbox()
            subscription = await client.create_subscription(50, inbox)
            await subscription.subscribe_data_change(status)
            assert await inbox.next() == "online"
            await asyncio.to_thread(adapter.stop)  # a clean stop says so before it closes
            assert await inbox.next() == "stopped"
            with contextlib.suppress(Exception):  # the server is gone
                await client.disconnect()

        asyncio.run(scenario())
    finally:
        adapter.stop()


def test_with_a_user_and_certificate_only_signed_encrypted_sessions_get_in(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_key, server_cert = tmp_path / "server.pem", tmp_path / "server.der"
    client_key, client_cert = tmp_path / "client.pem", tmp_path / "client.der"

    async def certificates() -> None:
        for key, cert, use in (
            (server_key, server_cert, ExtendedKeyUsageOID.SERVER_AUTH),
            (client_key, client_cert, ExtendedKeyUsageOID.CLIENT_AUTH),
        ):
            await setup_self_signed_certificate(
                key, cert, f"urn:bdi:test:{key.stem}", "localhost", [use], {}
            )

    asyncio.run(certificates())
    crossed = opcua_settings(
        tmp_path, username="plc", password="x", cert_file=server_cert, key_file=client_key
    )
    with pytest.raises(StartupRefused, match="is not the key of"):
        create_opcua(crossed, served.agent)
    settings = opcua_settings(
        tmp_path,
        username="plc",
        password="secret",
        cert_file=str(server_cert),
        key_file=str(server_key),
    )
    adapter = create_opcua(settings, served.agent)
    adapter.start()

    async def read_status(password: str, secure: bool) -> str:
        client = Client(adapter.url)
        if secure:
            await client.set_security(
                SecurityPolicyBasic256Sha256, str(client_cert), str(client_key)
            )
        client.set_user("plc")
        client.set_password(password)
        async with client:
            ns = await client.get_namespace_index(NAMESPACE)
            path = [f"{ns}:BDI", f"{ns}:Agent", f"{ns}:Status"]
            return str(await (await client.nodes.objects.get_child(path)).read_value())

    async def scenario() -> None:
        endpoints = await Client(adapter.url).connect_and_get_server_endpoints()
        offered = {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints}
        assert offered == {
            (SecurityPolicyBasic256Sha256.URI, ua.MessageSecurityMode.SignAndEncrypt)
        }
        tokens = {t.TokenType for e in endpoints for t in e.UserIdentityTokens}
        assert tokens == {ua.UserTokenType.UserName}
        assert await read_status("secret", secure=True) == "online"
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await read_status("wrong", secure=True)
        # A client that ignores the endpoints offered and opens an unencrypted channel
        # gets its session, and then nothing: the user's data never travels in clear.
        monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda found, *_: found[0]))
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await read_status("secret", secure=False)

    try:
        asyncio.run(scenario())
    finally:
        adapter.stop()


SUBSCRIBER = """
import asyncio, sys
from asyncua import Client

class Printer:
    def datachange_notification(self, node, value, data):
        print(value, flush=True)

async def main(url, ns_uri, path):
    client = Client(url)
    await client.connect()
    ns = await client.get_namespace_index(ns_uri)
    seq = await client.nodes.objects.get_child([f"{ns}:{name}" for name in path.split("|")])
    subscription = await client.create_subscription(20, Printer())
    await subscription.subscribe_data_change(seq)
    await asyncio.sleep(3600)  # killed long before

asyncio.run(main(*sys.argv[1:]))
"""
WRITE_VALUES = [
    ua.Variant(True, ua.VariantType.Boolean),
    ua.Variant(-7, ua.VariantType.Int32),
    ua.Variant(2**40, ua.VariantType.UInt64),
    ua.Variant(0.5, ua.VariantType.Double),
    ua.Variant(1.5, ua.VariantType.Float),
    ua.Variant("online", ua.VariantType.String),
    ua.Variant(b"\x00\xff", ua.VariantType.ByteString),
    ua.Variant(datetime(2026, 1, 1), ua.VariantType.DateTime),
    ua.Variant(None, ua.VariantType.Null),
]


async def bdi_tree(client: Client, ns: int) -> tuple[list[Node], list[Node]]:
    """Every object and variable under Objects/BDI."""
    objects, variables = [], []
    todo = [await client.nodes.objects.get_child(f"{ns}:BDI")]
    while todo:
        node = todo.pop()
        objects.append(node)
        for child in await node.get_children():
            node_class = await child.read_node_class()
            if node_class == ua.NodeClass.Variable:
                variables.append(child)
            elif node_class == ua.NodeClass.Object:
                todo.append(child)
    return objects, variables


def test_random_calls_and_a_killed_subscriber_leave_the_server_serving(
    served: Served, tmp_path: Path
) -> None:
    rng = random.Random(16)

    async def random_calls() -> None:
        async with Client(served.adapter.url) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            objects, variables = await bdi_tree(client, ns)
            assert len(variables) >= len(AGENT_TYPES) + len(ROI_TYPES)
            roi = await roi_node(client, ns, "default", *STORED)
            before = await values(roi, ns, list(ROI_TYPES))
            refused: dict[str, int] = {}
            for _ in range(1000):
                action = rng.choice(("browse", "read", "write"))
                if action == "browse":
                    await rng.choice(objects).get_children()
                elif action == "read":
                    await rng.choice(variables).read_data_value(raise_on_bad_status=False)
                else:
                    value = ua.DataValue(rng.choice(WRITE_VALUES))
                    with pytest.raises(ua.UaStatusCodeError) as bad:
                        await rng.choice(variables).write_value(value)
                    code = ua.StatusCode(bad.value.code)
                    assert not code.is_good()
                    refused[code.name] = refused.get(code.name, 0) + 1
            assert refused, "no write was tried"
            after = await values(roi, ns, list(ROI_TYPES))
            assert {k: v.Value for k, v in after.items()} == {k: v.Value for k, v in before.items()}

    asyncio.run(random_calls())

    seq_path = "|".join(["BDI", "ROIs", "default", *STORED, "Seq"])
    child = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, served.adapter.url, NAMESPACE, seq_path],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline()  # subscribed: its current Seq (None before a verdict)
        # A verdict on its way to the subscriber when it dies.
        run(served.agent, "infer", STORED, mm_per_px=0.2, image=served.pngs[6], heatmap=False)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()

    async def fresh_client() -> None:
        async with Client(served.adapter.url) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            roi = await roi_node(client, ns, "default", *STORED)
            inbox = Inbox()
            subscription = await client.create_subscription(50, inbox)
            await subscription.subscribe_data_change(await roi.get_child(f"{ns}:Seq"))
            current = await inbox.next()
            png = served.pngs[7]
            await asyncio.to_thread(
                run, served.agent, "infer", STORED, mm_per_px=0.2, image=png, heatmap=False
            )
            assert await inbox.next() > current

    asyncio.run(fresh_client())
