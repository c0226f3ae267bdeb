"""asyncpg against homeport's wire endpoint. asyncpg prepares every statement under its own name
and uses the binary format, so this exercises prepared statements across pooled connections.

usage: asyncpg_suite.py WIRE_URL USER_HOMED_ELSEWHERE LOCAL_REGION HOME_REGION
"""
import asyncio
import datetime
import decimal
import sys

import asyncpg

url, user, local, home = sys.argv[1:5]
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}: {detail}", file=sys.stderr)


async def main():
    # Identity as a startup parameter, the way asyncpg passes server_settings.
    conn = await asyncpg.connect(url, server_settings={"homeport.user": user})
    check("identity from startup parameters", await conn.fetchval("SHOW homeport.user") == user)
    await conn.execute("CREATE TABLE IF NOT EXISTS apg_items (id serial PRIMARY KEY, name text UNIQUE, "
                       "price numeric, at timestamptz, tags int[])")
    check("ddl on the home primary", await conn.fetchval("SHOW homeport.route") == f"{home}/primary")
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    rid = await conn.fetchval("INSERT INTO apg_items (name, price, at, tags) VALUES ($1, $2, $3, $4) RETURNING id",
                              "a", decimal.Decimal("1.50"), at, [1, 2, 3])
    got = await conn.fetchrow("SELECT name, price, at, tags FROM apg_items WHERE id = $1 /*homeport_route='primary'*/", rid)
    check("binary round-trip", tuple(got) == ("a", decimal.Decimal("1.50"), at, [1, 2, 3]), got)
    for i in range(30):
        check("repeated prepared query", await conn.fetchval("SELECT $1::int + 1", i) == i + 1)
    stmt = await conn.prepare("SELECT $1::text || $2::text")
    for i in range(10):
        check("explicit prepared statement", await stmt.fetchval("a", str(i)) == f"a{i}")
    try:
        await conn.execute("INSERT INTO apg_items (name) VALUES ('a')")
        check("unique violation raised", False)
    except asyncpg.UniqueViolationError as e:
        check("unique violation SQLSTATE", e.sqlstate == "23505")
    check("usable after error", await conn.fetchval("SELECT 7") == 7)
    # Local once the replica has this session's writes (read-your-writes).
    for _ in range(100):
        await conn.fetchval("SELECT count(*) FROM notes")
        if await conn.fetchval("SHOW homeport.route") == f"{local}/replica":
            break
        await asyncio.sleep(0.05)
    check("read on the local replica", await conn.fetchval("SHOW homeport.route") == f"{local}/replica")
    async with conn.transaction():
        await conn.execute("INSERT INTO apg_items (name) VALUES ('b')")
        await conn.execute("INSERT INTO apg_items (name) VALUES ('c')")
    n = await conn.fetchval("SELECT count(*) FROM apg_items /*homeport_route='primary'*/")
    check("transaction committed", n == 3, n)
    await conn.executemany("INSERT INTO apg_items (name) VALUES ($1)", [(f"m{i}",) for i in range(20)])
    n = await conn.fetchval("SELECT count(*) FROM apg_items WHERE name LIKE 'm%' /*homeport_route='primary'*/")
    check("executemany", n == 20, n)
    await conn.copy_records_to_table("apg_items", records=[(f"cp{i}",) for i in range(25)], columns=["name"])
    n = await conn.fetchval("SELECT count(*) FROM apg_items WHERE name LIKE 'cp%' /*homeport_route='primary'*/")
    check("binary COPY in", n == 25, n)
    await conn.execute("DROP TABLE apg_items")
    await conn.close()


asyncio.run(main())
print(f"asyncpg: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
