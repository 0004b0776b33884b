"""The OPC UA address space of contract section 10, in the namespace ``urn:bdi:<agent_id>``:

    Objects/BDI/Agent/<Status, HealthReason, Runtime, QueueSize, InferP95Ms>
    Objects/BDI/ROIs/<recipe_id>/<role_id>/<roi_id>/<Fitted, ..., Seq, ...>
    Objects/BDI/Inspect (the method, added by the adapter)
    AlertEventType (derived from BaseEventType), raised on the ROI's object

Browse names are the ids as sent. Node ids are readable strings (``BDI/ROIs/default/
Inspection/Inspection_1/Seq``) with each id percent-encoded, so an id holding ``/`` cannot
collide with another ROI's node. Every method here runs on the server's event loop.

A value the contract gives as null (the threshold of an uncalibrated ROI, ``is_anomaly`` of
an uncalibrated verdict, the coreset size of an unfitted ROI) is an OPC UA null with the
status ``BadNoValue``; a value nothing has given yet since start (the last verdict, p95)
is null with ``BadWaitingForInitialData``. No typed stand-in (false, 0) that a PLC could
take for a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

from asyncua import Node, Server, ua
from asyncua.server.event_generator import EventGenerator

VT = ua.VariantType
AGENT_VARIABLES = {
    "Status": VT.String,
    "HealthReason": VT.String,
    "Runtime": VT.String,
    "QueueSize": VT.Int32,
    "InferP95Ms": VT.Double,
}
STATE_VARIABLES = {
    "Fitted": VT.Boolean,
    "CoresetSize": VT.Int32,
    "Calibrated": VT.Boolean,
    "Threshold": VT.Double,
    "ModelVersion": VT.String,
}
# In the order a verdict writes them: ``Seq`` last, so a client that sees it change
# reads the verdict it announces.
VERDICT_VARIABLES = {
    "LastScore": VT.Double,
    "LastIsAnomaly": VT.Boolean,
    "LastRegionCount": VT.Int32,
    "LastMaxAreaMm2": VT.Double,
    "LastRequestId": VT.String,
    "LastSource": VT.String,
    "LastTimestamp": VT.DateTime,
    "InspectedCount": VT.UInt64,
    "AnomalyCount": VT.UInt64,
    "ConsecutiveAnomalies": VT.Int32,
    "Seq": VT.UInt64,
}
ROI_VARIABLES = {**STATE_VARIABLES, **VERDICT_VARIABLES}
ALERT_FIELDS = {
    "Kind": VT.String,
    "Count": VT.Int32,
    "Since": VT.DateTime,
    "LastRequestId": VT.String,
    "RecipeId": VT.String,
    "RoleId": VT.String,
    "RoiId": VT.String,
}
SEVERITY = {"consecutive_anomalies": 700, "cleared": 100}

NO_VALUE = ua.StatusCodes.BadNoValue  # the contract's null
NOT_YET = ua.StatusCodes.BadWaitingForInitialData  # nothing given since start

RoiIds = tuple[str, str, str]  # recipe_id, role_id, roi_id


def string_id(name: str, ns: int) -> ua.NodeId:
    return ua.NodeId(ua.String(name), ua.Int16(ns))


def type_id(vtype: VT) -> ua.NodeId:
    """The node id of a built-in data type (Boolean, Int32, Double, String, ...)."""
    return ua.NodeId(ua.Int32(vtype.value))


def status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def ids_of(body: dict[str, Any]) -> RoiIds:
    return (body.get("recipe_id") or "default", body["role_id"], body["roi_id"])


def parse_time(value: Any) -> datetime | None:
    """An event's ISO 8601 time (``...Z``) as the aware datetime OPC UA carries."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def typed(value: Any, vtype: VT) -> Any:
    """``value`` as the Python type asyncua encodes as ``vtype``; None stays None."""
    if value is None:
        return None
    if vtype == VT.Double:
        return float(value)
    if vtype in (VT.Int32, VT.UInt64):
        return int(value)
    if vtype == VT.Boolean:
        return bool(value)
    if vtype == VT.DateTime:
        return parse_time(value)
    return str(value)


