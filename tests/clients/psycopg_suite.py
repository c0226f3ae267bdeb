"""psycopg 3 against homeport's wire endpoint: rows and types round-trip in text and binary,
server-side parameter binding, prepared statements across pooled server connections, pipeline
mode, SQLSTATEs of errors, and routing seen through SHOW homeport.route.

usage: psycopg_suite.py WIRE_URL USER_HOMED_ELSEWHERE LOCAL_REGION HOME_REGION
"""
import datetime
import decimal
import sys
import time
import uuid

import psycopg
from psycopg.types.json import Jsonb

url, user, local, home = sys.argv[1:5]
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: {detail}", file=sys.stderr)


def route(conn):
    return conn.execute("SHOW homeport.route").fetchone()[0]


with psycopg.connect(url, options=f"-c homeport.user={user}", autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS py_items (id serial PRIMARY KEY, name text UNIQUE, price numeric(10,2), "
                 "data bytea, at timestamptz, doc jsonb, tags text[], ref uuid, ok boolean)")
    check("ddl ran on the home primary", route(conn) == f"{home}/primary", route(conn))
    ref = uuid.uuid4()
    at = datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=datetime.timezone.utc)
    row = conn.execute(
        "INSERT INTO py_items (name, price, data, at, doc, tags, ref, ok) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        ("widget", decimal.Decimal("12.34"), b"\x00\x01\xff", at, Jsonb({"a": [1, 2]}), ["x", "y"], ref, True),
    ).fetchone()
    check("insert returns the id", isinstance(row[0], int), row)
    check("write ran on the home primary", route(conn) == f"{home}/primary", route(conn))
    # The driver tracks the token homeport reports after each committed write.
    token = conn.info.parameter_status("homeport.consistency_token")
    check("ParameterStatus carries the consistency token", token is not None and token.startswith("v1."), token)
    check("SHOW returns the same token", conn.execute("SHOW homeport.consistency_token").fetchone()[0] == token)

    # Read back from the primary (a hint), text and binary formats.
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        got = cur.execute(
            "SELECT name, price, data, at, doc, tags, ref, ok FROM py_items WHERE id = %s /*homeport_route='primary'*/",
            (row[0],),
        ).fetchone()
        want = ("widget", decimal.Decimal("12.34"), b"\x00\x01\xff", at, {"a": [1, 2]}, ["x", "y"], ref, True)
        check(f"types round-trip (binary={binary})", got == want, f"{got!r} != {want!r}")

    # Errors keep their SQLSTATE and the connection stays usable.
    try:
        conn.execute("INSERT INTO py_items (name) VALUES ('widget')")
        check("unique violation raised", False)
    except psycopg.errors.UniqueViolation as e:
        check("unique violation SQLSTATE", e.sqlstate == "23505", e.sqlstate)
    try:
        conn.execute("SELEC 1")
        check("syntax error raised", False)
    except psycopg.errors.SyntaxError as e:
        check("syntax error SQLSTATE", e.sqlstate == "42601", e.sqlstate)
    check("connection usable after errors", conn.execute("SELECT 41 + 1").fetchone()[0] == 42)

    # Provably read-only statements go to the nearest replica of the home shard, once it has
    # replayed this session's own writes (read-your-writes: until then the primary answers).
    for _ in range(100):
        conn.execute("SELECT count(*) FROM notes").fetchone()
        if route(conn) == f"{local}/replica":
            break
        time.sleep(0.05)
    check("read ran on the local replica", route(conn) == f"{local}/replica", route(conn))

    # Prepared statements: executed many times, they stay valid whichever server runs them.
    for i in range(30):
        v = conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()[0]
        check("prepared statement result", v == i * 2, v)

    # Explicit transaction: one server, committed atomically.
    with conn.transaction():
        conn.execute("UPDATE py_items SET price = price + 1 WHERE name = 'widget'")
        conn.execute("INSERT INTO py_items (name, price) VALUES ('gadget', 5)")
    check("transaction ran on the primary", route(conn) == f"{home}/primary", route(conn))
    n = conn.execute("SELECT count(*) FROM py_items /*homeport_route='primary'*/").fetchone()[0]
    check("transaction committed both rows", n == 2, n)

    # A failed transaction rolls back completely.
    try:
        with conn.transaction():
            conn.execute("INSERT INTO py_items (name) VALUES ('temp')")
            conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero:
        pass
    n = conn.execute("SELECT count(*) FROM py_items WHERE name = 'temp' /*homeport_route='primary'*/").fetchone()[0]
    check("rolled back", n == 0, n)

    # Pipeline mode: several statements in flight at once.
    with conn.pipeline():
        curs = [conn.execute("SELECT %s::text || '!'", (f"p{i}",)) for i in range(10)]
    outs = [c.fetchone()[0] for c in curs]
    check("pipeline results in order", outs == [f"p{i}!" for i in range(10)], outs)

    # executemany (extended protocol, many binds).
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO py_items (name, price) VALUES (%s, %s)", [(f"bulk{i}", i) for i in range(20)])
    n = conn.execute("SELECT count(*) FROM py_items WHERE name LIKE 'bulk%%' /*homeport_route='primary'*/").fetchone()[0]
    check("executemany inserted all rows", n == 20, n)

    # COPY in both directions.
    with conn.cursor() as cur:
        with cur.copy("COPY py_items (name, price) FROM STDIN") as cp:
            for i in range(50):
                cp.write_row((f"copy{i}", i))
        out = []
        with cur.copy("COPY (SELECT name FROM py_items WHERE name LIKE 'copy%' ORDER BY name) TO STDOUT") as cp:
            for r in cp.rows():
                out.append(r[0])
    check("COPY in then out", len(out) == 50, len(out))

    conn.execute("DROP TABLE py_items")

# A client encoding other than UTF-8: the text reaches the server unchanged, the session goes on.
with psycopg.connect(url, options=f"-c homeport.user={user}", autocommit=True) as conn:
    conn.execute("SET client_encoding TO latin9")
    check("latin9 text round-trips", conn.execute("SELECT %s::text", ("€uro",)).fetchone()[0] == "€uro")
    check("latin9 literal round-trips", conn.execute("SELECT '€'").fetchone()[0] == "€")
    check("latin9 session still usable", conn.execute("SELECT 1").fetchone()[0] == 1)

print(f"psycopg: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
