// Retries, transport errors and data loss against a tiny local HTTP stub:
// the real sidecar cannot be made to answer 429/503, hang or lose data on
// demand. Everything else is tested against a real sidecar
// (sidecar.test.mjs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  Client, Writer, Backpressure, Unavailable, OwnerUnreachable, SessionLost, DataLoss, isReopen,
} from '../src/index.js';

/**
 * Starts a stub whose handler gets (req, body, calls) and returns
 * [status, headers, body] or null (never answer).
 */
async function stub(handler) {
  const calls = [];
  const hung = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      calls.push({ method: req.method, url: req.url, auth: req.headers.authorization, body });
      const out = handler(req, body, calls);
      if (out === null) {
        hung.push(res);
        return;
      }
      const [status, headers, resBody] = out;
      res.writeHead(status, headers);
      res.end(typeof resBody === 'string' ? resBody : JSON.stringify(resBody));
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return {
    url, calls,
    close: () => new Promise((r) => { hung.forEach((res) => res.destroy()); srv.closeAllConnections(); srv.close(r); }),
  };
}

const JSON_H = { 'Content-Type': 'application/json' };
const problem = (status, code, extra = {}) =>
  ({ type: 'urn:txsink:problem:' + code, title: code, status, code, detail: 'stub ' + code, ...extra });
const PROBLEM_H = (h = {}) => ({ 'Content-Type': 'application/problem+json', ...h });
const SESSION = { epoch: 7, checkpoint: 3, state: Buffer.from('pos=30').toString('base64'), status: 'committed', data_loss: [] };

/** A stub sidecar: PUT job and open session answer; records and checkpoints go to onSession. */
function sidecarStub(onSession) {
  return stub((req, body, calls) => {
    if (req.method === 'PUT') return [200, JSON_H, { name: 'j', commit: 'auto', sinks: ['events'], writers: [] }];
    if (req.url.endsWith('/session')) return [200, JSON_H, SESSION];
    return onSession(req, body, calls.filter((c) => c.url.includes('/records') || c.url.includes('/checkpoints')));
  });
}

test('429 and 503 are retried after Retry-After with the same seq and body', async () => {
  const s = await sidecarStub((req, body, calls) => {
    if (calls.length === 1) return [429, PROBLEM_H({ 'Retry-After': '0' }), problem(429, 'backpressure')];
    if (calls.length === 2) return [503, PROBLEM_H({ 'Retry-After': '0' }), problem(503, 'unavailable')];
    if (req.url.includes('/records')) return [200, JSON_H, { accepted: 1, seq: 1 }];
    return [202, JSON_H, { checkpoint: 4, status: 'committing', branches: [] }];
  });
  const c = new Client({ url: s.url, token: 'tok', retryFor: 5000 });
  const w = await (await c.job('j')).writer('0');
  assert.equal(w.epoch, 7);
  assert.equal(w.restored.checkpoint, 3);
  assert.equal(w.state.toString(), 'pos=30');
  assert.deepEqual(await w.write([{ sink: 'events', value: 1 }]), { accepted: 1, seq: 1 });
  const writes = s.calls.filter((x) => x.url.includes('/records'));
  assert.equal(writes.length, 3, 'two retries and the answer');
  for (const x of writes) {
    assert.equal(x.url, '/v1/jobs/j/writers/0/records?epoch=7&seq=1');
    assert.equal(x.body, '{"sink":"events","value":1}\n');
    assert.equal(x.auth, 'Bearer tok');
  }
  // 202 committing is a result, not an error.
  const res = await w.checkpoint(4, Buffer.from('pos=40'));
  assert.equal(res.status, 'committing');
  assert.equal(w.lastCheckpoint, 4);
  const ck = s.calls.at(-1);
  assert.equal(ck.url, '/v1/jobs/j/writers/0/checkpoints/4?epoch=7');
  assert.deepEqual(JSON.parse(ck.body), { state: Buffer.from('pos=40').toString('base64') });
  // The next write gets the next seq.
  await w.write([{ sink: 'events', value: 2 }]);
  assert.match(s.calls.at(-1).url, /seq=2$/);
  c.close();
  await s.close();
});

