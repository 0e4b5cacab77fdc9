"""The cluster script pipe on a real Redis Cluster: each call on the master of its slot, one connection per
master, redirects during and after a slot migration, a node that lost its scripts, a master restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.crc import key_slot

from services.common.cluster_script_pipe import ClusterScriptPipe
from services.common.script_pipe import ScriptPipeError
from tests.cluster.conftest import ClusterNode, LoopbackCluster

INCR = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
async def pipe(clean_cluster: LoopbackCluster) -> AsyncIterator[ClusterScriptPipe]:
    """A cluster pipe running INCR, configured with REDIS_URL at the first master."""
    cluster_pipe = ClusterScriptPipe(clean_cluster.url, INCR, call_timeout=2, connect_timeout=1, decode=True)
    yield cluster_pipe
    await cluster_pipe.aclose()


def evalsha_calls(node: ClusterNode) -> int:
    """How many EVALSHA commands `node` received (ran, or answered with a redirect) since its statistics were
    reset."""
    with node.client() as conn:
        stats = conn.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


def reset_stats(cluster: LoopbackCluster) -> None:
    """Zero every master's command statistics."""
    for node in cluster.masters:
        with node.client() as conn:
            conn.config_resetstat()


async def test_concurrent_calls_run_on_the_master_of_their_slot_over_one_connection_each(
    clean_cluster: LoopbackCluster, pipe: ClusterScriptPipe
) -> None:
    keys = clean_cluster.keys_on_each_master("share:")
    reset_stats(clean_cluster)
    results = await asyncio.gather(*(pipe.evalsha([keys[n % 3]], []) for n in range(300)))
    for n in range(3):
        assert sorted(results[n::3]) == list(range(1, 101))  # every call of each key ran once, in some order
    for key, master in zip(keys, clean_cluster.masters, strict=True):
        with master.client() as conn:
            assert conn.get(key) == "100"
            pipe_connections = [c for c in conn.client_list() if c["cmd"] == "evalsha"]
        # Each master ran exactly its share, every call of it on the pipe's one connection.
        assert evalsha_calls(master) == 100
        assert len(pipe_connections) == 1


async def test_a_slot_moved_to_another_master_is_followed_and_then_sent_there_directly(
    clean_cluster: LoopbackCluster, pipe: ClusterScriptPipe
) -> None:
    source, target = clean_cluster.masters[0], clean_cluster.masters[1]
    key = clean_cluster.keys_on_each_master("moved:")[0]
    assert [await pipe.evalsha([key], []) for _ in range(2)] == [1, 2]
    slot = key_slot(key.encode())
    clean_cluster.begin_migration(slot, source, target, [key])
    clean_cluster.end_migration(slot, target)
    reset_stats(clean_cluster)

    assert [await pipe.evalsha([key], []) for _ in range(5)] == [3, 4, 5, 6, 7]
    # The first call met MOVED on the old owner; the map was patched, so the other four went straight.
    assert evalsha_calls(source) == 1
    assert evalsha_calls(target) == 5
    with target.client() as conn:
        assert conn.get(key) == "7"


async def test_a_slot_being_migrated_is_served_where_its_keys_are_while_the_map_stays(
    clean_cluster: LoopbackCluster, pipe: ClusterScriptPipe
) -> None:
    source, target = clean_cluster.masters[2], clean_cluster.masters[0]
    key = clean_cluster.keys_on_each_master("ask:")[2]
    new_key = f"{key}:new"  # same hash tag, same slot, not yet written anywhere
    assert await pipe.evalsha([key], []) == 1
    slot = key_slot(key.encode())
    clean_cluster.begin_migration(slot, source, target, [key])
    reset_stats(clean_cluster)

    # The old owner no longer has the keys: it answers ASK, the importing node serves the call after ASKING.
    assert await pipe.evalsha([key], []) == 2
    assert await pipe.evalsha([new_key], []) == 1
    assert await pipe.evalsha([key], []) == 3
    assert evalsha_calls(source) == 3  # every call still went to the owner first: the map is unchanged
    assert evalsha_calls(target) == 3
    clean_cluster.end_migration(slot, target)
    assert await pipe.evalsha([key], []) == 4
    with target.client() as conn:
        assert (conn.get(key), conn.get(new_key)) == ("4", "1")


async def test_a_master_that_lost_its_scripts_loads_the_script_again(
    clean_cluster: LoopbackCluster, pipe: ClusterScriptPipe
) -> None:
    keys = clean_cluster.keys_on_each_master("noscript:")
    assert [await pipe.evalsha([key], []) for key in keys] == [1, 1, 1]
    with clean_cluster.masters[1].client() as conn:
        conn.script_flush()
    assert [await pipe.evalsha([key], []) for key in keys] == [2, 2, 2]
    with clean_cluster.masters[1].client() as conn:
        assert conn.script_exists(pipe.seed.sha.decode()) == [True]


async def test_a_master_down_fails_only_its_calls_and_serves_them_again_once_restarted(
    clean_cluster: LoopbackCluster, pipe: ClusterScriptPipe
) -> None:
    keys = clean_cluster.keys_on_each_master("restart:")
    assert [await pipe.evalsha([key], []) for key in keys] == [1, 1, 1]
    down = clean_cluster.masters[1]
    down.kill()
    with pytest.raises(ScriptPipeError):
        await pipe.evalsha([keys[1]], [])
    # The other masters' connections are their own: their calls go on.
    assert [await pipe.evalsha([keys[0]], []), await pipe.evalsha([keys[2]], [])] == [2, 2]

    down.start()
    down.wait_answering()
    clean_cluster.wait_ok()
    # Restarted without its data (no persistence here) and without its scripts: the pipe reconnects, loads.
    assert await pipe.evalsha([keys[1]], []) == 1
    assert [await pipe.evalsha([keys[0]], []), await pipe.evalsha([keys[2]], [])] == [3, 3]


async def test_after_a_failover_the_calls_go_to_the_promoted_replica(replicated_cluster: LoopbackCluster) -> None:
    replica = replicated_cluster.replicas[2]
    # REDIS_URL may name a replica: the map (and the masters) are learnt from it.
    pipe = ClusterScriptPipe(replica.url, INCR, call_timeout=1, connect_timeout=0.5, decode=True)
    try:
        key = replicated_cluster.keys_on_each_master("failover:")[2]
        assert [await pipe.evalsha([key], []) for _ in range(5)] == [1, 2, 3, 4, 5]
        old_master = replicated_cluster.masters[2]
        replicated_cluster.wait_until(lambda: replica_in_sync(replica, old_master), "the replica to catch up")
        old_master.kill()
        answers: list[int | str] = []
        deadline = asyncio.get_running_loop().time() + 20
        while not answers or answers[-1] == "failed":
            assert asyncio.get_running_loop().time() < deadline, "no answer after the failover"
            try:
                answers.append(await pipe.evalsha([key], []))
            except ScriptPipeError:
                answers.append("failed")
                await asyncio.sleep(0.05)
        # Calls failed (none hung) until the replica took over, then the count went on from what it holds.
        assert answers[-1] == 6 and set(answers[:-1]) <= {"failed"}
        assert replicated_cluster.master_of(key) is replica
    finally:
        await pipe.aclose()
        replicated_cluster.masters[2].start()  # back, as a replica of the promoted one


def replica_in_sync(replica: ClusterNode, master: ClusterNode) -> bool:
    """Whether `replica` has received everything `master` wrote."""
    with master.client() as conn:
        written = conn.info("replication")["master_repl_offset"]
    with replica.client() as conn:
        return bool(conn.info("replication").get("slave_repl_offset") == written)
