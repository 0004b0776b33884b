"""OPC UA adapter (contract section 10): the agent's status, every ROI's state and last
verdict as variables, alerts as events, and the ``Inspect`` method, for PLCs and SCADA.

asyncua runs an asyncio loop; it gets a thread of its own. Everything it serves comes from
the core's events (``state``, ``verdict``, ``alert``, ``health``), so OPC UA says what MQTT
and HTTP say. The event listener runs on the agent's delivery thread and only hands the
event to the loop; one task applies them in ``seq`` order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from typing import Any
from urllib.parse import urlparse

import structlog
from asyncua import Server, ua

from adapters.opcua.inspection import INPUTS, OUTPUTS, Inspect, arguments
from adapters.opcua.nodes import NOT_YET, AddressSpace, RoiIds, ids_of, string_id
from adapters.opcua.security import apply_security, plan_security
from agent.bootstrap import Agent
from agent.config import Settings
from agent.events import Event, agent_status
from agent.startup import StartupRefused
from engine.keys import RoiKey

log = structlog.get_logger("adapters.opcua")

STATS_EVERY_S = 2.0  # QueueSize and InferP95Ms are polled, not evented
STOP_NOTICE_S = 1.0  # time for subscribers' next publish to carry Status=stopped
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class OpcuaAdapter:
    def __init__(self, settings: Settings, agent: Agent) -> None:
        self.settings = settings
        self.cfg = settings.opcua
        self.agent = agent
        # Decided now, when the agent is built: a refusal stops start-up before anything
        # listens (StartupRefused, one line from ``bdi-agent run``).
        self.security = plan_security(self.cfg)
        _check_port(self.cfg.host, self.cfg.port)
        self.namespace_uri = f"urn:bdi:{settings.agent_id}"
        self.inspect = Inspect(agent, self.cfg.image_roots or settings.mqtt.image_roots)
        self.port = self.cfg.port  # the bound port once started (useful with port 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue[Event] | None = None
        self._server: Server | None = None
        self._space: AddressSpace | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Any = None

    @property
    def url(self) -> str:
        """The endpoint URL clients are told: ``opc.tcp://<host>:<port>/bdi/``."""
        host = self.cfg.host
        if host in WILDCARD_HOSTS:
            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"opc.tcp://{host}:{self.port}/bdi/"

    # -- lifecycle (the agent's thread) ----------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="opcua", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "opcua adapter listening",
            url=self.url,
            namespace=self.namespace_uri,
            security=self.security.mode,
        )
        if self.security.mode == "insecure":
            log.warning(
                "opcua serves anonymous and unencrypted clients on a non-loopback address "
                "(BDI_OPCUA__ALLOW_INSECURE=true): anyone on the network can read and Inspect",
                host=self.cfg.host,
                port=self.port,
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            except Exception:
                log.exception("opcua server did not stop cleanly")
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    # -- the server's loop ----------------------------------------------------------------

    async def _serve(self) -> None:
        # Listen to events before reading the stored states: an event that lands while the
        # tree is built waits in the queue and is applied after, so nothing is missed.
        queue = self._queue = asyncio.Queue()
        self._unsubscribe = self.agent.bus.events.subscribe(self._on_event)
        server = self._server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.socket_address = (self.cfg.host, self.cfg.port)
        server.set_server_name(f"BrakeDisc Inspector {self.settings.agent_id}")
        await server.set_application_uri(self.security.cert_uri or self.namespace_uri)
        await apply_security(server, self.security)
        ns = await server.register_namespace(self.namespace_uri)
        space = self._space = await AddressSpace.build(server, ns)
        await space.bdi.add_method(
            string_id("BDI/Inspect", ns),
            ua.QualifiedName("Inspect", ns),
            self.inspect.call,
            arguments(INPUTS),
            arguments(OUTPUTS),
        )
        await self._write_health(self.agent.bus.health())
        for ids, state in await asyncio.to_thread(self._stored_states):
            await space.add_roi(ids, state)
        await self._write_stats()
        await server.start()
        self._advertise_bound_port(server)
        self._tasks = [
            asyncio.create_task(self._apply_events(queue)),
            asyncio.create_task(self._poll_stats()),
        ]

    async def _shutdown(self) -> None:
        if self._space is not None and self._server is not None and self._tasks:
            await self._space.write_agent("Status", "stopped")
            await asyncio.sleep(STOP_NOTICE_S)
        await _cancel(self._tasks)
        if self._server is not None:
            with contextlib.suppress(Exception):  # a server that never fully started
                await self._server.stop()
        # What is left: an Inspect still waiting on the worker, whose client is gone.
        await _cancel([task for task in asyncio.all_tasks() if task is not asyncio.current_task()])

    def _on_event(self, event: Event) -> None:
        """The delivery thread's listener: hand over, never wait."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the adapter stopped
            loop.call_soon_threadsafe(queue.put_nowait, event)

    async def _apply_events(self, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            try:
                await self._apply(event)
            except Exception:
                log.exception("opcua could not apply an event", name=event.name, seq=event.seq)

    async def _apply(self, event: Event) -> None:
        space = self._space
        assert space is not None
        body = dict(event.body)
        if event.name == "health":
            await self._write_health(body)
            return
        ids = ids_of(body)
        if event.name == "state":
            if ids in space.rois:
                await space.write_state(ids, body)
            else:
                await space.add_roi(ids, body)
            return
        if ids not in space.rois:  # first inspected here (fitted elsewhere, or earlier)
            await space.add_roi(ids, await asyncio.to_thread(self._state_of, ids))
        if event.name == "verdict":
            await space.write_verdict(ids, body)
        elif event.name == "alert":
            await space.raise_alert(ids, body)

    async def _write_health(self, health: dict[str, Any]) -> None:
        space = self._space
        assert space is not None
        await space.write_agent("Status", agent_status(health))
        await space.write_agent("HealthReason", health.get("reason") or "")
        await space.write_agent("Runtime", health.get("runtime") or "")

    async def _poll_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            try:
                await self._write_stats()
            except Exception:
                log.exception("opcua could not refresh the stats")

    async def _write_stats(self) -> None:
        space = self._space
        assert space is not None
        stats = self.agent.bus.stats_body()
        await space.write_agent("QueueSize", stats.get("queue_size"))
        await space.write_agent("InferP95Ms", stats.get("infer_p95_ms"), missing=NOT_YET)

    def _advertise_bound_port(self, server: Server) -> None:
        """With port 0, the endpoints name the port the system gave."""
        bound = server.bserver.port if server.bserver is not None else self.port
        if bound == self.port:
            return
        self.port = bound
        server.endpoint = urlparse(self.url)
        for endpoint in server.iserver.endpoints:
            endpoint.EndpointUrl = self.url
            endpoint.Server.DiscoveryUrls = [self.url]

    # -- disk reads (worker threads of the loop, never the loop itself) ---------------------

    def _stored_states(self) -> list[tuple[RoiIds, dict[str, Any]]]:
        services = self.agent.services
        out = []
        for key in services.models.roi_keys():
            try:
                state = services.roi_state(key)
            except Exception:
                log.exception("ROI state unreadable", role_id=key.role_id, roi_id=key.roi_id)
                continue
            out.append(((key.recipe_id, key.role_id, key.roi_id), state))
        return out

    def _state_of(self, ids: RoiIds) -> dict[str, Any]:
        recipe_id, role_id, roi_id = ids
        try:
            return self.agent.services.roi_state(RoiKey.of(role_id, roi_id, recipe_id))
        except Exception:
            log.exception("ROI state unreadable", role_id=role_id, roi_id=roi_id)
            return {}


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _check_port(host: str, port: int) -> None:
    """A port that cannot be had is one clear line at start-up, not a traceback from the
    server's thread. (asyncio binds with SO_REUSEADDR too, so this tries the same bind.)"""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            what = (
                f"port {port} on {host} is taken"
                if exc.errno == errno.EADDRINUSE
                else f"cannot listen on {host}:{port}"
            )
            raise StartupRefused(
                f"OPC UA {what} ({exc.strerror}): stop what uses it, or check BDI_OPCUA__HOST "
                "and BDI_OPCUA__PORT (opcua.host, opcua.port in the config)"
            ) from None


def create(settings: Settings, agent: Agent) -> OpcuaAdapter:
    """The adapter ``agent.adapters_wiring`` builds when ``opcua.enabled``."""
    return OpcuaAdapter(settings, agent)
