// Lifeboat's dashboard: polls the daemon's API with the bearer token the person signed in
// with (kept in this tab, or on this device when asked), never a cookie, so another site
// cannot act with it. Everything shown comes from /api/v1/status and each service's history;
// every value is put into the page as text, never as HTML.
'use strict';

const KEY = 'lifeboat-token';
let token = sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || '';
let me = null;
let last = null;
let histories = {};
let timer = null;
let tick = 0;

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

async function call(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const err = new Error((data && data.error) || (r.status + ' ' + r.statusText));
    err.status = r.status;
    err.hint = data && data.hint;
    throw err;
  }
  return data;
}

function ago(iso) {
  if (!iso) return 'never';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return dur(s) + ' ago';
}

function dur(s) {
  if (s === null || s === undefined) return '—';
  if (s < 1) return (s * 1000).toFixed(0) + ' ms';
  if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 7200) return (s / 60).toFixed(0) + ' min';
  if (s < 172800) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' days';
}

function badge(text, kind) { return h('span', { class: 'badge ' + kind }, text); }

function show(which) {
  document.getElementById('login').hidden = which !== 'login';
  document.getElementById('board').hidden = which !== 'board';
  document.getElementById('logout').hidden = which !== 'board';
}

async function signIn(t, remember) {
  token = t.trim();
  me = await call('GET', '/api/v1/whoami');
  (remember ? localStorage : sessionStorage).setItem(KEY, token);
  document.getElementById('who').textContent = me.name + ' (' + me.role + ')';
  show('board');
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, 2000);
}

function signOut() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
  token = '';
  me = null;
  clearInterval(timer);
  show('login');
  document.getElementById('token').focus();
}

async function refresh() {
  const banner = document.getElementById('banner');
  try {
    const st = await call('GET', '/api/v1/status');
    tick++;
    for (const s of st.services) {
      const changed = !last || JSON.stringify(pick(last, s.name)) !== JSON.stringify([s.primary, s.epoch]);
      if (s.kind === 'postgres' && (changed || tick % 3 === 0 || !histories[s.name])) {
        try { histories[s.name] = (await call('GET', '/api/v1/services/' + encodeURIComponent(s.name) + '/history')).events; } catch (e) { /* keep the last */ }
      }
    }
    last = st;
    banner.hidden = true;
    render(st);
    document.getElementById('fresh').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    if (e.status === 401) { signOut(); document.getElementById('login-error').textContent = 'The token is no longer accepted.'; return; }
    banner.hidden = false;
    banner.textContent = 'Cannot reach the daemon (' + e.message + ')' + (last ? ': showing what it said at ' + new Date(Date.parse(last.now)).toLocaleTimeString() : '');
  }
}

function pick(st, name) {
  const s = st.services.find((x) => x.name === name);
  return s ? [s.primary, s.epoch] : null;
}

function render(st) {
  document.getElementById('plan').textContent = 'plan ' + st.plan + ' · Lifeboat ' + st.version;
  const box = document.getElementById('services');
  const focused = document.activeElement && document.activeElement.id;
  box.replaceChildren(...st.services.map(serviceCard));
  renderIncidents(st.incidents);
  renderSchedules(st.schedules);
  renderJobs(st.jobs);
  if (focused) { const el = document.getElementById(focused); if (el) el.focus(); }
}

