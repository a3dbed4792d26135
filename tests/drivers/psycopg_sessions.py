"""psycopg 3 through pgmux: run by tests/tests/sessions.rs (`python3 psycopg_sessions.py PORT`).

Exits non-zero (with a traceback) on any wrong result. Prints `PIDS <pid> ...` (the backend pids the sessions saw)
and `DONE` at the end. Missing psycopg is an ImportError: loud, never a skip.
"""

import faulthandler
import sys
import threading

import psycopg
from psycopg import errors

faulthandler.dump_traceback_later(90, exit=True)

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} dbname=appdb user=alice connect_timeout=10"
N = 20
ROUNDS = 25

pids = set()
pids_lock = threading.Lock()
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg, flush=True)


def prepared_everything(i, barrier):
    """prepare_threshold=0: every query is prepared server-side under psycopg's own names (_pg3_0, _pg3_1, ...),
    which are the same in every connection while the texts differ per connection."""
    try:
        with psycopg.connect(DSN, prepare_threshold=0, autocommit=True) as conn:
            # Different texts per connection, prepared in the same order, so _pg3_0/_pg3_1 name different things.
            q_add = f"SELECT %s::int + {i}, pg_backend_pid()"
            q_cat = f"SELECT 'conn{i}-' || %s::text"
            conn.execute(f"SET statement_timeout = '{1234 + i}ms'")
            barrier.wait(timeout=30)
            mine = set()
            for k in range(ROUNDS):
                v, pid = conn.execute(q_add, (k,)).fetchone()
                mine.add(pid)
                (s,) = conn.execute(q_cat, (f"r{k}",)).fetchone()
                (st,) = conn.execute("SHOW statement_timeout").fetchone()
                # One report per connection: the first wrong result.
                if v != k + i:
                    return fail(f"conn {i} round {k}: {q_add!r} with {k} gave {v}, want {k + i}")
                if s != f"conn{i}-r{k}":
                    return fail(f"conn {i} round {k}: {q_cat!r} gave {s!r}")
                if st != f"{1234 + i}ms":
                    with pids_lock:
                        pids.update(mine)
                    return fail(f"conn {i} round {k}: statement_timeout {st!r}, want {1234 + i}ms")
            with pids_lock:
                pids.update(mine)
    except threading.BrokenBarrierError:
        fail(f"conn {i}: another connection failed before the start")
    except Exception as e:  # reported below, the thread must not die silently
        fail(f"conn {i}: {type(e).__name__}: {e}")


def pipeline_checks():
    with psycopg.connect(DSN, prepare_threshold=0, autocommit=True) as conn:
        # A clean pipeline: several statements, one Sync at the end, results read afterwards.
        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int * 2", (21,))
            c2 = conn.execute("SELECT %s::text || 'b'", ("a",))
            c3 = conn.execute("SELECT g FROM generate_series(1, %s) g", (3,))
        assert c1.fetchone() == (42,), "pipeline c1"
        assert c2.fetchone() == ("ab",), "pipeline c2"
        assert c3.fetchall() == [(1,), (2,), (3,)], "pipeline c3"

        # A failing statement in the middle: the ones after it are skipped up to the Sync.
        conn.execute("CREATE TABLE IF NOT EXISTS sessions_psycopg_pipe (id int, who text)")
        conn.execute("DELETE FROM sessions_psycopg_pipe WHERE who = 'pipe'")
        got_error = None
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO sessions_psycopg_pipe VALUES (%s, 'pipe')", (1,))
                conn.execute("SELECT 1 / %s::int", (0,))
                conn.execute("INSERT INTO sessions_psycopg_pipe VALUES (%s, 'pipe')", (3,))
        except errors.DivisionByZero as e:
            got_error = e
        except psycopg.errors.PipelineAborted as e:  # some versions surface the skipped statement first
            got_error = e
        assert got_error is not None, "pipeline with 1/0 raised nothing"
        # One implicit transaction up to the Sync: nothing of it stayed.
        (n,) = conn.execute("SELECT count(*) FROM sessions_psycopg_pipe WHERE who = 'pipe'").fetchone()
        assert n == 0, f"{n} rows of the failed pipeline were committed"
        # The connection is fine afterwards, in and out of pipeline mode.
        assert conn.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)
        with conn.pipeline():
            c = conn.execute("SELECT %s::text", ("after",))
        assert c.fetchone() == ("after",)

        # An explicit Sync inside one pipeline: the part before it commits, the failing part does not.
        try:
            with conn.pipeline() as p:
                conn.execute("INSERT INTO sessions_psycopg_pipe VALUES (%s, 'pipe')", (10,))
                p.sync()
                conn.execute("INSERT INTO sessions_psycopg_pipe VALUES (%s, 'pipe')", (11,))
                conn.execute("SELECT 1 / %s::int", (0,))
        except (errors.DivisionByZero, psycopg.errors.PipelineAborted):
            pass
        else:
            raise AssertionError("second pipeline with 1/0 raised nothing")
        ids = [r[0] for r in conn.execute("SELECT id FROM sessions_psycopg_pipe WHERE who = 'pipe' ORDER BY id")]
        assert ids == [10], f"rows after sync+error pipeline: {ids}"


def set_is_per_connection():
    with psycopg.connect(DSN, autocommit=True) as a, psycopg.connect(DSN, autocommit=True) as b:
        a.execute("SET statement_timeout = '1234ms'")
        assert a.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert b.execute("SHOW statement_timeout").fetchone() == ("0",), "b sees a's statement_timeout"
        assert a.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
    # Not autocommit: psycopg wraps the SET in BEGIN ... COMMIT.
    with psycopg.connect(DSN) as a, psycopg.connect(DSN, autocommit=True) as b:
        a.execute("SET statement_timeout = '2345ms'")
        a.commit()
        assert b.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert a.execute("SHOW statement_timeout").fetchone() == ("2345ms",)
        a.commit()
        a.execute("SET statement_timeout = '3456ms'")
        a.rollback()  # the SET is undone with its transaction
        assert a.execute("SHOW statement_timeout").fetchone() == ("2345ms",)
        a.commit()
        assert b.execute("SHOW statement_timeout").fetchone() == ("0",)


def section(name, fn):
    try:
        fn()
        print(f"{name}: ok", flush=True)
    except Exception as e:
        fail(f"{name}: {type(e).__name__}: {e}")


def prepared_sessions():
    barrier = threading.Barrier(N)
    threads = [threading.Thread(target=prepared_everything, args=(i, barrier)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("PIDS", " ".join(str(p) for p in sorted(pids)), flush=True)


def main():
    print("psycopg", psycopg.__version__, "libpq", psycopg.pq.version(), flush=True)
    # Every section runs, so one failure does not hide the others.
    section("prepared", prepared_sessions)
    section("pipeline", pipeline_checks)
    section("set", set_is_per_connection)
    if failures:
        sys.exit(f"{len(failures)} failures, first: {failures[:8]}")
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
