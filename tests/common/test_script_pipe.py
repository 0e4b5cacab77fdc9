"""services.common.script_pipe against a real Redis: the database the URL names, errors, reconnects."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from services.common.script_pipe import ScriptPipe, ScriptPipeError, ScriptReplyError
from tests.conftest import TEST_REDIS_DB, redis_url_for

SET_AND_COUNT = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('DBSIZE')"


async def test_the_database_is_taken_from_the_url_as_redis_py_takes_it() -> None:
    # `?db=` (not only the path) names the database: the pipe must write where the service's other calls read.
    base = redis_url_for(0).rsplit("/", 1)[0]
    key = f"pipe-{uuid.uuid4().hex}"
    pipe = ScriptPipe(f"{base}?db={TEST_REDIS_DB + 1}", SET_AND_COUNT, call_timeout=2, connect_timeout=2)
    reader = Redis.from_url(redis_url_for(1), decode_responses=True)
    try:
        assert await pipe.evalsha([key], ["here"]) >= 1
        assert await reader.get(key) == "here"
    finally:
        await pipe.aclose()
        await reader.aclose()


async def test_replies_stay_with_their_callers_around_an_error_reply() -> None:
    script = "if ARGV[1] == 'bad' then return redis.error_reply('REFUSED ' .. ARGV[2]) end return ARGV[2]"
    pipe = ScriptPipe(redis_url_for(0), script, call_timeout=2, connect_timeout=2, decode=True)
    try:
        calls = [pipe.evalsha([], ["bad" if n % 3 == 0 else "ok", str(n)]) for n in range(30)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for n, result in enumerate(results):
            if n % 3 == 0:
                assert isinstance(result, ScriptReplyError) and str(result) == f"REFUSED {n}"
            else:
                assert result == str(n)
    finally:
        await pipe.aclose()


async def test_a_caller_cancelled_while_connecting_leaves_one_connection_for_the_next() -> None:
    pipe = ScriptPipe(redis_url_for(0), "return 1", call_timeout=2, connect_timeout=2)
    try:
        first = asyncio.ensure_future(pipe.evalsha([], []))
        await asyncio.sleep(0)  # the connect has started
        first.cancel()
        await asyncio.sleep(0.2)
        opened = pipe.conn
        assert opened is not None and not opened.closed  # kept, not lost with the cancelled caller
        assert await pipe.evalsha([], []) == 1
        assert pipe.conn is opened  # reused: no second connection
    finally:
        await pipe.aclose()


async def test_unsupported_url_options_are_refused_and_a_dead_redis_is_a_connection_error() -> None:
    with pytest.raises(ValueError, match="socket_keepalive"):
        ScriptPipe("redis://127.0.0.1:6379/0?socket_keepalive=true", "return 1", call_timeout=1, connect_timeout=1)
    pipe = ScriptPipe("redis://127.0.0.1:1/0", "return 1", call_timeout=1, connect_timeout=1)
    with pytest.raises(ScriptPipeError):
        await pipe.evalsha([], [])
