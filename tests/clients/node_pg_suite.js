// node-postgres (pg) against homeport's wire endpoint: parameters, named prepared statements,
// types, error codes, transactions and routing.
// usage: node node_pg_suite.js WIRE_URL USER_HOMED_ELSEWHERE LOCAL_REGION HOME_REGION
const { Client } = require('pg');
const [url, user, local, home] = process.argv.slice(2);
let passed = 0, failed = 0;
function check(name, cond, detail) {
  if (cond) passed++; else { failed++; console.error(`FAIL ${name}: ${detail === undefined ? '' : JSON.stringify(detail)}`); }
}
(async () => {
  const c = new Client({ connectionString: url, options: `-c homeport.user=${user}` });
  await c.connect();
  const route = async () => (await c.query('SHOW homeport.route')).rows[0]['homeport.route'];
  await c.query('CREATE TABLE IF NOT EXISTS node_items (id serial PRIMARY KEY, name text UNIQUE, n int, doc jsonb)');
  check('ddl on home primary', (await route()) === `${home}/primary`, await route());
  const r = await c.query('INSERT INTO node_items (name, n, doc) VALUES ($1, $2, $3) RETURNING id', ['x', 5, { k: 'v' }]);
  check('insert id', typeof r.rows[0].id === 'number', r.rows);
  const g = await c.query("SELECT name, n, doc FROM node_items WHERE id = $1 /*homeport_route='primary'*/", [r.rows[0].id]);
  check('round trip', JSON.stringify(g.rows[0]) === JSON.stringify({ name: 'x', n: 5, doc: { k: 'v' } }), g.rows[0]);
  for (let i = 0; i < 30; i++) {
    const p = await c.query({ name: 'double', text: 'SELECT $1::int * 2 AS v', values: [i] });
    check('named prepared statement', p.rows[0].v === i * 2, p.rows[0]);
  }
  try { await c.query("INSERT INTO node_items (name) VALUES ('x')"); check('unique raised', false); }
  catch (e) { check('unique violation code', e.code === '23505', e.code); }
  try { await c.query('SELECT * FROM no_such_table'); check('undefined table raised', false); }
  catch (e) { check('undefined table code', e.code === '42P01', e.code); }
  check('usable after errors', (await c.query('SELECT 3 AS v')).rows[0].v === 3);
  // Local once the replica has this session's writes (read-your-writes).
  for (let i = 0; i < 100; i++) {
    await c.query('SELECT count(*) FROM notes');
    if ((await route()) === `${local}/replica`) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  check('read on local replica', (await route()) === `${local}/replica`, await route());
  await c.query('BEGIN');
  await c.query("INSERT INTO node_items (name) VALUES ('y')");
  await c.query('ROLLBACK');
  const n = await c.query("SELECT count(*)::int AS n FROM node_items /*homeport_route='primary'*/");
  check('rollback', n.rows[0].n === 1, n.rows[0]);
  await c.query('DROP TABLE node_items');
  await c.end();
  console.log(`node-postgres: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(1); });
