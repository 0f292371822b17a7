#!/usr/bin/env node
// Page views per app, exactly once into Kafka and MariaDB, through txsink.
//
// The Node twin of examples/pageviews-python: it counts page views per app
// from a numbered NDJSON input file and, every --every lines, writes the
// counts of those lines to Kafka (topic "pageviews") and MariaDB (table pv,
// a non-idempotent "views = views + ?" upsert) of `sidecar dev`, then
// completes a checkpoint whose state is its input position. After any crash
// it opens the writer again, gets the last committed position back and
// resumes there: the sidecar aborted the uncommitted writes of the crashed
// run, so no view is lost or counted twice. `--crash-after K` crashes on
// purpose (exit 137) after writing, before the checkpoint; run it again and
// the totals come out exact.
//
// Usage (with `make run` in another terminal, from the repository root):
//   node clients/node/examples/pageviews.mjs [--crash-after 1200]

import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Client, DataLoss, isReopen } from '../src/index.js';

// Distinct from the other examples' apps: they all add into table pv.
const APPS = ['node-android', 'node-ios', 'node-tv', 'node-web'];
const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..', '..');

const { values: a } = parseArgs({
  options: {
    socket: { type: 'string', default: process.env.TXSINK_SOCKET || path.join(REPO, 'data', 'sidecar.sock') },
    url: { type: 'string' }, // http://host:port instead of the socket
    input: { type: 'string', default: path.join(HERE, 'clicks.ndjson') },
    events: { type: 'string', default: '10000' },
    every: { type: 'string', default: '500' },
    'crash-after': { type: 'string' },
    job: { type: 'string', default: 'pageviews-node' },
    writer: { type: 'string', default: '0' },
    kafka: { type: 'string', default: '127.0.0.1:9092' },
  },
});
const events = posInt(a.events, '--events');
const every = posInt(a.every, '--every');
const crashAfter = a['crash-after'] === undefined ? null : posInt(a['crash-after'], '--crash-after');

function posInt(s, flag) {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1) {
    console.error(`pageviews: ${flag} must be a positive integer, got ${s}`);
    process.exit(2);
  }
  return n;
}

/** The app of event n, from a hash of n: about 40% web, 30% android, 20% ios, 10% tv. */
function appOf(n) {
  const h = createHash('sha256').update(String(n)).digest().readUInt32BE(0) % 10;
  return h < 4 ? 'node-web' : h < 7 ? 'node-android' : h < 9 ? 'node-ios' : 'node-tv';
}

if (!existsSync(a.input)) {
  const lines = [];
  for (let n = 1; n <= events; n++) lines.push(JSON.stringify({ n, app: appOf(n) }));
  writeFileSync(a.input + '.tmp', lines.join('\n') + '\n');
  renameSync(a.input + '.tmp', a.input); // never leave half a file behind
  console.log(`generated ${a.input} (${events} events)`);
}
const input = readFileSync(a.input, 'utf8').split('\n').filter((l) => l !== '').map((l, i) => {
  const ev = JSON.parse(l);
  if (ev.n !== i + 1) throw new Error(`${a.input} line ${i + 1}: n is ${ev.n}, want ${i + 1} (the input must be numbered)`);
  return ev.app;
});

const client = new Client(a.url ? { url: a.url } : { socketPath: a.socket });
let job;
try {
  job = await client.job(a.job, { commit: 'auto', sinks: ['events', 'db'] });
} catch (err) {
  // Unavailable after a minute of retries, or the sidecar refused the job.
  console.error(`pageviews: ${err.message}\nIs \`make run\` running? (--socket or --url say where)`);
  process.exit(1);
}
console.log(`counting ${a.input} (${input.length} lines) as job ${a.job}, writer ${a.writer}, ` +
  `a checkpoint every ${every} lines, via ${client.endpoint}`);

let runStart = null;
for (;;) {
  let w;
  try {
    w = await job.writer(a.writer);
  } catch (err) {
    if (err instanceof DataLoss) {
      // The counts of those checkpoints are missing: counting on would hide it.
      console.error(`pageviews: DATA LOSS reported by the sidecar: ${err.message}`);
      process.exit(3);
    }
    throw err;
  }
  // Resume from the restored position; whatever this process counted
  // since is thrown away (the sidecar aborted it).
  let pos = w.state === null ? 0 : JSON.parse(w.state.toString()).line;
  if (pos > input.length) {
    console.error(`pageviews: job ${a.job} has counted ${pos} lines but ${a.input} has ${input.length}: another input?`);
    process.exit(1);
  }
  runStart ??= pos;
  console.log(`session epoch ${w.epoch}: restored checkpoint ${w.restored.checkpoint}, ${pos} lines already ` +
    `counted and committed; resuming at line ${pos + 1}`);
  try {
    while (pos < input.length) {
      const end = Math.min(pos + every, input.length);
      const viewsOf = new Map();
      for (const app of input.slice(pos, end)) viewsOf.set(app, (viewsOf.get(app) ?? 0) + 1);
      const n = w.lastCheckpoint + 1;
      const records = [...viewsOf].sort().flatMap(([app, views]) => [
        { sink: 'events', topic: 'pageviews', key: app,
          value: { app, views, job: a.job, checkpoint: n, from_line: pos + 1, to_line: end } },
        { sink: 'db', stmt: 'upsert_pv', args: [app, views] },
      ]);
      await w.write(records);
      if (crashAfter !== null && end - runStart >= crashAfter) {
        console.log(`--crash-after ${crashAfter}: crashing after writing lines ${pos + 1}-${end} ` +
          `(checkpoint ${n} not taken); run again to resume from checkpoint ${n - 1}`);
        process.exit(137);
      }
      const res = await w.checkpoint(n, JSON.stringify({ line: end }));
      // committed; or committing (202): durable, the sidecar finishes it.
      const views = [...viewsOf].sort().map(([app, v]) => `${app} +${v}`).join(', ');
      console.log(`checkpoint ${n}: lines ${pos + 1}-${end} ${res.status} (${views})`);
      pos = end;
    }
    break;
  } catch (err) {
    if (err instanceof DataLoss) {
      console.error(`pageviews: DATA LOSS reported by the sidecar: ${err.message}`);
      process.exit(3);
    }
    if (!isReopen(err)) throw err;
    console.log(`  ${err.message}: reopening the writer and resuming from the last committed checkpoint`);
  }
}
client.close();

const totals = new Map(APPS.map((x) => [x, 0]));
for (const app of input) totals.set(app, totals.get(app) + 1);
console.log(`done: all ${input.length} lines are committed exactly once\n\nexpected totals from ${path.basename(a.input)}:`);
for (const [app, n] of totals) console.log(`  ${app.padEnd(14)} ${n}`);
console.log('\ncheck them (pv holds exactly these if this job is the only writer of these apps):');
console.log(`  mariadb txsink_dev -e "SELECT app, views FROM pv WHERE app IN (${APPS.map((x) => `'${x}'`).join(',')})"`);
console.log(`  kcat -C -b ${a.kafka} -t pageviews -X isolation.level=read_committed -e -q -f '%s\\n' | ` +
  `node -e 'const c={};require("readline").createInterface({input:process.stdin}).on("line",l=>{const v=JSON.parse(l);` +
  `if(v.job==="${a.job}")c[v.app]=(c[v.app]||0)+v.views}).on("close",()=>console.log(c))'`);
