// The client against a real `sidecar dev` (its own broker process, the db
// sink on MariaDB), with a token. What the sidecar committed is read back
// by independent readers: kcat (read_committed) and the mariadb CLI.
// The tests share one sidecar and run in order; the crash test kills and
// restarts it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Client, SessionError, SessionLost, SessionFenced, SinkFailure, SessionConflict, RecordRejected, BadRequest,
  Unauthorized, isReopen,
} from '../src/index.js';
import { DevSidecar, kcat, mariadb, rid, counts, run, REPO, groupOffsets } from '../testutil/sidecar.mjs';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** @type {DevSidecar} */
let sc;
const TOKEN = 'node-test-' + rid();

before(async () => {
  sc = await DevSidecar.create({ token: TOKEN });
  await sc.start();
  // The client reads the token from the environment when no option names it.
  process.env.TXSINK_TOKEN = TOKEN;
});

after(async () => {
  if (sc) {
    await sc.destroy();
  }
});

/** Event rows of txsink_dev.events whose k starts with prefix: k → count. */
async function dbKeys(prefix) {
  const rows = await mariadb(sc.dsn, `SELECT k FROM events WHERE k LIKE '${prefix}%'`);
  return counts(rows.map((r) => r[0]));
}

async function kafkaKeys(topic) {
  return counts((await kcat(sc.kafkaAddr, topic)).map((r) => r.key));
}

function expectOnce(got, keys, what) {
  const want = new Map(keys.map((k) => [k, 1]));
  assert.deepEqual(new Map([...got].sort()), new Map([...want].sort()), `${what}: every key exactly once`);
}

function records(topic, keys) {
  return keys.flatMap((k) => [
    { sink: 'events', topic, key: k, value: { k } },
    { sink: 'db', stmt: 'insert_event', args: [k, 'v'] },
  ]);
}

test('writes and checkpoints reach Kafka and MySQL, over TCP and the Unix socket', async () => {
  const id = rid();
  const topic = 'node-basic-' + id;
  const tcp = new Client({ url: sc.url });
  await tcp.ready();
  const job = await tcp.job('node-basic-' + id, { commit: 'auto' });
  assert.equal(job.info.commit, 'auto');
  const w = await job.writer('0');
  assert.equal(w.restored.checkpoint, 0);
  assert.equal(w.state, null);
  const keys1 = [1, 2, 3].map((i) => `${id}-${i}`);
  const wr = await w.write(records(topic, keys1));
  assert.deepEqual(wr, { accepted: 6, seq: 1 });
  // Nothing is visible before the checkpoint.
  assert.equal((await dbKeys(id)).size, 0);
  const res = await w.checkpoint(1, Buffer.from('pos=3'));
  assert.equal(res.status, 'committed');
  assert.equal(w.lastCheckpoint, 1);
  expectOnce(await kafkaKeys(topic), keys1, 'kafka after checkpoint 1');
  expectOnce(await dbKeys(id), keys1, 'mysql after checkpoint 1');
  tcp.close();

  const unix = new Client({ socketPath: sc.socket });
  const w2 = await (await unix.job('node-basic-' + id, { commit: 'auto' })).writer('0');
  assert.equal(w2.restored.checkpoint, 1);
  assert.equal(w2.state.toString(), 'pos=3');
  const keys2 = [4, 5].map((i) => `${id}-${i}`);
  // Bytes go out base64 (key_b64/value_b64) and arrive as those bytes.
  await w2.write([...records(topic, keys2), { sink: 'events', topic, key: Buffer.from(`${id}-bytes`), value: Buffer.from('raw') }]);
  assert.equal((await w2.checkpoint(2, 'pos=5')).status, 'committed');
  expectOnce(await kafkaKeys(topic), [...keys1, ...keys2, `${id}-bytes`], 'kafka after checkpoint 2');
  assert.equal((await kcat(sc.kafkaAddr, topic)).find((r) => r.key === `${id}-bytes`).value, 'raw');
  expectOnce(await dbKeys(id), [...keys1, ...keys2], 'mysql after checkpoint 2');
  unix.close();
});

