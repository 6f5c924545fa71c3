// The pool page: polls /ui/state every second and draws each pool (no framework, no
// build step). Every text goes in through textContent, never as HTML.
"use strict";
(() => {
  const POLL_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const url = document.body.dataset.stateUrl;
  const root = document.getElementById("pools");
  const status = document.getElementById("status");
  let lastOk = 0;
  let timer = null;

  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") el.className = v;
      else if (k.startsWith("data-")) el.setAttribute(k, v);
      else el[k] = v;
    }
    el.append(...children.filter((c) => c !== null && c !== undefined));
    return el;
  }

  function svg(tag, attrs = {}) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  function duration(s) {
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 60) return `${Math.round(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  function waitText(s) {
    return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(s < 10 ? 1 : 0)} s`;
  }

  function clock(at) {
    return new Date(at * 1000).toLocaleTimeString();
  }

  function tile(t) {
    return h("div", {class: `tile state-${t.state}${t.old ? " old" : ""}`, "data-state": t.state, "data-id": t.id,
                     "data-old": String(t.old),
                     title: `${t.id}: ${t.state} for ${duration(t.in_state_s)}${t.old ? " (older spec: replaced by a rollout)" : ""}`},
      h("b", {}, t.id.replace(/^gr-/, "")),
      h("span", {}, `${t.state} ${duration(t.in_state_s)}${t.old ? " · old spec" : ""}`),
      h("span", {}, `age ${duration(t.age_s)} · ${t.engine}`),
      t.session ? h("span", {class: "session"}, t.session) : null);
  }

  // Bars over the slots, oldest left; `value` gives a bar's height (0..1) or null (no data).
  function bars(slots, value, cls, goal) {
    const width = 600, height = 100, step = width / Math.max(slots.length, 1);
    const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
                              class: "bars", role: "img"});
    slots.forEach((slot, i) => {
      const v = value(slot);
      if (v === null) {
        chart.append(svg("rect", {x: i * step, y: height - 1, width: step - 1, height: 1, class: "empty"}));
        return;
      }
      const y = height - Math.max(v, 0.02) * height;
      chart.append(svg("rect", {x: i * step, y, width: step - 1, height: height - y, class: cls(slot, v)}));
    });
    if (goal !== undefined) {
      const y = height - goal * height;
      chart.append(svg("line", {x1: 0, x2: width, y1: y, y2: y, class: "goal"}));
    }
    return chart;
  }

  function axis(pool) {
    return h("div", {class: "axis"}, h("span", {}, `${minutes(pool)} min ago`), h("span", {}, "now"));
  }

  function warmChart(pool) {
    const slots = pool.slots;
    const claims = slots.reduce((n, s) => n + s.claims, 0);
    const warm = slots.reduce((n, s) => n + s.warm, 0);
    const share = claims ? `${Math.round((100 * warm) / claims)}% of ${claims}` : "no claims";
    const goal = pool.warm_share_goal;
    return h("figure", {class: "chart", "data-chart": "warm-share"},
      h("figcaption", {}, `Warm share, last ${minutes(pool)} min: ${share} (goal ${Math.round(goal * 100)}%)`),
      bars(slots, (s) => (s.claims ? s.warm / s.claims : null),
           (s, v) => (v >= goal ? "ok" : "low"), goal), axis(pool));
  }

  function waitChart(pool) {
    const slots = pool.slots;
    const top = Math.max(0.01, ...slots.map((s) => s.wait_p95_s || 0));
    return h("figure", {class: "chart", "data-chart": "claim-wait"},
      h("figcaption", {}, `Claim wait p95 per ${pool.slot_s} s (bucket bounds), top ${waitText(top)}`),
      bars(slots, (s) => (s.claims ? (s.wait_p95_s || 0) / top : null), () => "wait"), axis(pool));
  }

  function minutes(pool) {
    return Math.round((pool.slots.length * pool.slot_s) / 60);
  }

  function lineTable(pool) {
    if (!pool.waiting) return h("p", {class: "quiet"}, "No job is waiting for a container.");
    const rows = pool.line.map((e) => h("tr", {"data-job": e.job_id},
      h("td", {}, String(e.position)), h("td", {}, e.tenant), h("td", {}, e.job_id), h("td", {}, duration(e.waited_s))));
    const more = pool.waiting > pool.line.length ? h("p", {class: "quiet"}, `and ${pool.waiting - pool.line.length} more`) : null;
    return h("div", {},
      h("table", {}, h("thead", {}, h("tr", {}, ...["#", "tenant", "job", "waiting"].map((t) => h("th", {}, t)))),
        h("tbody", {}, ...rows)), more);
  }

  function eventList(pool) {
    if (!pool.events.length) return h("p", {class: "quiet"}, "No boots yet.");
    return h("ul", {class: "events"}, ...pool.events.map((e) => h("li", {class: e.kind},
      `${clock(e.at)} ${e.container} `,
      e.kind === "booted" ? `booted in ${e.seconds.toFixed(1)} s` : `failed after ${e.seconds.toFixed(1)} s`)));
  }

  function summary(pool, now) {
    const t = pool.target;
    const c = pool.counts;
    const reconciled = pool.reconciled_at ? `${duration(now - pool.reconciled_at)} ago` : "never";
    return h("div", {class: "summary"},
      h("p", {class: "target", "data-source": t.source},
        h("b", {}, `target ${t.idle} idle`), t.setting === "auto" ? " (auto)" : "", ` · max ${t.max_total} · `,
        h("span", {class: "why"}, t.why)),
      h("p", {class: "counts"},
        `${c.idle} idle · ${c.warming} warming · ${c.assigned} assigned · ${c.retiring} retiring · ` +
        `${pool.waiting} waiting · last reconcile ${reconciled}`));
  }

  function section(pool, now) {
    const title = h("h2", {}, pool.name, " ", h("span", {class: "badge"}, pool.runtime),
      pool.degraded ? h("span", {class: "badge degraded"}, "degraded") : null);
    const omitted = pool.tiles_omitted ? h("p", {class: "quiet"}, `and ${pool.tiles_omitted} more containers`) : null;
    return h("section", {class: "pool", "data-pool": pool.name},
      title,
      pool.runtime_error ? h("p", {class: "error"}, pool.runtime_error) : null,
      summary(pool, now),
      h("div", {class: "tiles"}, ...pool.tiles.map(tile)), omitted,
      h("div", {class: "row"}, warmChart(pool), waitChart(pool)),
      h("div", {class: "row"},
        h("div", {class: "panel"}, h("h3", {}, `Waiting line (${pool.waiting})`), lineTable(pool)),
        h("div", {class: "panel"}, h("h3", {}, "Recent boots and failures"), eventList(pool))));
  }

  function render(board) {
    root.replaceChildren(...board.pools.map((pool) => section(pool, board.now)));
  }

  function setStatus(live, text) {
    status.dataset.live = live ? "yes" : "no";
    status.textContent = text;
  }

  async function refresh() {
    timer = null;
    try {
      const res = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                    headers: {Accept: "application/json"}});
      if (res.status === 401 || res.status === 403) {
        window.location.reload(); // the server answers with the sign-in form
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      render(await res.json());
      lastOk = Date.now();
      setStatus(true, `live · ${new Date(lastOk).toLocaleTimeString()}`);
    } catch (err) {
      const since = lastOk ? ` (last update ${duration((Date.now() - lastOk) / 1000)} ago)` : "";
      setStatus(false, `no connection${since}`);
    }
    schedule();
  }

  function schedule() {
    if (!document.hidden && timer === null) timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null) refresh();
  });
  refresh();
})();
