"""The SQLite spool: order, bounds, quarantine, and what survives a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from appliance.archive.spool import Dropped, Spool


def lines(n: int, tag: str = "a") -> bytes:
    # Incompressible enough that the stored size grows with n.
    return "\n".join(f"m,t={tag}{i} v={i * 7919 % 10007}.{i} {i}" for i in range(n)).encode()


def test_batches_come_out_oldest_first_and_unchanged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1_000_000, max_age_s=3600)
    first, second = lines(3, "x"), lines(5, "y")
    spool.add(first, 3, 100.0)
    spool.add(second, 5, 101.0)
    assert spool.depth().batches == 2
    assert spool.depth().lines == 8
    assert spool.depth().oldest_s == 100.0
    head = spool.oldest()
    assert head is not None
    assert (head.payload, head.lines, head.attempts) == (first, 3, 0)
    spool.record_attempt(head.id)
    again = spool.oldest()
    assert again is not None
    assert again.attempts == 1
    spool.remove(head.id)
    nxt = spool.oldest()
    assert nxt is not None
    assert nxt.payload == second
    spool.close()


def test_the_spool_is_stored_compressed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1_000_000, max_age_s=3600)
    payload = b"\n".join([b"grid,site=s active_power=1.5 1767225600000"] * 500)
    spool.add(payload, 500, 1.0)
    assert 0 < spool.depth().bytes < len(payload) / 10
    spool.close()


def test_over_max_bytes_the_oldest_batches_are_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=20_000, max_age_s=3600)
    dropped = Dropped()
    for k in range(10):
        dropped = dropped + spool.add(lines(400, f"b{k}"), 400, 100.0 + k)
    depth = spool.depth()
    assert depth.bytes <= 20_000
    assert dropped.batches == 10 - depth.batches
    assert dropped.lines == 400 * dropped.batches
    assert depth.oldest_s == 100.0 + dropped.batches  # the newest are kept
    spool.close()


def test_a_single_batch_larger_than_max_bytes_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=100, max_age_s=3600)
    assert spool.add(lines(500), 500, 1.0) == Dropped()
    assert spool.depth().batches == 1
    spool.close()


def test_batches_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1_000_000, max_age_s=60)
    spool.add(lines(2), 2, 1000.0)
    spool.add(lines(3), 3, 1050.0)
    assert spool.expire(now_s=1070.0) == Dropped(1, 2)
    assert spool.depth().oldest_s == 1050.0
    assert spool.expire(now_s=1070.0) == Dropped()
    spool.close()


def test_quarantine_keeps_the_refused_batch_and_its_reason_out_of_the_queue(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1_000_000, max_age_s=3600)
    spool.add(b"bad line", 1, 1.0)
    spool.add(b"m v=1 1", 1, 2.0)
    head = spool.oldest()
    assert head is not None
    spool.quarantine(head.id, 400, "unable to parse 'bad line'", now_s=5.0)
    nxt = spool.oldest()
    assert nxt is not None
    assert nxt.payload == b"m v=1 1"
    [kept] = spool.quarantined()
    assert (kept.payload, kept.status, kept.quarantined_s) == (b"bad line", 400, 5.0)
    assert "unable to parse" in kept.reason
    spool.close()


def test_quarantine_is_bounded_to_a_share_of_max_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=50_000, max_age_s=3600)
    for k in range(20):
        spool.add(lines(200, f"q{k}"), 200, float(k))
        head = spool.oldest()
        assert head is not None
        spool.quarantine(head.id, 400, "bad", now_s=float(k))
    kept = spool.quarantined()
    assert 1 <= len(kept) < 20
    assert sum(len(k.payload) for k in kept) > 0
    assert kept[0].id > kept[-1].id  # newest first, the newest kept
    spool.close()


def test_a_batch_committed_by_a_process_that_then_dies_is_still_there(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    child = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from appliance.archive.spool import Spool
        spool = Spool(Path({str(path)!r}), max_bytes=1_000_000, max_age_s=3600)
        spool.add(b"m v=1 1", 1, 1.0)
        os._exit(0)  # no close, no clean-up: as a kill right after the commit
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=30, env=dict(os.environ))
    spool = Spool(path, max_bytes=1_000_000, max_age_s=3600)
    head = spool.oldest()
    assert head is not None
    assert head.payload == b"m v=1 1"
    spool.close()


def test_an_unreadable_spool_file_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 200)
    spool = Spool(path, max_bytes=1_000_000, max_age_s=3600)
    assert spool.depth().batches == 0
    spool.add(b"m v=1 1", 1, 1.0)
    assert spool.durable
    assert [p.name.startswith("s.sqlite.corrupt-") for p in tmp_path.iterdir()].count(True) == 1
    spool.close()


def test_an_in_memory_spool_works_but_is_not_durable() -> None:
    spool = Spool(None, max_bytes=1_000_000, max_age_s=3600)
    spool.add(b"m v=1 1", 1, 1.0)
    assert spool.depth().batches == 1
    assert not spool.durable
    spool.close()