test('a second session of the same writer fences the first', async () => {
  const id = rid();
  const c = new Client({ url: sc.url });
  const job = await c.job('node-fence-' + id);
  const old = await job.writer('w');
  await old.write([{ sink: 'events', topic: 'node-fence-' + id, key: 'old', value: 'x' }]);
  const cur = await job.writer('w');
  assert.ok(cur.epoch > old.epoch);
  await assert.rejects(old.write([{ sink: 'events', topic: 'node-fence-' + id, key: 'old2', value: 'x' }]),
    (err) => err instanceof SessionFenced && err instanceof SessionError && isReopen(err) && err.status === 409 &&
      err.code === 'session_fenced');
  await assert.rejects(old.checkpoint(1, 'x'), SessionFenced);
  await cur.write([{ sink: 'events', topic: 'node-fence-' + id, key: 'new', value: 'y' }]);
  await cur.checkpoint(1, 'y');
  // The fenced session's record was aborted by the new open.
  expectOnce(await kafkaKeys('node-fence-' + id), ['new'], 'kafka');
  c.close();
});

test('a record a sink refuses is RecordRejected naming it', async () => {
  const id = rid();
  const topic = 'node-rej-' + id;
  const c = new Client({ url: sc.url });
  const job = await c.job('node-rej-' + id);
  let w = await job.writer('0');
  const tooLong = id + '-' + 'x'.repeat(300); // events.k is VARCHAR(255)

  // Alone in its call: the call changed nothing and the session goes on.
  await assert.rejects(w.write([{ sink: 'db', stmt: 'insert_event', args: [tooLong, 'v'] }]),
    (err) => err instanceof RecordRejected && err.status === 422 && err.record === 1 && !err.sessionFailed &&
      !isReopen(err));
  await w.write(records(topic, [`${id}-a`]));
  await w.checkpoint(1, 'a');

  // After a record of the call reached another sink: the session failed.
  await assert.rejects(w.write([
    { sink: 'events', topic, key: `${id}-b`, value: 'b' },
    { sink: 'db', stmt: 'insert_event', args: [tooLong, 'v'] },
  ]), (err) => err instanceof RecordRejected && err.record === 2 && err.sessionFailed);
  await assert.rejects(w.write(records(topic, [`${id}-c`])), (err) => err instanceof SinkFailure && isReopen(err));
  // Reopen, resume from the restored state, replay without the record.
  w = await job.writer('0');
  assert.equal(w.restored.checkpoint, 1);
  assert.equal(w.state.toString(), 'a');
  await w.write([{ sink: 'events', topic, key: `${id}-b`, value: 'b' }, ...records(topic, [`${id}-c`])]);
  await w.checkpoint(2, 'c');
  expectOnce(await kafkaKeys(topic), [`${id}-a`, `${id}-b`, `${id}-c`], 'kafka');
  expectOnce(await dbKeys(id), [`${id}-a`, `${id}-c`], 'mysql');
  c.close();
});

test('bad input throws before any call and changes nothing', async () => {
  const id = rid();
  const topic = 'node-bad-' + id;
  assert.throws(() => new Client({ url: 'https://127.0.0.1:1' }), TypeError);
  assert.throws(() => new Client({ url: sc.url, socketPath: sc.socket }), TypeError);
  assert.throws(() => new Client({ url: sc.url, timeout: 0 }), TypeError);
  const c = new Client({ url: sc.url });
  await assert.rejects(c.job('bad name'), TypeError);
  await assert.rejects(c.job(''), TypeError);
  await assert.rejects(c.job('x'.repeat(65)), TypeError);
  await assert.rejects(c.job('ok-' + id, { commit: 'sometimes' }), TypeError);
  const job = await c.job('node-bad-' + id);
  await assert.rejects(job.writer('../0'), TypeError);
  const w = await job.writer('0');
  await w.write(records(topic, [`${id}-1`]));
  for (const bad of [undefined, [], {}, 'x', [null], [42], [[1]], [{ value: 1n }]]) {
    await assert.rejects(w.write(bad), (err) => err instanceof TypeError || err instanceof RangeError, String(bad));
  }
  for (const n of [0, -1, 1.5, NaN, 2 ** 53, '1']) {
    await assert.rejects(w.checkpoint(n, 'x'), RangeError, String(n));
  }
  await assert.rejects(w.checkpoint(1, 42), TypeError);
  await assert.rejects(w.checkpoint(1, { pos: 1 }), TypeError);
  await assert.rejects(w.checkpoint(1, Buffer.alloc((1 << 20) + 1)), RangeError);
  await assert.rejects(w.checkpoint(1, 'x', { wait: 'soon' }), TypeError);
  // The sidecar's own 400s: nothing of the call is written.
  await assert.rejects(w.write([{ sink: 'nope', value: 1 }]), (err) => err instanceof BadRequest &&
    err.code === 'unknown_sink' && err.status === 400 && !isReopen(err));
  await assert.rejects(w.write([{ sink: 'events', topic, key: `${id}-2`, value: 1, bogus: true }]),
    (err) => err instanceof BadRequest);
  // The session survived all of it, and only the good record is committed.
  await w.write(records(topic, [`${id}-3`]));
  assert.equal((await w.checkpoint(1, 'done')).status, 'committed');
  expectOnce(await kafkaKeys(topic), [`${id}-1`, `${id}-3`], 'kafka');
  expectOnce(await dbKeys(id), [`${id}-1`, `${id}-3`], 'mysql');
  // A lower checkpoint number is the sidecar's 409 checkpoint_order: reopen.
  await assert.rejects(w.checkpoint(1, 'other'), (err) => err instanceof SessionConflict && err.code === 'checkpoint_order');
  c.close();
});

