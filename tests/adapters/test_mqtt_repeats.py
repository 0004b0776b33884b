"""The store of replies kept for repeated reads (``adapters.mqtt.repeats``): what a repeat
is, and that everything it holds counts against its byte cap."""

from __future__ import annotations

import time

from adapters.mqtt.repeats import ENTRY_BYTES, RecentReplies, Sent, repeat_key


def reply(size: int) -> Sent:
    return Sent("bdi/line1/result/infer", b"x" * size, None)


def test_a_repeat_gets_the_first_reply_and_another_request_runs() -> None:
    store = RecentReplies(max_bytes=1_000_000)
    key = repeat_key("infer", "part-1", "digest-a")
    assert store.claim(key) == (True, None)
    assert store.claim(key) == (False, None)  # in flight: the repeat is dropped
    store.answered(key, reply(100))
    assert store.claim(key) == (False, reply(100))
    assert store.claim(repeat_key("infer", "part-1", "digest-b")) == (True, None)  # other inputs
    assert store.claim(repeat_key("manifest", "part-1", "digest-a")) == (True, None)


def test_a_failed_request_is_forgotten_so_its_retry_runs() -> None:
    store = RecentReplies(max_bytes=1_000_000)
    key = repeat_key("infer", "busy-1", "d")
    store.claim(key)
    store.forget(key)
    assert store.claim(key) == (True, None)
    assert len(store) == 1 and store.total_bytes == ENTRY_BYTES


def test_a_request_in_flight_too_long_is_taken_as_lost() -> None:
    store = RecentReplies(max_bytes=1_000_000, in_flight_s=0.05)
    key = repeat_key("infer", "lost-1", "d")
    store.claim(key)
    assert store.claim(key) == (False, None)
    time.sleep(0.1)
    assert store.claim(key) == (True, None)  # its reply never came: the retry runs
    store.answered(key, reply(10))
    time.sleep(0.1)
    assert store.claim(key) == (False, reply(10))  # answered: repeats get the answer


def test_an_answer_is_replayed_only_for_a_while() -> None:
    store = RecentReplies(max_bytes=1_000_000, replay_s=0.05)
    key = repeat_key("infer", "part-7", "d")
    store.claim(key)
    store.answered(key, reply(10))
    assert store.claim(key) == (False, reply(10))
    time.sleep(0.1)
    assert store.claim(key) == (True, None)  # the model may have changed: judged anew
    assert len(store) == 1 and store.total_bytes == ENTRY_BYTES


def test_keys_have_one_size_whatever_the_request_id() -> None:
    short = repeat_key("infer", "a", "d")
    long = repeat_key("infer", "é" * 200, "d" * 64)
    assert len(short) == len(long) == 32 and short != long
    assert repeat_key("infer", "a\0b", "c") != repeat_key("infer", "a", "b\0c")


def test_every_entry_counts_and_the_oldest_go_first() -> None:
    cap = 10 * (ENTRY_BYTES + 1000)
    store = RecentReplies(max_bytes=cap)
    keys = [repeat_key("infer", f"r-{i}", "d") for i in range(25)]
    for key in keys:
        store.claim(key)
        store.answered(key, reply(1000 - len("bdi/line1/result/infer")))
        assert store.total_bytes <= cap
    assert len(store) == 10
    assert store.claim(keys[-1])[0] is False  # the newest are kept
    assert store.claim(keys[0])[0] is True  # the oldest went: it runs again
    # Claims in flight count too: a flood of ids never answered stays within the cap.
    for i in range(10_000):
        store.claim(repeat_key("infer", f"flood-{i}", "d"))
    assert store.total_bytes <= cap and len(store) <= cap // ENTRY_BYTES


def test_a_reply_bigger_than_the_store_is_not_kept_and_a_count_cap_holds() -> None:
    store = RecentReplies(max_bytes=5000, max_entries=3)
    key = repeat_key("infer", "huge", "d")
    store.claim(key)
    store.answered(key, reply(6000))
    assert store.claim(key) == (True, None) and store.total_bytes == ENTRY_BYTES
    for i in range(5):
        store.claim(repeat_key("infer", f"n-{i}", "d"))
    assert len(store) == 3
