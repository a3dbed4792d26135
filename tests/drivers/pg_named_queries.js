// node-postgres (`pg`) through pgmux: run by tests/tests/sessions.rs (`node pg_named_queries.js PORT`).
// Every client uses the same statement names ('q1', 'q2') for texts that differ per client. node-postgres sends a
// Parse only the first time a client uses a name, then just Bind/Execute. Exits non-zero on any wrong result;
// prints `PIDS ...` and `DONE`.
'use strict';

const { Client } = require('pg');

const PORT = Number(process.argv[2]);
const N = 20;
const ROUNDS = 25;

setTimeout(() => {
  console.error('pg_named_queries.js: timed out');
  process.exit(3);
}, 90000).unref();

async function main() {
  console.log('pg', require('pg/package.json').version);
  const clients = [];
  for (let i = 0; i < N; i++) {
    const c = new Client({ host: '127.0.0.1', port: PORT, user: 'alice', database: 'appdb',
      connectionTimeoutMillis: 10000 });
    await c.connect();
    clients.push(c);
  }
  const pids = new Set();
  const failures = [];
  for (let k = 0; k < ROUNDS; k++) {
    // All clients at once, so their turns interleave on the shared upstreams.
    await Promise.all(clients.map(async (c, i) => {
      const r1 = await c.query({ name: 'q1', text: `SELECT $1::int + ${i} AS v, pg_backend_pid() AS pid`,
        values: [k] });
      pids.add(r1.rows[0].pid);
      if (r1.rows[0].v !== k + i) failures.push(`client ${i}: q1(${k}) = ${r1.rows[0].v}, want ${k + i}`);
      const r2 = await c.query({ name: 'q2', text: `SELECT 'client${i}-' || $1::text AS s`, values: [`r${k}`] });
      if (r2.rows[0].s !== `client${i}-r${k}`) failures.push(`client ${i}: q2 = ${r2.rows[0].s}`);
      // A multi-statement simple query in between does not disturb the named statements.
      const r3 = await c.query(`SELECT ${i} AS a; SELECT ${k} AS b`);
      if (r3[0].rows[0].a !== i || r3[1].rows[0].b !== k) failures.push(`client ${i}: simple query mixed up`);
    }));
  }
  // An error in a named query does not lose the statement.
  const c0 = clients[0];
  try {
    await c0.query({ name: 'q3', text: 'SELECT 1 / $1::int AS v', values: [0] });
    failures.push('q3 with 0 did not fail');
  } catch (e) {
    if (e.code !== '22012') failures.push(`q3 failed with ${e.code} ${e.message}`);
  }
  const r = await c0.query({ name: 'q1', text: 'SELECT $1::int + 0 AS v, pg_backend_pid() AS pid', values: [7] });
  if (r.rows[0].v !== 7) failures.push(`q1 after error: ${r.rows[0].v}`);
  await Promise.all(clients.map((c) => c.end()));
  console.log('PIDS ' + [...pids].sort((a, b) => a - b).join(' '));
  if (failures.length) {
    console.error(`${failures.length} failures, first: ${JSON.stringify(failures.slice(0, 5))}`);
    process.exit(1);
  }
  console.log('DONE');
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