def data_value(
    value: Any, vtype: VT, missing: int = NO_VALUE, when: datetime | None = None
) -> ua.DataValue:
    now = cast(ua.DateTime, datetime.now(UTC))
    source = cast(ua.DateTime, when) if when else now
    value = typed(value, vtype)
    if value is None:
        return ua.DataValue(
            ua.Variant(), StatusCode=status(missing), SourceTimestamp=source, ServerTimestamp=now
        )
    return ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=source, ServerTimestamp=now)


def _quoted(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


@dataclass
class RoiNodes:
    """One ROI's object, its variables, and what the adapter counts since start."""

    node: Node
    variables: dict[str, ua.NodeId]
    alerts: EventGenerator  # raised on the ROI's object
    inspected: int = 0
    anomalies: int = 0
    consecutive: int = 0


@dataclass
class AddressSpace:
    server: Server
    ns: int
    bdi: Node  # Objects/BDI, where the Inspect method lives
    agent: dict[str, ua.NodeId]
    rois_folder: Node
    alert_type: Node
    server_alerts: EventGenerator  # the same alerts on the Server object, where SCADA listen
    rois: dict[RoiIds, RoiNodes] = field(default_factory=dict)
    _folders: dict[tuple[str, ...], Node] = field(default_factory=dict)

    @classmethod
    async def build(cls, server: Server, ns: int) -> AddressSpace:
        objects = server.nodes.objects
        bdi = await objects.add_object(string_id("BDI", ns), ua.QualifiedName("BDI", ns))
        agent_node = await bdi.add_object(string_id("BDI/Agent", ns), ua.QualifiedName("Agent", ns))
        agent = {
            name: (await _variable(agent_node, f"BDI/Agent/{name}", name, vtype, ns)).nodeid
            for name, vtype in AGENT_VARIABLES.items()
        }
        rois_folder = await bdi.add_folder(string_id("BDI/ROIs", ns), ua.QualifiedName("ROIs", ns))
        alert_type = await server.create_custom_event_type(
            ns, "AlertEventType", ua.ObjectIds.BaseEventType, list(ALERT_FIELDS.items())
        )
        server_alerts = await server.get_event_generator(alert_type, ua.ObjectIds.Server)
        return cls(server, ns, bdi, agent, rois_folder, alert_type, server_alerts)

    # -- the agent ---------------------------------------------------------------------

    async def write_agent(self, name: str, value: Any, missing: int = NO_VALUE) -> None:
        await self._write(self.agent[name], data_value(value, AGENT_VARIABLES[name], missing))

    # -- ROIs ------------------------------------------------------------------------------

    async def add_roi(self, ids: RoiIds, state: dict[str, Any]) -> RoiNodes:
        """The ROI's object with its variables: the state given, no verdict yet."""
        known = self.rois.get(ids)
        if known is not None:
            return known
        recipe_id, role_id, roi_id = ids
        role = await self._folder((recipe_id, role_id))
        node = await role.add_object(
            string_id(f"BDI/ROIs/{_quoted(*ids)}", self.ns), ua.QualifiedName(roi_id, self.ns)
        )
        variables = {}
        for name, vtype in ROI_VARIABLES.items():
            nodeid = f"BDI/ROIs/{_quoted(*ids)}/{name}"
            variables[name] = (await _variable(node, nodeid, name, vtype, self.ns)).nodeid
        alerts = await self.server.get_event_generator(self.alert_type, node.nodeid)
        roi = self.rois[ids] = RoiNodes(node, variables, alerts)
        for name in VERDICT_VARIABLES:
            await self._write(variables[name], data_value(None, ROI_VARIABLES[name], NOT_YET))
        for name in ("InspectedCount", "AnomalyCount", "ConsecutiveAnomalies"):
            await self._write(variables[name], data_value(0, ROI_VARIABLES[name]))
        await self.write_state(ids, state)
        return roi

    async def write_state(self, ids: RoiIds, state: dict[str, Any]) -> None:
        variables = self.rois[ids].variables
        values = {
            "Fitted": state.get("fitted"),
            "CoresetSize": state.get("coreset_size"),
            "Calibrated": state.get("calibrated"),
            "Threshold": state.get("threshold"),
            "ModelVersion": state.get("model_version"),
        }
        for name, value in values.items():
            await self._write(variables[name], data_value(value, STATE_VARIABLES[name]))

    async def write_verdict(self, ids: RoiIds, verdict: dict[str, Any]) -> None:
        roi = self.rois[ids]
        is_anomaly = verdict.get("is_anomaly")
        roi.inspected += 1
        if is_anomaly is True:
            roi.anomalies += 1
            roi.consecutive += 1
        elif is_anomaly is False:
            roi.consecutive = 0  # an uncalibrated verdict (null) neither counts nor ends a run
        values = {
            "LastScore": verdict.get("score"),
            "LastIsAnomaly": is_anomaly,
            "LastRegionCount": verdict.get("n_regions"),
            "LastMaxAreaMm2": verdict.get("max_area_mm2"),
            "LastRequestId": verdict.get("request_id"),
            "LastSource": verdict.get("source"),
            "LastTimestamp": verdict.get("ts"),
            "InspectedCount": roi.inspected,
            "AnomalyCount": roi.anomalies,
            "ConsecutiveAnomalies": roi.consecutive,
            "Seq": verdict.get("seq"),
        }
        when = parse_time(verdict.get("ts"))
        for name, value in values.items():  # in VERDICT_VARIABLES' order: Seq last
            dv = data_value(value, VERDICT_VARIABLES[name], when=when)
            await self._write(roi.variables[name], dv)

    async def raise_alert(self, ids: RoiIds, alert: dict[str, Any]) -> None:
        """The alert as an ``AlertEventType`` event on the ROI's object, and on the Server
        object for clients that watch every event of the server there."""
        roi = self.rois[ids]
        for generator in (roi.alerts, self.server_alerts):
            event = generator.event
            kind = str(alert.get("kind", ""))
            event.Severity = SEVERITY.get(kind, 500)
            event.SourceNode = roi.node.nodeid
            event.SourceName = f"{ids[1]}/{ids[2]}"  # what alarm lists show: role/roi
            event.Kind = kind
            event.Count = int(alert.get("count") or 0)
            event.Since = parse_time(alert.get("since")) or datetime.now(UTC)
            event.LastRequestId = str(alert.get("last_request_id") or "")
            event.RecipeId, event.RoleId, event.RoiId = ids
            await generator.trigger(message=_alert_message(ids, kind, event.Count))

    # -- helpers ----------------------------------------------------------------------------

    async def _folder(self, path: tuple[str, ...]) -> Node:
        """``ROIs/<recipe_id>`` or ``ROIs/<recipe_id>/<role_id>``, made when first needed."""
        folder = self._folders.get(path)
        if folder is None:
            parent = await self._folder(path[:-1]) if len(path) > 1 else self.rois_folder
            folder = await parent.add_folder(
                string_id(f"BDI/ROIs/{_quoted(*path)}", self.ns),
                ua.QualifiedName(path[-1], self.ns),
            )
            self._folders[path] = folder
        return folder

    async def _write(self, nodeid: ua.NodeId, value: ua.DataValue) -> None:
        await self.server.write_attribute_value(nodeid, value)


async def _variable(parent: Node, nodeid: str, name: str, vtype: VT, ns: int) -> Node:
    """A read-only variable of the given built-in type, null until first written."""
    return await parent.add_variable(
        string_id(nodeid, ns), ua.QualifiedName(name, ns), None, datatype=type_id(vtype)
    )


def _alert_message(ids: RoiIds, kind: str, count: int) -> str:
    where = f"{ids[1]}/{ids[2]} (recipe {ids[0]})"
    if kind == "consecutive_anomalies":
        return f"{count} anomalous verdicts in a row on {where}"
    if kind == "cleared":
        return f"anomalies cleared on {where} after {count} in a row"
    return f"{kind} on {where}"
