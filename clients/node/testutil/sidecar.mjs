// Test helpers: a real `sidecar dev` (its own Kafka-protocol broker process
// and the db sink on a real MariaDB) and independent readers of what it
// committed: kcat (read_committed) for Kafka and the mariadb CLI for MySQL.
// Not under test/: `node --test` runs every file there.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The sidecar binary from TXSINK_SIDECAR_BIN; fails loudly without it. */
export function sidecarBin() {
  const bin = process.env.TXSINK_SIDECAR_BIN;
  if (!bin) {
    throw new Error('TXSINK_SIDECAR_BIN is not set: build the sidecar with `go build -o /tmp/sidecar ./cmd/sidecar` ' +
      'at the repository root and run `TXSINK_SIDECAR_BIN=/tmp/sidecar node --test clients/node/test/` ' +
      '(or `go test ./systemtest -run Node`, which does both)');
  }
  return bin;
}

/** The MariaDB server for the db sink: TXSINK_TEST_MYSQL_DSN, else the local server's socket. */
export function mysqlDSN() {
  return process.env.TXSINK_TEST_MYSQL_DSN || 'root@unix(/run/mysqld/mysqld.sock)/';
}

/** A short random id, to keep names of concurrent runs apart. */
export function rid() {
  return randomBytes(4).toString('hex');
}

const handedOut = new Set();

/** A free loopback port no earlier call returned (the kernel may hand a released one out again). */
export async function freeAddr() {
  for (let i = 0; i < 100; i++) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.on('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = /** @type {net.AddressInfo} */ (s.address()).port;
        s.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return `127.0.0.1:${port}`;
    }
  }
  throw new Error('freeAddr: 100 tries returned ports handed out before');
}

/** `sidecar dev` on a temp data dir with free ports; start, kill -9, restart, stop. */
export class DevSidecar {
  /** @param {{token?: string}} [opts] */
  static async create(opts = {}) {
    const d = new DevSidecar();
    // Short: the socket path in it must stay below 108 bytes.
    d.dataDir = await mkdtemp(path.join(os.tmpdir(), 'txsink-node-'));
    d.httpAddr = await freeAddr();
    d.kafkaAddr = await freeAddr();
    d.raftAddr = await freeAddr();
    d.socket = path.join(d.dataDir, 'sidecar.sock');
    d.dsn = mysqlDSN();
    d.token = opts.token ?? '';
    d.args = ['dev', '--data-dir', d.dataDir, '--http-addr', d.httpAddr, '--kafka-addr', d.kafkaAddr,
      '--raft-addr', d.raftAddr, '--mysql-dsn', d.dsn];
    if (d.token) {
      const tf = path.join(d.dataDir, 'token');
      await writeFile(tf, d.token + '\n', { mode: 0o600 });
      d.args.push('--token-file', tf);
    }
    d.logs = '';
    d.proc = null;
    return d;
  }

  get url() {
    return 'http://' + this.httpAddr;
  }

  /** Starts the sidecar and waits (≤ 30 s) until /readyz answers 200; fails when it exits or has no db sink. */
  async start() {
    const proc = spawn(sidecarBin(), this.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve({ code, sig })));
    this.exited = exited;
    let gone = null;
    exited.then((r) => { gone = r; });
    proc.stdout.on('data', (b) => { this.logs += b; });
    proc.stderr.on('data', (b) => { this.logs += b; });
    const deadline = Date.now() + 30000;
    for (;;) {
      if (gone) throw new Error(`sidecar dev exited during start (${JSON.stringify(gone)}):\n${this.tail(40)}`);
      if (await this.isReady()) break;
      if (Date.now() > deadline) throw new Error(`sidecar dev not ready after 30s:\n${this.tail(40)}`);
      await sleep(50);
    }
    // Poll the banner too: it is printed right after readiness.
    while (!this.logs.includes('txsink dev sidecar is ready')) {
      if (Date.now() > deadline) throw new Error(`no banner from sidecar dev:\n${this.tail(40)}`);
      await sleep(20);
    }
    if (!this.logs.includes('sink "db"')) {
      throw new Error(`sidecar dev has no db sink: MariaDB did not answer at ${this.dsn} ` +
        `(set TXSINK_TEST_MYSQL_DSN to a server, e.g. root@unix(/run/mysqld/mysqld.sock)/):\n${this.tail(30)}`);
    }
  }

  async isReady() {
    const [host, port] = this.httpAddr.split(':');
    return new Promise((resolve) => {
      const s = net.connect({ host, port: Number(port) }, () => {
        s.write(`GET /readyz HTTP/1.1\r\nHost: ${this.httpAddr}\r\nConnection: close\r\n\r\n`);
      });
      let buf = '';
      s.setTimeout(1000, () => { s.destroy(); resolve(false); });
      s.on('data', (b) => { buf += b; });
      s.on('error', () => resolve(false));
      s.on('close', () => resolve(buf.startsWith('HTTP/1.1 200')));
    });
  }

  /** kill -9 of the sidecar; its broker keeps running. */
  async kill9() {
    if (!this.proc) return;
    this.proc.kill('SIGKILL');
    await this.exited;
    this.proc = null;
  }

  /** Ctrl-C (SIGINT), SIGKILL after 20 s. */
  async stop() {
    if (!this.proc) return;
    this.proc.kill('SIGINT');
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), 20000);
    await this.exited;
    clearTimeout(t);
    this.proc = null;
  }

  /** Stops the sidecar, then any broker a killed one left behind, and removes the data dir. */
  async destroy() {
    await this.stop();
    const out = await run(sidecarBin(), ['dev', '--data-dir', this.dataDir, '--stop-broker'], 60000);
    await rm(this.dataDir, { recursive: true, force: true });
    return out;
  }

  tail(n) {
    return this.logs.split('\n').slice(-n).join('\n');
  }
}