function serviceCard(s) {
  const o = s.objectives;
  const a = s.ages;
  const rpoBadge = s.rpo === 'met' ? badge('RPO met', 'ok') : s.rpo === 'breached' ? badge('RPO breached', 'bad') : badge('RPO not measured yet', 'muted');
  let rtoBadge = badge('RTO not measured yet', 'muted');
  const rto = a.drill_rto_seconds ?? a.verified_restore_rto_seconds;
  if (o && rto !== null && rto !== undefined) rtoBadge = rto <= o.rto_seconds ? badge('RTO met', 'ok') : badge('RTO breached', 'bad');
  const card = h('section', { class: 'card service', 'data-service': s.name, 'aria-label': 'service ' + s.name },
    h('h2', {}, s.name, badge(s.kind, 'muted'), badge('tier ' + s.tier, 'muted'), rpoBadge, rtoBadge));
  if (o) {
    const actual = a.rpo_actual_seconds;
    card.append(h('h3', {}, 'Recovery point'),
      h('div', { class: 'small' }, 'now ', actual === null || actual === undefined ? 'unknown' : dur(actual), ' of data at risk; objective ', dur(o.rpo_seconds), ' · recovery time objective ', dur(o.rto_seconds)),
      h('meter', { min: 0, max: o.rpo_seconds * 2, low: o.rpo_seconds * 0.8, high: o.rpo_seconds, optimum: 0, value: actual ?? 0, title: 'data at risk against the objective' }));
  }
  if (a.recovery_window_start || a.recovery_window_end) {
    const start = Date.parse(a.recovery_window_start || a.recovery_window_end);
    const end = Date.parse(a.recovery_window_end || a.recovery_window_start);
    const span = Math.max(1, Date.now() - start);
    const bar = h('div', { class: 'window', role: 'img', 'aria-label': 'recoverable window' },
      h('span', { style: 'left:0;width:' + Math.min(100, ((end - start) / span) * 100).toFixed(1) + '%' }));
    card.append(h('h3', {}, 'Recoverable window'), bar,
      h('div', { class: 'small' }, 'from ', new Date(start).toLocaleString(), ' to ', new Date(end).toLocaleString(), ' (', ago(a.recovery_window_end), ')'));
  }
  card.append(h('h3', {}, 'Last'), h('dl', { class: 'ages' },
    h('dt', {}, 'backup'), h('dd', {}, ago(a.last_backup), a.last_backup_failure && (!a.last_backup || a.last_backup_failure > a.last_backup) ? h('span', { class: 'error' }, ' · failed ' + ago(a.last_backup_failure)) : ''),
    h('dt', {}, 'WAL archived'), h('dd', {}, ago(a.last_wal_archived)),
    h('dt', {}, 'verified restore'), h('dd', {}, ago(a.last_verified_restore), a.verified_restore_rto_seconds != null ? ' · took ' + dur(a.verified_restore_rto_seconds) : ''),
    h('dt', {}, 'drill'), h('dd', {}, ago(a.last_drill), a.drill_rto_seconds != null ? ' · RTO ' + dur(a.drill_rto_seconds) : '', a.drill_rpo_seconds != null ? ' · RPO ' + dur(a.drill_rpo_seconds) : ''),
    h('dt', {}, 'cross-region copy'), h('dd', {}, ago(a.last_copy))));
  if (s.members && s.members.length) {
    card.append(h('h3', {}, 'Topology', s.epoch ? ' · epoch ' + s.epoch : ''),
      h('table', { class: 'members' }, h('thead', {}, h('tr', {}, h('th', {}, 'Site'), h('th', {}, 'Timeline'), h('th', {}, 'Role'), h('th', {}, 'Lag'))),
        h('tbody', {}, s.members.map((m) => h('tr', { 'data-site': m.site, 'data-role': m.healthy ? (m.role || '') : 'down' },
          h('td', {}, m.site),
          h('td', {}, m.timeline ?? '—'),
          h('td', {}, !m.healthy ? badge('down' + (m.failure ? ': ' + m.failure : ''), 'bad') : m.routed_primary ? badge('primary · takes writes', 'ok') : m.role === 'standby' ? badge(m.streaming === false ? 'standby, not streaming' : 'standby', m.streaming === false ? 'warn' : 'ok') : badge(m.role || 'up', 'warn')),
          h('td', {}, m.lag_seconds != null ? dur(m.lag_seconds) : m.lag_bytes != null ? m.lag_bytes + ' B' : '—'))))));
  }
  if (s.decision && s.decision.decision) {
    card.append(h('p', { class: 'small' }, 'Monitor: ', s.decision.decision.reason));
  }
  if (s.failover_in_progress) card.append(h('p', { class: 'error' }, 'Failover to ' + s.failover_in_progress + ' under way'));
  const hist = histories[s.name] || [];
  const shown = hist.filter((e) => /failover|switchover|rejoin|failback|drill|restore|verify/.test(e.command)).slice(0, 8);
  if (shown.length) {
    card.append(h('h3', {}, 'Timeline'), h('ul', { class: 'plain timeline' }, shown.map((e) =>
      h('li', { class: e.outcome }, h('strong', {}, e.command), ' ', e.outcome, ' · ', ago(e.time), ' · by ', e.actor,
        e.duration_ms ? ' · ' + dur(e.duration_ms / 1000) : '',
        reason(e) ? h('div', { class: 'small' }, reason(e)) : ''))));
  }
  if (s.actions && s.actions.length) {
    const canAct = me && (me.role === 'operator' || me.role === 'admin');
    // A switchover to a member that is down would only be called off: offered when it is up.
    const down = (x) => x.body && x.body.to && !(s.members || []).some((m) => m.site === x.body.to && m.healthy);
    card.append(h('h3', {}, 'Actions'), h('div', { class: 'actions' }, s.actions.map((x, i) =>
      h('div', { class: 'action' },
        h('button', { type: 'button', id: 'act-' + s.name + '-' + i, class: 'secondary', disabled: !canAct || down(x), title: !canAct ? 'needs an operator token' : down(x) ? x.body.to + ' is down' : '', onclick: () => ask(s, x) }, x.label),
        h('code', {}, x.command)))));
  }
  return card;
}

