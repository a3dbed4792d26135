"""asyncpg through pgmux: run by tests/tests/sessions.rs (`python3 asyncpg_sessions.py PORT`).

asyncpg names its statements __asyncpg_stmt_N__ with a per-connection counter, so every connection uses the same
names for different texts here. Exits non-zero on any wrong result; prints `PIDS ...` and `DONE`.
"""

import asyncio
import faulthandler
import sys

import asyncpg

faulthandler.dump_traceback_later(90, exit=True)

PORT = int(sys.argv[1])
N = 20
ROUNDS = 20


async def connect():
    return await asyncpg.connect(host="127.0.0.1", port=PORT, user="alice", database="appdb", timeout=10,
                                 # pgmux shares statements by text, asyncpg's cache would hide repeated Parses
                                 statement_cache_size=100)


async def setup():
    c = await connect()
    try:
        # Simple-protocol script (no arguments): one implicit transaction.
        stmts = ["CREATE TABLE IF NOT EXISTS sessions_asyncpg_rows (conn int, v int)",
                 "DELETE FROM sessions_asyncpg_rows"]
        for i in range(N):
            stmts.append(f"DROP SCHEMA IF EXISTS sessions_asyncpg_sp{i} CASCADE")
            stmts.append(f"CREATE SCHEMA sessions_asyncpg_sp{i}")
            stmts.append(f"CREATE TABLE sessions_asyncpg_sp{i}.marker (v int)")
            stmts.append(f"INSERT INTO sessions_asyncpg_sp{i}.marker VALUES ({i})")
        await c.execute(";\n".join(stmts))
    finally:
        await c.close()


async def session(i, start):
    c = await connect()
    pids = set()
    try:
        await c.execute(f"SET search_path = sessions_asyncpg_sp{i}, public")
        await start.wait()
        add = await c.prepare(f"SELECT $1::int + {i} AS v, pg_backend_pid() AS pid")
        cat = await c.prepare(f"SELECT 'c{i}-' || $1::text")
        names = (add.get_name(), cat.get_name())
        for k in range(ROUNDS):
            row = await add.fetchrow(k)
            pids.add(row["pid"])
            assert row["v"] == k + i, f"conn {i} ({names[0]}): {row['v']} != {k + i}"
            assert await cat.fetchval(str(k)) == f"c{i}-{k}", f"conn {i} ({names[1]})"
            rows = await c.fetch(f"SELECT g * {i} FROM generate_series(1, $1::int) g", 3)
            assert [r[0] for r in rows] == [i, 2 * i, 3 * i], f"conn {i}: fetch gave {rows}"
            # search_path is per session: each schema's marker table holds its session's number.
            assert await c.fetchval("SELECT v FROM marker") == i, f"conn {i}: marker of another search_path"
            assert await c.fetchval("SHOW search_path") == f"sessions_asyncpg_sp{i}, public"
            await asyncio.sleep(0)
        # executemany: one prepared INSERT, many Bind/Execute, one Sync.
        await c.executemany("INSERT INTO sessions_asyncpg_rows VALUES ($1, $2)", [(i, k) for k in range(50)])
        got = await c.fetchval("SELECT count(*) FROM sessions_asyncpg_rows WHERE conn = $1", i)
        assert got == 50, f"conn {i}: executemany stored {got} rows"
        # A failing executemany is atomic: nothing of it stays.
        try:
            await c.executemany("INSERT INTO sessions_asyncpg_rows VALUES ($1, 100 / $2)", [(i, 1), (i, 0), (i, 2)])
        except asyncpg.DivisionByZeroError:
            pass
        else:
            raise AssertionError(f"conn {i}: executemany with 1/0 did not fail")
        got = await c.fetchval("SELECT count(*) FROM sessions_asyncpg_rows WHERE conn = $1", i)
        assert got == 50, f"conn {i}: failed executemany left rows ({got})"
        # Statements still work after the error.
        assert (await add.fetchrow(1))["v"] == 1 + i
        return pids
    finally:
        await c.close()


async def main():
    print("asyncpg", asyncpg.__version__, flush=True)
    await setup()
    start = asyncio.Event()
    tasks = [asyncio.ensure_future(session(i, start)) for i in range(N)]
    await asyncio.sleep(0.05)
    start.set()
    results = await asyncio.gather(*tasks)
    pids = set().union(*results)
    print("PIDS", " ".join(str(p) for p in sorted(pids)), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