/**
 * Runs a command; resolves to its stdout, rejects with its output on failure.
 * @param {string} cmd
 * @param {string[]} args
 * @param {number} timeout ms
 */
export function run(cmd, args, timeout = 30000) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * Every committed record of a topic, read by kcat with
 * isolation.level=read_committed: [{key, value}].
 */
export async function kcat(kafkaAddr, topic) {
  const out = await run('kcat', ['-C', '-b', kafkaAddr, '-t', topic, '-X', 'isolation.level=read_committed',
    '-e', '-q', '-f', '%k\t%s\n'], 60000);
  return out.split('\n').filter((l) => l !== '').map((l) => {
    const i = l.indexOf('\t');
    return { key: l.slice(0, i), value: l.slice(i + 1) };
  });
}

/**
 * The consumer group's committed offsets, {topic: {partition: nextOffset}}, read by an
 * independent reader: kcat cannot show group offsets, so this runs the repository's tiny Go
 * reader (internal/cmd/groupoffsets: franz-go's kadm with require_stable, so offsets in an open
 * transaction are waited for, never reported as committed) from TXSINK_GROUPOFFSETS_BIN.
 */
export async function groupOffsets(kafkaAddr, group) {
  const bin = process.env.TXSINK_GROUPOFFSETS_BIN;
  if (!bin) {
    throw new Error('TXSINK_GROUPOFFSETS_BIN is not set: build it with `go build -o /tmp/groupoffsets ' +
      './internal/cmd/groupoffsets` at the repository root and set TXSINK_GROUPOFFSETS_BIN=/tmp/groupoffsets ' +
      '(`go test ./systemtest -run Node` does both)');
  }
  return JSON.parse(await run(bin, ['--brokers', kafkaAddr, '--group', group], 60000));
}

/** The mariadb CLI's arguments for a Go-style DSN (user[:pass]@unix(path)/ or @tcp(host:port)/). */
export function mariadbArgs(dsn) {
  const m = /^([^:@]*)(?::([^@]*))?@(unix|tcp)\(([^)]*)\)\//.exec(dsn);
  if (!m) throw new Error(`cannot read the MySQL DSN ${dsn} (want user[:pass]@unix(path)/ or user[:pass]@tcp(host:port)/)`);
  const [, user, pass, netw, addr] = m;
  const args = ['-u' + (user || 'root')];
  if (pass) args.push('-p' + pass);
  if (netw === 'unix') {
    args.push('--socket=' + addr);
  } else {
    const i = addr.lastIndexOf(':');
    args.push('--protocol=tcp', '-h' + addr.slice(0, i), '-P' + addr.slice(i + 1));
  }
  return args;
}

/** Runs a query on txsink_dev with the mariadb CLI: rows of tab-separated columns. */
export async function mariadb(dsn, sql) {
  const out = await run('mariadb', [...mariadbArgs(dsn), '-N', '-B', '-e', sql, 'txsink_dev'], 60000);
  return out.split('\n').filter((l) => l !== '').map((l) => l.split('\t'));
}

/** How often each item occurs. */
export function counts(items) {
  const m = new Map();
  for (const x of items) m.set(x, (m.get(x) ?? 0) + 1);
  return m;
}