function reason(e) {
  const f = e.figures || {};
  const r = f.reason || (f.decision && f.decision.reason) || f.aborted || f.error || '';
  const move = f.from && f.to ? f.from + ' → ' + f.to : f.to ? '→ ' + f.to : '';
  return [move, r].filter(Boolean).join(': ');
}

function renderIncidents(list) {
  const card = document.getElementById('incidents-card');
  card.hidden = !list || !list.length;
  if (card.hidden) return;
  const canAct = me && (me.role === 'operator' || me.role === 'admin');
  document.getElementById('incidents').replaceChildren(...list.map((i) => h('li', { 'data-incident': i.id },
    badge(i.severity, i.severity === 'P1' || i.severity === 'P2' ? 'bad' : 'warn'),
    h('strong', {}, i.id), i.title, h('span', { class: 'small' }, 'opened ' + ago(i.opened) + ' · ' + (i.state === 'acknowledged' ? 'acknowledged by ' + i.acknowledged_by : 'not acknowledged') + (i.escalated.length ? ' · escalated ' + i.escalated.length + '×' : '')),
    i.state === 'open' ? h('button', { type: 'button', class: 'secondary', disabled: !canAct, onclick: () => ask(null, { label: 'Acknowledge ' + i.id, command: 'lifeboat ack ' + i.id, method: 'POST', path: '/api/v1/incidents/' + i.id + '/ack', body: {}, confirm: 'plain' }) }, 'acknowledge') : '',
    h('button', { type: 'button', class: 'secondary', onclick: () => showReport(i.id) }, 'report'))));
}

async function showReport(id) {
  const dlg = document.getElementById('report');
  const pre = document.getElementById('report-text');
  try {
    const r = await fetch('/api/v1/incidents/' + encodeURIComponent(id) + '/report', { headers: { 'Authorization': 'Bearer ' + token }, cache: 'no-store', credentials: 'omit' });
    pre.textContent = r.ok ? await r.text() : 'The report could not be read (' + r.status + ').';
  } catch (e) { pre.textContent = e.message; }
  pre.append(document.createTextNode('\n(command line: lifeboat incident report ' + id + ')'));
  dlg.showModal();
}

function renderSchedules(list) {
  const body = document.querySelector('#schedules tbody');
  const canAct = me && (me.role === 'operator' || me.role === 'admin');
  if (!list || !list.length) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 5, class: 'small' }, 'No schedules in the plan: give a backup job or a drill a schedule, or add schedules.')));
    return;
  }
  body.replaceChildren(...list.map((v) => {
    const status = v.running ? badge('running', 'ok') : v.paused ? badge('paused by ' + v.paused.by, 'warn') : v.overdue_since ? badge('overdue since ' + ago(v.overdue_since), 'bad') : v.last_outcome === 'failed' ? badge('last run failed', 'bad') : '';
    const verb = v.paused ? 'resume' : 'pause';
    return h('tr', { 'data-schedule': v.id },
      h('td', {}, v.id, h('div', { class: 'small' }, v.cron + ' (' + v.time_zone + ')')),
      h('td', {}, h('code', {}, v.what)),
      h('td', {}, v.last_outcome ? v.last_outcome + ' ' + ago(v.last_end) : 'never'),
      h('td', {}, v.next ? new Date(Date.parse(v.next)).toLocaleString() : '—', ' ', status),
      h('td', {}, h('button', { type: 'button', class: 'secondary', disabled: !canAct, onclick: () => ask(null, {
        label: verb[0].toUpperCase() + verb.slice(1) + ' ' + v.id, command: 'lifeboat schedule ' + verb + ' ' + v.id,
        method: 'POST', path: '/api/v1/schedules/' + encodeURIComponent(v.id) + '/' + verb, body: {}, confirm: 'plain' }) }, verb)));
  }));
}

