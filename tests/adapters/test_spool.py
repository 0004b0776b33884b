"""The MQTT disk spool on real files: order, byte cap, restart, files set aside, one spool
per agent."""

from pathlib import Path

from adapters.mqtt.spool import REJECTED, Spool, spool_folder


def test_order_cap_count_and_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    for i in range(5):
        spool.append("t", f'{{"n": {i}, "pad": "{"x" * 1000}"}}'.encode(), expiry_s=60)
    assert spool.size == 5 and spool.dropped == 0
    first_two = spool.pending(2)
    assert [m.payload[:8] for m in first_two] == [b'{"n": 0,', b'{"n": 1,']
    spool.remove(first_two[0])
    assert spool.size == 4
    for i in range(5, 15):  # over the cap: the oldest go first, and are counted
        spool.append("t", f'{{"n": {i}, "pad": "{"x" * 1000}"}}'.encode())
    assert spool.dropped > 0 and spool.total_bytes <= 10_000
    reopened = Spool(tmp_path, max_bytes=10_000)  # an agent restart
    assert reopened.size == spool.size == len(reopened.pending())
    numbers = [int(m.payload.split(b",")[0].split(b":")[1]) for m in reopened.pending()]
    assert numbers == sorted(numbers) and numbers[-1] == 14


def test_files_that_cannot_be_sent_are_moved_aside_and_strays_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append("t", b'{"n": 0}')
    (tmp_path / f"{2:020d}.json").write_bytes(b"{not json")  # cut short by a disk fault
    (tmp_path / "notes.json").write_text("{}")  # not a spool file: never read, never counted
    spool = Spool(tmp_path, max_bytes=10_000)  # a restart finds them
    spool.append("t", b'{"n": 3}')
    assert spool.size == 3
    assert [m.payload for m in spool.pending()] == [b'{"n": 0}', b'{"n": 3}']
    assert spool.size == 2 and spool.rejected == 1  # the unreadable one no longer counts
    assert (tmp_path / REJECTED / f"{2:020d}.json").read_bytes() == b"{not json"
    first = spool.pending(1)[0]
    spool.set_aside(first.path, "a topic no broker takes")
    assert [m.payload for m in spool.pending()] == [b'{"n": 3}'] and spool.rejected == 2
    assert (tmp_path / "notes.json").exists()


def test_each_agent_spools_apart_and_takes_over_the_shared_layout(tmp_path: Path) -> None:
    shared = tmp_path / "spool" / "mqtt"
    older = Spool(shared, max_bytes=10_000)  # what an earlier version wrote, for any agent
    for n in range(3):
        older.append("t", f'{{"n": {n}}}'.encode())
    a = Spool(spool_folder(tmp_path, "line-a"), 10_000, legacy=shared)
    b = Spool(spool_folder(tmp_path, "line-b"), 10_000, legacy=shared)
    assert [m.payload for m in a.pending()] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert b.size == 0 and not list(shared.glob("*.json"))
    for spool, name in ((a, b"a"), (b, b"b")):
        spool.append("t", name)
    assert [m.payload for m in b.pending()] == [b"b"]  # never one another's files
    assert a.pending()[-1].payload == b"a" and a.size == 4