test('an at_least_once job: write, checkpoint, reopen restores the state; a bad guarantee is a BadRequest', async () => {
  const id = rid();
  const topic = 'node-alo-' + id;
  const c = new Client({ socketPath: sc.socket });
  const job = await c.job('node-alo-' + id, { commit: 'auto', guarantee: 'at_least_once' });
  assert.equal(job.info.guarantee, 'at_least_once');
  let w = await job.writer('0');
  await w.write(records(topic, [`${id}-1`, `${id}-2`]));
  assert.equal((await w.checkpoint(1, 'pos=2')).status, 'committed');
  // The checkpoint answered committed: both sinks hold the records.
  expectOnce(await kafkaKeys(topic), [`${id}-1`, `${id}-2`], 'kafka');
  expectOnce(await dbKeys(id), [`${id}-1`, `${id}-2`], 'mysql');
  // A new session (as after a restart of the app) restores the checkpoint and its state.
  const tcp = new Client({ url: sc.url });
  w = await (await tcp.job('node-alo-' + id, { commit: 'auto', guarantee: 'at_least_once' })).writer('0');
  tcp.close();
  assert.equal(w.restored.checkpoint, 1);
  assert.equal(w.state.toString(), 'pos=2');
  assert.equal(w.restored.status, 'committed');

  await assert.rejects(c.job('node-alo-bad-' + id, { guarantee: 'twice' }),
    (err) => err instanceof BadRequest && err.status === 400 && /guarantee/.test(err.detail));
  // The refused PUT created nothing.
  assert.ok(!(await c.jobs()).some((j) => j.name === 'node-alo-bad-' + id));
  c.close();
});

test('a call without the sidecar token is Unauthorized', async () => {
  const c = new Client({ url: sc.url, token: 'wrong' });
  await assert.rejects(c.job('node-auth'), (err) => err instanceof Unauthorized && err.status === 401);
  c.close();
});

// The crash contract: the app writes, the sidecar is killed with SIGKILL
// before the checkpoint, comes back on the same data dir; the app reopens,
// resumes from the restored state and finishes. Every record is committed
// exactly once.
test('crash contract: kill -9 between a write and a checkpoint, resume from the restored state', async () => {
  const id = rid();
  const topic = 'node-crash-' + id;
  const events = Array.from({ length: 50 }, (_, i) => `${id}-${i + 1}`); // the app's input
  const every = 10;
  const c = new Client({ socketPath: sc.socket });
  const job = await c.job('node-crash-' + id, { commit: 'auto' });
  let killed = false;
  let reopened = 0;
  let w = await job.writer('0');
  let oldWriter = null;
  for (;;) {
    let pos = w.state === null ? 0 : Number(w.state.toString());
    assert.equal(pos, w.restored.checkpoint * every, 'the state is the input position of the checkpoint');
    try {
      while (pos < events.length) {
        const batch = events.slice(pos, pos + every);
        await w.write(records(topic, batch));
        if (!killed && pos === 2 * every) {
          // Written and acknowledged, not checkpointed.
          killed = true;
          await sc.kill9();
        }
        await w.checkpoint(w.lastCheckpoint + 1, String(pos + batch.length));
        pos += batch.length;
      }
      break;
    } catch (err) {
      if (!isReopen(err)) throw err;
      assert.ok(err instanceof SessionLost, `after the kill: got ${err}, want SessionLost`);
      assert.equal(err.code, 'no_answer');
      reopened++;
      assert.ok(reopened <= 1, 'reopened more than once');
      oldWriter = w;
      // Restart while the app reopens: the open retries the refused
      // connection and 503s until the sidecar is ready.
      const restart = sc.start();
      w = await job.writer('0');
      await restart;
      assert.equal(w.restored.checkpoint, 2, 'the open restores the last committed checkpoint');
      assert.equal(w.state.toString(), String(2 * every));
    }
  }
  assert.ok(killed && reopened === 1);
  // The new session fenced the crashed one's epoch.
  await assert.rejects(oldWriter.write(records(topic, ['late'])),
    (err) => err instanceof SessionFenced && err.status === 409);
  expectOnce(await kafkaKeys(topic), events, 'kafka (kcat, read_committed)');
  expectOnce(await dbKeys(id), events, 'mysql (mariadb CLI)');
  c.close();
});