function renderJobs(jobs) {
  const ul = document.getElementById('jobs');
  if (!jobs || !jobs.length) { ul.replaceChildren(h('li', { class: 'small' }, 'No jobs started from here yet.')); return; }
  ul.replaceChildren(...jobs.map((j) => {
    const p = j.progress;
    const state = j.state === 'succeeded' ? badge('succeeded', 'ok') : j.state === 'running' ? badge('running', 'warn') : badge(j.state, 'bad');
    return h('li', { 'data-job': j.id }, state, ' ', h('code', {}, j.command), ' · by ', j.actor, ' · ', ago(j.created),
      p ? h('div', { class: 'small' }, p.step + ' ', p.total ? h('progress', { max: p.total, value: p.done }) : '', p.total ? ' ' + Math.round((p.done / p.total) * 100) + '%' : '') : '',
      j.error ? h('div', { class: 'error small' }, j.error) : '',
      j.state === 'running' && me && me.role !== 'viewer' && j.kind !== 'failover' && j.kind !== 'switchover' ? h('button', { type: 'button', class: 'secondary', onclick: () => ask(null, { label: 'Cancel job ' + j.id, command: '(Ctrl-C on the command line)', method: 'POST', path: '/api/v1/jobs/' + j.id + '/cancel', body: {}, confirm: 'plain' }) }, 'cancel') : '');
  }));
}

// The confirmation every action goes through: the pre-checks when the action has them, the
// command line that does the same, and for failovers, switchovers and drills the service's name
// typed by the person.
async function ask(service, action) {
  const dlg = document.getElementById('confirm');
  const typed = action.confirm === 'typed' && service;
  document.getElementById('confirm-title').textContent = action.label + (service ? ' — ' + service.name : '');
  document.getElementById('confirm-text').textContent = typed ? 'This changes which server takes writes, or injects a failure. It cannot be undone from here.' : 'Start it now?';
  document.getElementById('confirm-cli').textContent = action.command;
  document.getElementById('confirm-typed').hidden = !typed;
  document.getElementById('confirm-name').textContent = service ? service.name : '';
  const input = document.getElementById('confirm-input');
  input.value = '';
  const err = document.getElementById('confirm-error');
  err.textContent = '';
  const checks = document.getElementById('confirm-checks');
  checks.replaceChildren();
  const ok = document.getElementById('confirm-ok');
  ok.disabled = false;
  if (action.dry_run) {
    try {
      const plan = await call(action.method, action.path, action.dry_run);
      checks.replaceChildren(...plan.checks.map((c) => h('li', {}, badge(c.level, c.level === 'ok' ? 'ok' : c.level === 'warn' ? 'warn' : 'bad'), ' ', c.what)),
        h('li', { class: 'small' }, 'decision: ' + plan.decision.reason));
      if (!plan.decision.action || plan.decision.action.action !== 'failover') ok.disabled = true;
    } catch (e) { err.textContent = e.message; }
  }
  dlg.showModal();
  (typed ? input : ok).focus();
  const done = new Promise((resolve) => {
    document.getElementById('confirm-cancel').onclick = () => { dlg.close(); resolve(false); };
    dlg.oncancel = () => resolve(false);
    document.getElementById('confirm-form').onsubmit = async (ev) => {
      ev.preventDefault();
      const body = Object.assign({}, action.body);
      if (typed) body.confirm = input.value;
      try {
        await call(action.method, action.path, body);
        dlg.close();
        resolve(true);
        refresh();
      } catch (e) {
        err.textContent = e.message + (e.hint ? ' — ' + e.hint : '');
      }
    };
  });
  return done;
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = document.getElementById('token').value;
    try {
      await signIn(t, document.getElementById('remember').checked);
      document.getElementById('login-error').textContent = '';
      document.getElementById('token').value = '';
    } catch (e) {
      token = '';
      document.getElementById('login-error').textContent = e.status === 401 ? 'This token is not accepted.' : e.message;
    }
  });
  document.getElementById('logout').addEventListener('click', signOut);
  if (token) signIn(token, !!localStorage.getItem(KEY)).catch(() => signOut());
  else { show('login'); document.getElementById('token').focus(); }
});