test('429 past retryFor surfaces as Backpressure; 503 naming an owner is never retried', async () => {
  const s = await sidecarStub((req) => {
    if (req.url.includes('/records')) return [429, PROBLEM_H({ 'Retry-After': '0' }), problem(429, 'backpressure')];
    return [503, PROBLEM_H({ 'Retry-After': '0' }), problem(503, 'unavailable', { owner: 'node2' })];
  });
  const c = new Client({ url: s.url, retryFor: 300 });
  const w = await (await c.job('j')).writer('0');
  await assert.rejects(w.write([{ value: 1 }]), (err) => err instanceof Backpressure && err.status === 429 && !isReopen(err));
  const n = s.calls.filter((x) => x.url.includes('/records')).length;
  assert.ok(n >= 2 && n <= 10, `${n} attempts in 300 ms of 50 ms waits`);
  await assert.rejects(w.checkpoint(4, 'x'), (err) => err instanceof OwnerUnreachable && err.owner === 'node2' && isReopen(err));
  assert.equal(s.calls.filter((x) => x.url.includes('/checkpoints')).length, 1);
  c.close();
  await s.close();
});

test('the token comes from TXSINK_TOKEN when no option names it', async () => {
  const s = await sidecarStub(() => [200, JSON_H, {}]);
  const saved = process.env.TXSINK_TOKEN;
  process.env.TXSINK_TOKEN = 'from-env';
  try {
    const c = new Client({ url: s.url });
    await c.job('j');
    assert.equal(s.calls[0].auth, 'Bearer from-env');
    c.close();
  } finally {
    if (saved === undefined) delete process.env.TXSINK_TOKEN;
    else process.env.TXSINK_TOKEN = saved;
  }
  await s.close();
});

test('a session call that gets no answer in time is SessionLost (outcome unknown), not retried', async () => {
  const s = await sidecarStub(() => null);
  const c = new Client({ url: s.url, timeout: 300, retryFor: 5000 });
  const w = await (await c.job('j')).writer('0');
  const t0 = Date.now();
  await assert.rejects(w.write([{ value: 1 }]), (err) => err instanceof SessionLost && err.code === 'no_answer' && isReopen(err));
  assert.ok(Date.now() - t0 < 4000, 'bounded by the call timeout, not retried');
  assert.equal(s.calls.filter((x) => x.url.includes('/records')).length, 1);
  c.close();
  await s.close();
});

test('no connection: a session call is SessionLost at once; other calls retry, then Unavailable', async () => {
  const s = await sidecarStub(() => [200, JSON_H, { accepted: 1 }]);
  const c = new Client({ url: s.url, retryFor: 400 });
  const w = await (await c.job('j')).writer('0');
  await s.close();
  await assert.rejects(w.write([{ value: 1 }]), (err) => err instanceof SessionLost && err.code === 'no_answer');
  const t0 = Date.now();
  await assert.rejects(c.job('j'), (err) => err instanceof Unavailable && err.code === 'no_answer');
  assert.ok(Date.now() - t0 >= 250, 'the open retried for about retryFor');
  c.close();
});

test('DataLoss: on an open over lost checkpoints (with the opened writer) and on a checkpoint (with its result)', async () => {
  const lost = { checkpoint: 4, status: 'data_loss', branches: [{ sink: 'events', slot: 0, status: 'data_loss' }] };
  const s = await stub((req, body, calls) => {
    if (req.method === 'PUT') return [200, JSON_H, { name: 'j', commit: 'auto', sinks: ['events'], writers: [] }];
    if (req.url.endsWith('/session')) {
      const n = calls.filter((c) => c.url.endsWith('/session')).length;
      return [200, JSON_H, n === 1 ? { ...SESSION, status: 'data_loss', data_loss: [3] } : SESSION];
    }
    return [502, PROBLEM_H(), problem(502, 'data_loss', { result: lost })];
  });
  const c = new Client({ url: s.url });
  const job = await c.job('j');
  await assert.rejects(job.writer('0'), (err) => err instanceof DataLoss && !isReopen(err) &&
    err.writer instanceof Writer && err.writer.epoch === 7 && err.writer.dataLoss[0] === 3);
  const w = await job.writer('0');
  await assert.rejects(w.checkpoint(4, 'x'), (err) => err instanceof DataLoss && err.status === 502 &&
    err.result.status === 'data_loss' && !isReopen(err));
  assert.equal(s.calls.filter((x) => x.url.includes('/checkpoints')).length, 1, 'data loss is never retried');
  c.close();
  await s.close();
});

