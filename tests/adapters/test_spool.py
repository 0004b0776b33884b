"""The MQTT disk spool on real files: order, byte cap, restart."""

from pathlib import Path

from adapters.spool import Spool


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
