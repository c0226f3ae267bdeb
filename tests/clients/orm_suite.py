"""ORM-style transactions through homeport's wire endpoint: psycopg with its default
autocommit=False and SQLAlchemy (every statement inside a plain BEGIN). For a user homed in
another region, read-only transactions must run on the local replica, a transaction that reads
then writes must commit on the home primary, and the next transaction must read that write.

usage: orm_suite.py WIRE_URL USER_HOMED_ELSEWHERE LOCAL_REGION HOME_REGION
"""
import sys
import time

import psycopg
import sqlalchemy as sa
import sqlalchemy.orm

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
    if isinstance(conn, sa.engine.Connection):
        return conn.execute(sa.text("SHOW homeport.route")).scalar()
    return conn.execute("SHOW homeport.route").fetchone()[0]


def local_after_catching_up(conn, read):
    """The route of a read-only transaction once the replica has the session's writes (until
    then read-your-writes sends it elsewhere); `read` runs the transaction's read."""
    for _ in range(100):
        read()
        r = route(conn)
        conn.commit()
        if r == f"{local}/replica":
            return r
        time.sleep(0.05)
    return r


# psycopg, autocommit=False: every execute runs inside a BEGIN psycopg sends itself.
with psycopg.connect(url, options=f"-c homeport.user={user}") as conn:
    for _ in range(5):
        n = conn.execute("SELECT count(*) FROM notes WHERE user_id = %s", (user,)).fetchone()[0]
        check("psycopg read-only transaction on the local replica", route(conn) == f"{local}/replica", route(conn))
        conn.commit()
    before = conn.execute("SELECT count(*) FROM notes WHERE user_id = %s", (user,)).fetchone()[0]
    new_id = conn.execute(
        "INSERT INTO notes (user_id, body) VALUES (%s, 'from an ORM transaction') RETURNING id", (user,)
    ).fetchone()[0]
    check("psycopg read-then-write commits on the home primary", route(conn) == f"{home}/primary", route(conn))
    conn.commit()
    after = conn.execute("SELECT count(*) FROM notes WHERE user_id = %s", (user,)).fetchone()[0]
    check("psycopg reads its own write in the next transaction", after == before + 1, (before, after))
    conn.commit()
    r = local_after_catching_up(conn, lambda: conn.execute("SELECT count(*) FROM notes"))
    check("psycopg later transactions are local again", r == f"{local}/replica", r)
    row = conn.execute("SELECT body FROM notes WHERE id = %s", (new_id,)).fetchone()
    check("psycopg sees the row it wrote", row is not None and row[0] == "from an ORM transaction", row)
    conn.rollback()
    # A rolled-back write leaves nothing.
    conn.execute("SELECT 1")
    conn.execute("INSERT INTO notes (user_id, body) VALUES (%s, 'rolled back')", (user,))
    conn.rollback()
    n = conn.execute("SELECT count(*) FROM notes WHERE user_id = %s AND body = 'rolled back'", (user,)).fetchone()[0]
    check("psycopg rolled-back promoted write is gone", n == 0, n)
    conn.commit()

# SQLAlchemy 2 on psycopg 3: Session-style transactions.
engine = sa.create_engine(
    url.replace("postgresql://", "postgresql+psycopg://"),
    connect_args={"options": f"-c homeport.user={user}"},
    pool_size=2,
)
with engine.connect() as conn:
    mine = sa.text("SELECT count(*) FROM notes WHERE user_id = :u AND body = 'sqlalchemy'")
    n = conn.execute(mine, {"u": user}).scalar()
    r = conn.execute(sa.text("SHOW homeport.route")).scalar()
    check("SQLAlchemy read-only transaction on the local replica", r == f"{local}/replica", r)
    conn.commit()
    conn.execute(sa.text("SELECT count(*) FROM notes WHERE user_id = :u"), {"u": user})
    conn.execute(sa.text("INSERT INTO notes (user_id, body) VALUES (:u, 'sqlalchemy')"), {"u": user})
    r = conn.execute(sa.text("SHOW homeport.route")).scalar()
    check("SQLAlchemy read-then-write on the home primary", r == f"{home}/primary", r)
    conn.commit()
    m = conn.execute(mine, {"u": user}).scalar()
    check("SQLAlchemy reads its own write in the next transaction", m == n + 1, (n, m))
    conn.commit()
    r = local_after_catching_up(conn, lambda: conn.execute(sa.text("SELECT count(*) FROM notes")))
    check("SQLAlchemy later transactions are local again", r == f"{local}/replica", r)
# The ORM's own session, with a mapped table.
meta = sa.MetaData()
notes = sa.Table("notes", meta, autoload_with=engine)
with sa.orm.Session(engine) as session:
    mine = sa.select(notes).where(notes.c.user_id == user, notes.c.body == "orm session")
    count = len(session.execute(mine).all())
    session.execute(sa.insert(notes).values(user_id=user, body="orm session"))
    session.commit()
    rows = session.execute(mine).all()
    check("SQLAlchemy ORM session sees its insert", len(rows) == count + 1, (count, len(rows)))
    session.commit()
engine.dispose()

print(f"orm: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