test('bytes keys and values go out as key_b64 / value_b64', async () => {
  const s = await sidecarStub(() => [200, JSON_H, { accepted: 2, seq: 1 }]);
  const c = new Client({ url: s.url });
  const w = await (await c.job('j')).writer('0');
  await w.write([{ key: Buffer.from([0, 255]), value: new Uint8Array([1, 2, 3]) }, { key: 'k', value: { a: 1 } }]);
  assert.equal(s.calls.at(-1).body,
    '{"key_b64":"AP8=","value_b64":"AQID"}\n{"key":"k","value":{"a":1}}\n');
  await assert.rejects(w.write([{ value: Buffer.from('x'), value_b64: 'eA==' }]), TypeError);
  c.close();
  await s.close();
});

test('guarantee goes in the PUT body only when given; a non-string throws before any call', async () => {
  const s = await sidecarStub(() => [500, JSON_H, {}]);
  const c = new Client({ url: s.url });
  await c.job('j', { guarantee: 'at_least_once' });
  await c.job('j', { sinks: ['events'] });
  await assert.rejects(c.job('j', { guarantee: 1 }), TypeError);
  assert.deepEqual(s.calls.map((x) => [x.method, x.url, JSON.parse(x.body)]), [
    ['PUT', '/v1/jobs/j', { guarantee: 'at_least_once' }],
    ['PUT', '/v1/jobs/j', { sinks: ['events'] }],
  ]);
  c.close();
  await s.close();
});

test('checkpoint offsets go out as {sink, group, topics}; bad ones throw before anything is sent', async () => {
  const s = await sidecarStub(() => [200, JSON_H, { checkpoint: 4, status: 'committed', branches: [] }]);
  const c = new Client({ url: s.url });
  const w = await (await c.job('j')).writer('0');
  await w.checkpoint(4, null, { offsets: { sink: 'events', group: 'g', topics: { clicks: { 0: 500, '1': 480 } } } });
  assert.deepEqual(JSON.parse(s.calls.at(-1).body),
    { offsets: { sink: 'events', group: 'g', topics: { clicks: { 0: 500, 1: 480 } } } });
  const sent = s.calls.length;
  const good = { sink: 'events', group: 'g', topics: { t: { 0: 1 } } };
  for (const [name, offsets, msg] of [
    ['not an object', [1], /offsets must be an object/],
    ['unknown field', { ...good, group_id: 'g' }, /unknown field\(s\) \["group_id"\]/],
    ['no sink', { group: 'g', topics: { t: { 0: 1 } } }, /offsets.sink must be a non-empty string/],
    ['empty group', { ...good, group: '' }, /offsets.group must be a non-empty string/],
    ['no topics', { ...good, topics: {} }, /offsets.topics must be a non-empty object/],
    ['no partitions', { ...good, topics: { t: {} } }, /offsets.topics\["t"\] must be a non-empty object/],
    ['bad partition', { ...good, topics: { t: { x: 1 } } }, /partition "x" is not a partition number/],
    ['negative offset', { ...good, topics: { t: { 0: -5 } } }, /offset must be an integer ≥ 0/],
    ['fractional offset', { ...good, topics: { t: { 0: 1.5 } } }, /offset must be an integer ≥ 0/],
    ['bad generation', { ...good, generation: '1' }, /offsets.generation must be an integer/],
    ['bad member_id', { ...good, member_id: 3 }, /offsets.member_id must be a string/],
  ]) {
    await assert.rejects(w.checkpoint(5, null, { offsets }), (err) => err instanceof TypeError && msg.test(err.message), name);
  }
  assert.equal(s.calls.length, sent, 'nothing sent for bad offsets');
  assert.equal(w.lastCheckpoint, 4);
  c.close();
  await s.close();
});
