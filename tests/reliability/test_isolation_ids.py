"""Ids and topics that must never take MQTT down (issue 18, point 1), against a real
mosquitto: ids that cannot be topic levels are refused, a ROI stored under one by an
older version is skipped at every reconnect, paho's callbacks never wait on a publish, and
every id ``check_id`` accepts makes topics mosquitto takes (a property test)."""

# Fixtures come from tests/adapters/conftest.py and tests/reliability/hostile.py.
# ruff: noqa: F811

from __future__ import annotations

import threading

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from adapters.mqtt.topics import Topics
from engine.errors import BadInput
from engine.keys import RoiKey, check_id
from tests.adapters.conftest import broker, mqtt_agent, wait_connected  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.hostile import bounded, hypothesis_home  # noqa: F401
from tests.reliability.isolation_support import MM, ROI, ask, b64, fit, still_serving

PREFIX = "bdi/line1"
# What mosquitto refuses in a topic (it drops the connection): C0, DEL, C1, non-characters.
NOT_TOPIC_TEXT = ["bad\x7f", "c1\x85", "x\x9f", "nc\ufdd0", "nc\ufffe", "nc\uffff", "p\U0001fffe"]


@pytest.mark.reliability("bad_input", "ids that are no MQTT topic level: DEL, C1, non-characters")
def test_ids_that_cannot_be_topics_are_refused_and_mqtt_stays_up(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, adapter = mqtt_agent(broker.port)
    fit(agent, ok_pngs[:3])
    plc = Client(broker.port, client_id="plc-ids")
    refused = 0
    try:
        for bad in NOT_TOPIC_TEXT:
            for field in ("role_id", "roi_id"):
                payload = {**ROI, field: bad, "mm_per_px": MM, "images": [b64(ok_pngs[0])]}
                reply = ask(plc, PREFIX, "fit_ok", **payload)
                assert not reply["ok"] and reply["error"]["kind"] == "bad_request", reply
                assert field in reply["error"]["message"]
                refused += 1
        still_serving(plc, adapter, PREFIX, ok_pngs[5])
        assert adapter.outbox.drain(30) and adapter.spool.size == 0
    finally:
        plc.close()
    record_property("tried", refused)
    record_property("failures", 0)
    record_property("detail", f"{refused} fit_ok with such ids refused; MQTT stayed connected")


@pytest.mark.reliability("fault", "a ROI stored under a DEL id by an older version, reconnects")
def test_a_stored_roi_whose_id_is_no_topic_is_skipped_at_every_reconnect(
    fresh_broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, adapter = mqtt_agent(fresh_broker.port)
    fit(agent, ok_pngs[:3])
    good = RoiKey.of(ROI["role_id"], ROI["roi_id"])
    # As an older version stored it: the key is built past check_id, as roi_keys() does.
    bad = RoiKey("bad\x7f", "z")
    agent.services.models.save_memory(bad, agent.services.cache.get(good))
    watcher = Client(fresh_broker.port, client_id="watcher", subscribe=(f"{PREFIX}/#",))
    state = f"{PREFIX}/roi/{ROI['role_id']}/{ROI['roi_id']}/state"
    try:
        for _ in range(2):  # every connect republishes every ROI state
            fresh_broker.stop()
            wait_connected(agent, state="disconnected")
            watcher.messages.clear()
            fresh_broker.start()
            wait_connected(agent)
            watcher.wait_for(lambda t, b: t == state, timeout=60)
            still_serving(watcher, adapter, PREFIX, ok_pngs[5])
        assert adapter.outbox.rejected >= 2  # the bad state, once per connect, never sent
        assert adapter.spool.size == 0
    finally:
        watcher.close()
    record_property("tried", 2)
    record_property("failures", 0)
    record_property("detail", "2 reconnects: the bad ROI state dropped and logged, MQTT stayed up")


@pytest.mark.reliability("fault", "paho's on_disconnect while a publish waits on paho's lock")
def test_on_disconnect_never_waits_for_a_publish(
    broker: Broker, mqtt_agent, record_property
) -> None:
    """paho calls ``on_disconnect`` holding its ``_out_message_mutex``; a publish on another
    thread waits for that same mutex. The callback must not wait for that thread."""
    agent, adapter = mqtt_agent(broker.port)
    client = adapter.client
    in_publish = threading.Event()
    returned = threading.Event()

    def publish_blocked() -> None:
        in_publish.set()
        adapter.outbox.publish(f"{PREFIX}/probe", b"1")  # waits for paho's mutex

    def paho_thread() -> None:
        with client._out_message_mutex:  # what paho holds around on_disconnect
            adapter.outbox.post(publish_blocked)
            assert in_publish.wait(30)
            reason = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)
            adapter._on_disconnect(client, None, None, reason, None)
            returned.set()

    thread = threading.Thread(target=paho_thread, daemon=True)
    thread.start()
    thread.join(60)
    assert returned.is_set(), "on_disconnect waited for the publishing thread: deadlock"
    assert adapter.outbox.drain(30)  # and the publish went on once paho let go
    assert agent.bus.mqtt_state == "disconnected"  # as the callback said
    record_property("tried", 1)
    record_property("failures", 0)
    record_property("detail", "on_disconnect returned while the outbox waited in publish")


# -- every accepted id makes topics mosquitto takes ----------------------------------------

ODD = (
    "\x00\x1f\x7f\x80\x85\x9f\xa0\u00ad\u2028\u202e\ufdcf\ufdd0\ufdef\ufdf0\ufeff\ufffd\ufffe\uffff"
)
ID_CHARS = st.one_of(
    st.sampled_from([*ODD, "\U0001fffe", "\U0001ffff", "\U0010ffff", "+", "#", "/", "%", "$"]),
    st.characters(exclude_categories=()),  # every code point, lone surrogates included
)


@pytest.mark.reliability("bad_input", "every id check_id accepts makes topics mosquitto takes")
def test_every_accepted_id_makes_topics_mosquitto_accepts(
    broker: Broker, hypothesis_home, record_property
) -> None:
    topics = Topics.of("bdi", "prop", None, None)
    subscriber = Client(broker.port, client_id="prop-sub", subscribe=("bdi/prop/#",))
    publisher = Client(broker.port, client_id="prop-pub", subscribe=())
    drops: list[object] = []
    publisher.client.on_disconnect = lambda *args: drops.append(args[3])
    tally = {"accepted": 0, "refused": 0}

    @bounded(300)
    @given(role=st.text(ID_CHARS, max_size=40), roi=st.text(ID_CHARS, max_size=40))
    @example(role="bad\x7f", roi="z")
    @example(role="x" * 30, roi="é" * 45)
    def run(role: str, roi: str) -> None:
        try:
            check_id("role_id", role)
            check_id("roi_id", roi)
        except BadInput:
            tally["refused"] += 1
            return
        tally["accepted"] += 1
        for leaf in ("state", "last", "alert"):
            topic = topics.roi(role, roi, leaf)
            publisher.client.publish(topic, b"{}", qos=1)
            subscriber.wait_for(lambda t, b, topic=topic: t == topic, timeout=10)
        assert not drops, f"mosquitto dropped the connection: {drops}"

    try:
        run()
        dropped = len(drops)  # before our own disconnect below adds one
    finally:
        subscriber.close()
        publisher.close()
    record_property("tried", tally["accepted"] + tally["refused"])
    record_property("failures", dropped)
    record_property(
        "detail",
        f"{tally['accepted']} accepted id pairs, each as state/last/alert topics, all "
        f"delivered by mosquitto; {tally['refused']} refused by check_id",
    )
    assert tally["accepted"] > 50 and tally["refused"] > 20
