// txsink status page. It polls the sidecar's own /v1 API every 2 s and
// builds the DOM with createElement and textContent only: job and writer
// names are data, and the page's CSP allows no inline script anyway.
// The token lives in sessionStorage (this tab only) and is sent as
// Authorization: Bearer on every call; a 401 asks for it again.
"use strict";
(function () {
  const REFRESH_MS = 2000;
  const CALL_TIMEOUT_MS = 5000;
  const TOKEN_KEY = "txsink-token";
  // Unresolved statuses: the journal or a sink has not finished them.
  const IN_DOUBT = new Set(["prepared", "committing", "aborting"]);

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let gen = 0; // bumped by restart(): a stale loop stops scheduling itself
  let timer = null;
  let lastOK = null;

  const $ = (id) => document.getElementById(id);

  class Unauthorized extends Error {}
  class HTTPError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function get(path) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), CALL_TIMEOUT_MS);
    let resp, body = null;
    try {
      resp = await fetch(path, { headers, cache: "no-store", credentials: "omit", signal: ctl.signal });
      if (resp.status === 401) throw new Unauthorized("401");
      try { body = await resp.json(); } catch (e) { body = null; }
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      throw new Error(path + ": no answer (" + (e.name === "AbortError" ? "timed out after " + CALL_TIMEOUT_MS / 1000 + " s" : e.message) + ")");
    } finally {
      clearTimeout(t);
    }
    if (!resp.ok) {
      const why = body && body.code ? body.code + ": " + (body.detail || "") : resp.statusText;
      throw new HTTPError(resp.status, path + " answered " + resp.status + " " + why);
    }
    return body;
  }

  async function load() {
    let cluster = null;
    try {
      cluster = await get("/v1/cluster");
    } catch (e) {
      // A sidecar embedded without cluster status answers 404: not an error.
      if (!(e instanceof HTTPError && e.status === 404)) throw e;
    }
    const jobs = ((await get("/v1/jobs")) || {}).jobs || [];
    const cps = await Promise.all(jobs.map((j) =>
      get("/v1/jobs/" + encodeURIComponent(j.name) + "/checkpoints")
        .then((b) => (b && b.checkpoints) || [])
        .catch((e) => {
          if (e instanceof HTTPError && e.status === 404) return []; // deleted meanwhile
          throw e;
        })
        .then((list) => list.map((c) => Object.assign({ job: j.name }, c)))));
    return { cluster, jobs, checkpoints: cps.flat() };
  }

  // el builds an element; children are nodes or strings (as text).
  function el(tag, cls, ...children) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const badge = (cls, text) => el("span", "badge " + cls, text);

  function fill(tableId, rows) {
    const tb = $(tableId).tBodies[0];
    tb.replaceChildren(...rows);
  }

  function pad(n) { return String(n).padStart(2, "0"); }
  function hhmmss(d) { return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }
  function secs(x) { return (x < 10 ? x.toFixed(1) : Math.round(x).toString()) + " s"; }

  function render(d) {
    const c = d.cluster;
    const timeouts = new Map();
    if (c) {
      const leader = c.leader || "";
      $("node").replaceChildren(
        "Node ", el("strong", null, c.node), " is ", el("strong", null, c.role), ". Leader: ",
        leader ? el("strong", "leader-name", leader) : badge("down", "NO LEADER"),
        ". Applied index " + c.applied_index + " of " + c.last_index + ".");
      fill("members", (c.members || []).map((m) => el("tr", null,
        el("td", null, m.id),
        el("td", null, m.id === leader ? badge("leader", "LEADER") : ""),
        el("td", null, m.voter ? "voter" : "non-voter"),
        el("td", null, m.reachable ? badge("ok", "reachable") : badge("down", "UNREACHABLE")),
        el("td", null, m.raft_addr || m.address || ""),
        el("td", null, m.api_addr || "unknown"))));
      for (const s of c.sinks || []) {
        if (s.transaction_timeout_seconds > 0) timeouts.set(s.name, s.transaction_timeout_seconds);
      }
      fill("sinks", (c.sinks || []).map((s) => el("tr", null,
        el("td", null, s.name), el("td", null, s.kind),
        el("td", null, s.transaction_timeout_seconds > 0 ? secs(s.transaction_timeout_seconds) : "none"))));
    } else {
      $("node").textContent = "This sidecar reports no cluster status.";
      fill("members", []);
      fill("sinks", []);
    }

    // The delivery guarantee; anything but exactly_once is marked, since
    // its records may be duplicated (at_least_once) or dropped (none).
    const guarantee = (j) => {
      const g = j.guarantee || "exactly_once";
      return g === "exactly_once" ? g : badge(g === "none" ? "down" : "in-doubt", g);
    };

    // A writer's last_committed counts a checkpoint decided to commit even
    // when a sink had aborted it: say so next to the number.
    const lost = new Set(d.checkpoints.filter((cp) => cp.status === "data_loss")
      .map((cp) => cp.job + "\u0000" + cp.writer + "\u0000" + cp.checkpoint));
    const wrows = [];
    for (const j of d.jobs) {
      const ws = j.writers || [];
      if (ws.length === 0) {
        wrows.push(el("tr", null, el("td", null, j.name), el("td", null, j.commit), el("td", null, guarantee(j)),
          el("td", "muted", "no writers"), el("td"), el("td"), el("td"), el("td")));
      }
      for (const w of ws) {
        const doubt = w.in_doubt || [];
        const cell = doubt.length
          ? el("td", null, badge("in-doubt", "IN DOUBT"), " checkpoint" + (doubt.length > 1 ? "s " : " ") + doubt.join(", "))
          : el("td", "muted", "none");
        const lc = el("td", null, w.last_committed > 0 ? String(w.last_committed) : "none");
        const lossHere = lost.has(j.name + "\u0000" + w.name + "\u0000" + w.last_committed);
        if (lossHere) lc.append(" ", badge("data-loss", "DATA LOSS"));
        wrows.push(el("tr", lossHere ? "data-loss" : doubt.length ? "in-doubt" : null,
          el("td", null, j.name), el("td", null, j.commit), el("td", null, guarantee(j)), el("td", null, w.name),
          el("td", null, w.epoch), el("td", null, w.owner || "none"), lc, cell));
      }
    }
    if (wrows.length === 0) wrows.push(el("tr", null, el("td", "muted", "no jobs")));
    fill("writers", wrows);

    const cps = d.checkpoints.slice().sort((a, b) =>
      a.job.localeCompare(b.job) || a.writer.localeCompare(b.writer) || a.checkpoint - b.checkpoint);
    let doubtN = 0, lossN = 0;
    const crows = cps.map((cp) => {
      const loss = cp.status === "data_loss";
      const doubt = IN_DOUBT.has(cp.status);
      if (loss) lossN++;
      if (doubt) doubtN++;
      const status = loss ? el("td", null, badge("data-loss", "DATA LOSS"), " data_loss")
        : doubt ? el("td", null, badge("in-doubt", "IN DOUBT"), " " + cp.status)
          : el("td", null, cp.status === "committed" ? badge("ok", cp.status) : cp.status);
      const branches = el("td", null);
      let tmo = 0;
      for (const b of cp.branches || []) {
        branches.append(el("div", null, b.sink + ": " + b.status));
        const t = timeouts.get(b.sink);
        if (t && (tmo === 0 || t < tmo)) tmo = t; // the shortest one expires first
      }
      const age = cp.age_seconds || 0;
      const ageCell = el("td", null);
      if (!doubt && cp.status !== "open") {
        // Decided and finished: the broker's timeout no longer matters.
        ageCell.append(secs(age) + " (decided)");
      } else if (tmo > 0) {
        const m = document.createElement("meter");
        m.min = 0; m.max = tmo; m.value = Math.min(age, tmo);
        m.low = tmo / 2; m.high = tmo * 0.8; m.optimum = 0;
        ageCell.append(m, secs(age) + " of " + secs(tmo));
        // The broker counts from the transaction's start (the first
        // write), before prepared_at: past this line it has aborted the
        // transaction or is about to.
        if (doubt && age >= tmo) {
          ageCell.append(" ", el("span", "over", "past the transaction timeout: Kafka aborts it, a commit loses data"));
        }
      } else {
        ageCell.append(secs(age) + " (no Kafka branch)");
      }
      return el("tr", loss ? "data-loss" : doubt ? "in-doubt" : null,
        el("td", null, cp.job), el("td", null, cp.writer), el("td", null, cp.checkpoint),
        el("td", null, cp.epoch), status, branches, ageCell);
    });
    if (crows.length === 0) crows.push(el("tr", null, el("td", "muted", "no checkpoints")));
    fill("checkpoints", crows);

    const parts = [];
    parts.push(doubtN === 0 ? "No checkpoint in doubt" : doubtN + (doubtN > 1 ? " checkpoints" : " checkpoint") + " IN DOUBT");
    parts.push(lossN === 0 ? "no data loss" : lossN + (lossN > 1 ? " checkpoints" : " checkpoint") + " with DATA LOSS");
    $("summary").textContent = parts.join(", ") + ".";
    $("summary").className = "summary" + (lossN ? " data-loss" : doubtN ? " in-doubt" : "");
  }

  function showBanner(text) { $("banner").textContent = text; $("banner").hidden = false; }
  function hideBanner() { $("banner").hidden = true; $("banner").textContent = ""; }

  function askToken(reason) {
    $("token-reason").textContent = reason;
    $("token-form").hidden = false;
    $("content").hidden = true;
    $("forget").hidden = !token;
    $("token").focus();
  }

  async function tick(g) {
    timer = null;
    try {
      const data = await load();
      if (g !== gen) return;
      render(data);
      lastOK = new Date();
      $("updated").textContent = "updated " + hhmmss(lastOK);
      hideBanner();
      $("token-form").hidden = true;
      $("content").hidden = false;
      $("forget").hidden = !token;
    } catch (e) {
      if (g !== gen) return;
      if (e instanceof Unauthorized) {
        // No refresh while the token is missing: a person has to act.
        askToken(token
          ? "The sidecar refused the token (401). Enter the right one."
          : "This sidecar needs its bearer token (401).");
        return;
      }
      showBanner("The sidecar does not answer: " + e.message +
        (lastOK ? ". Showing data from " + hhmmss(lastOK) + "." : "."));
    }
    timer = setTimeout(() => tick(g), REFRESH_MS);
  }

  function restart() {
    gen++;
    if (timer) clearTimeout(timer);
    timer = null;
    tick(gen);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = $("token").value.trim();
      if (!v) return;
      token = v;
      sessionStorage.setItem(TOKEN_KEY, v);
      $("token").value = "";
      restart();
    });
    $("forget").addEventListener("click", () => {
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      $("content").hidden = true; // what the token showed goes with it
      $("forget").hidden = true;
      restart();
    });
    restart();
  });
})();