test('checkpoint offsets: the group resumes the input, exactly with the output, across a kill -9', async () => {
  // The app keeps its input position in a consumer group, not in the
  // state: every checkpoint carries {sink, group, topics}, and after the
  // kill it resumes from the group's committed offsets, read by an
  // independent reader (groupOffsets: internal/cmd/groupoffsets,
  // require_stable).
  const id = rid();
  const topic = 'node-offsets-' + id;
  const group = 'node-group-' + id;
  const events = Array.from({ length: 30 }, (_, i) => `${id}-${i + 1}`);
  const every = 10;
  const committed = async () => (await groupOffsets(sc.kafkaAddr, group))[topic]?.['0'] ?? 0;
  const c = new Client({ url: sc.url });
  const job = await c.job('node-offsets-' + id, { commit: 'auto' });
  let killed = false;
  let reopened = 0;
  let w = await job.writer('0');
  for (;;) {
    let pos = await committed();
    assert.equal(pos, w.restored.checkpoint * every, 'the group holds the position of the restored checkpoint');
    assert.equal(w.state, null, 'no state was sent');
    try {
      while (pos < events.length) {
        const batch = events.slice(pos, pos + every);
        await w.write(records(topic, batch));
        if (!killed && pos === every) {
          killed = true; // written, not checkpointed: the group must not move
          await sc.kill9();
        }
        const end = pos + batch.length;
        await w.checkpoint(w.lastCheckpoint + 1, null, { offsets: { sink: 'events', group, topics: { [topic]: { 0: end } } } });
        pos = end;
        assert.equal(await committed(), pos, `group offsets after checkpoint ${w.lastCheckpoint}`);
      }
      break;
    } catch (err) {
      if (!isReopen(err)) throw err;
      reopened++;
      assert.ok(reopened <= 1, 'reopened more than once');
      const restart = sc.start();
      w = await job.writer('0');
      await restart;
    }
  }
  assert.ok(killed && reopened === 1);
  expectOnce(await kafkaKeys(topic), events, 'kafka (kcat, read_committed)');
  expectOnce(await dbKeys(id), events, 'mysql (mariadb CLI)');
  c.close();
});

test('after a sidecar restart the old session is SessionLost and its writes are gone', async () => {
  const id = rid();
  const topic = 'node-lost-' + id;
  const c = new Client({ url: sc.url });
  const job = await c.job('node-lost-' + id);
  const w = await job.writer('0');
  await w.write(records(topic, [`${id}-1`]));
  await w.checkpoint(1, '1');
  await w.write(records(topic, [`${id}-2`]));
  await sc.kill9();
  await sc.start();
  await assert.rejects(w.checkpoint(2, '2'),
    (err) => err instanceof SessionLost && isReopen(err) && err.status === 409 && err.code === 'session_lost');
  const again = await job.writer('0');
  assert.equal(again.restored.checkpoint, 1);
  assert.equal(again.state.toString(), '1');
  expectOnce(await kafkaKeys(topic), [`${id}-1`], 'kafka');
  expectOnce(await dbKeys(id), [`${id}-1`], 'mysql');
  c.close();
});

// The README's example, as printed there, pointed at this sidecar.
test('the README example runs and commits its records', async () => {
  const readme = await readFile(path.join(REPO, 'clients', 'node', 'README.md'), 'utf8');
  const m = /```js\n([\s\S]*?)```/.exec(readme);
  assert.ok(m, 'README.md has a js block');
  let code = m[1];
  assert.ok(code.split('\n').filter((l) => l.trim() !== '').length <= 10, 'the example is at most 10 lines');
  code = code.replace("from 'txsink'", `from ${JSON.stringify(path.join(REPO, 'clients', 'node', 'src', 'index.js'))}`)
    .replace("'data/sidecar.sock'", JSON.stringify(sc.socket));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'txsink-node-readme-'));
  const file = path.join(dir, 'readme.mjs');
  await writeFile(file, code + '\nclient.close();\n');
  const r = await runNode([file]);
  await rm(dir, { recursive: true, force: true });
  assert.equal(r.code, 0, r.out);
  const o1 = (await kcat(sc.kafkaAddr, 'events')).filter((x) => x.key === 'o1');
  assert.deepEqual(o1, [{ key: 'o1', value: '{"total":42}' }]);
});

// examples/pageviews.mjs: crash on purpose after a write (exit 137), run
// again and kill -9 the sidecar under it while it runs (it reopens and
// resumes by itself), and the totals in MySQL and Kafka are exact.
test('the pageviews example resumes after its own crash and a sidecar kill, with exact totals', async (t) => {
  const id = rid();
  const jobName = 'pageviews-node-' + id;
  const events = 3000;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'txsink-node-pv-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const input = path.join(dir, 'clicks.ndjson');
  const example = path.join(REPO, 'clients', 'node', 'examples', 'pageviews.mjs');
  const apps = ['node-web', 'node-ios', 'node-android', 'node-tv'];
  const pv = async () => new Map((await mariadb(sc.dsn,
    `SELECT app, views FROM pv WHERE app IN (${apps.map((a) => `'${a}'`).join(',')})`)).map(([a, v]) => [a, Number(v)]));
  const before = await pv();
  const args = [example, '--socket', sc.socket, '--input', input, '--events', String(events), '--every', '50',
    '--job', jobName, '--kafka', sc.kafkaAddr];
  const first = await runNode([...args, '--crash-after', '700']);
  assert.equal(first.code, 137, `first run: exit ${first.code}, want 137 (crash on purpose)\n${first.out}`);

  const second = startNode(args);
  t.after(() => second.kill()); // a failed assertion must not leave the app running
  const checkpoints = () => (second.out().match(/^checkpoint \d+: lines/gm) ?? []).length;
  const deadline = Date.now() + 60000;
  while (checkpoints() < 3) {
    assert.ok(second.exit === null, `the second run ended before the kill:\n${second.out()}`);
    assert.ok(Date.now() < deadline, `no 3 checkpoints of the second run within 60s:\n${second.out()}`);
    await sleep(5);
  }
  await sc.kill9();
  await sc.start();
  const end = await second.done;
  assert.equal(end.code, 0, `second run failed:\n${second.out()}`);
  const out = second.out();
  // The first run wrote lines 651-700 and crashed before checkpoint 14.
  assert.match(out, /^session epoch \d+: restored checkpoint 13, 650 lines/m, 'the second run resumes at the first run\'s last checkpoint');
  assert.match(out, /reopening the writer/, 'the kill made the app reopen');
  assert.equal((out.match(/^session epoch/gm) ?? []).length, 2, 'one reopen after the kill');

  // The expected totals, from the input.
  const lines = (await readFile(input, 'utf8')).split('\n').filter((l) => l !== '').map((l) => JSON.parse(l));
  assert.equal(lines.length, events);
  const want = counts(lines.map((e) => e.app));
  const after = await pv();
  for (const a of apps) {
    assert.equal((after.get(a) ?? 0) - (before.get(a) ?? 0), want.get(a) ?? 0, `pv of ${a} (mariadb CLI)`);
  }
  const got = new Map();
  for (const r of await kcat(sc.kafkaAddr, 'pageviews')) {
    const v = JSON.parse(r.value);
    if (v.job === jobName) got.set(v.app, (got.get(v.app) ?? 0) + v.views);
  }
  assert.deepEqual(new Map([...got].sort()), new Map([...want].sort()), 'pageviews of the job (kcat, read_committed)');
});

/** Starts node with args (killed after 2 minutes): {out(), exit, done, kill()}. */
function startNode(args) {
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  let out = '';
  p.stdout.on('data', (b) => { out += b; });
  p.stderr.on('data', (b) => { out += b; });
  const t = setTimeout(() => p.kill('SIGKILL'), 120000);
  const h = { out: () => out, exit: null, done: null, kill: () => { if (h.exit === null) p.kill('SIGKILL'); } };
  h.done = new Promise((resolve, reject) => {
    p.on('error', reject);
    p.on('exit', (code, sig) => {
      clearTimeout(t);
      h.exit = { code: code ?? (sig ? 128 : -1) };
      resolve(h.exit);
    });
  });
  return h;
}

/** Runs node with args (bounded: 2 minutes): {code, out}. */
async function runNode(args) {
  const h = startNode(args);
  const { code } = await h.done;
  return { code, out: h.out() };
}
