// The dashboard: logs in with the one-time token in the URL fragment (the
// server answers with an HttpOnly session cookie and a CSRF token), then
// follows the event stream and redraws the jobs table.
"use strict";
let csrf = sessionStorage.getItem("ferry-csrf");

function text(v) { return v === null || v === undefined ? "" : String(v); }

function human(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function cell(tr, value, cls) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

async function login() {
  const m = location.hash.match(/login=([A-Za-z0-9_-]+)/);
  if (!m) return;
  history.replaceState(null, "", location.pathname);
  const r = await fetch("/ui/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: m[1] }),
    credentials: "same-origin",
  });
  if (r.ok) {
    csrf = (await r.json()).csrf;
    sessionStorage.setItem("ferry-csrf", csrf);
  } else {
    document.getElementById("status").textContent = "login failed: " + (await r.json()).detail;
  }
}

async function cancel(id) {
  await fetch("/v1/jobs/" + id + "/cancel", {
    method: "POST",
    headers: { "X-CSRF-Token": csrf || "" },
    credentials: "same-origin",
  });
  refresh();
}

async function refresh() {
  const r = await fetch("/v1/jobs?limit=200", { credentials: "same-origin" });
  const status = document.getElementById("status");
  if (!r.ok) {
    status.textContent = r.status === 401 ? "not logged in: run ferry dashboard-link" : "error " + r.status;
    return false;
  }
  const jobs = (await r.json()).jobs;
  const body = document.querySelector("#jobs tbody");
  body.textContent = "";
  for (const j of jobs) {
    const tr = document.createElement("tr");
    tr.id = "job-" + j.id;
    cell(tr, j.id.slice(-8));
    cell(tr, j.label);
    cell(tr, j.state, "state state-" + j.state);
    cell(tr, j.src + " → " + (j.dst || (j.options.destinations || []).join(", ")));
    const pct = j.bytes_total > 0 ? Math.floor((100 * j.bytes_done) / j.bytes_total) : (j.state === "succeeded" ? 100 : 0);
    const td = cell(tr, "");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = pct + "%";
    bar.appendChild(fill);
    td.appendChild(bar);
    const label = document.createElement("span");
    label.className = "pct";
    label.textContent = " " + pct + "% of " + human(j.bytes_total);
    td.appendChild(label);
    cell(tr, j.state === "running" ? human(j.rate_bytes_per_second) + "/s" : "");
    cell(tr, j.faults);
    cell(tr, j.error ? j.error.code + ": " + j.error.detail : j.status_detail);
    const act = cell(tr, "");
    if (j.state === "queued" || j.state === "running") {
      const b = document.createElement("button");
      b.textContent = "Cancel";
      b.addEventListener("click", () => cancel(j.id));
      act.appendChild(b);
    }
    body.appendChild(tr);
  }
  status.textContent = "live · " + new Date().toLocaleTimeString();
  return true;
}

let pending = false;
function soon() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; refresh(); }, 300);
}

window.addEventListener("unhandledrejection", (e) => {
  document.getElementById("status").textContent = "error: " + e.reason;
});

(async () => {
  await login();
  if (await refresh()) {
    // follow the stream from the newest event on
    const now = await (await fetch("/v1/events?after=" + Number.MAX_SAFE_INTEGER + "&wait=0", { credentials: "same-origin" })).json();
    const events = new EventSource("/v1/events?after=" + now.latest_id);
    events.onmessage = soon;
    for (const t of ["created", "started", "progress", "fault", "interrupted", "resumed", "succeeded", "partial", "failed", "canceled", "requeued"]) {
      events.addEventListener(t, soon);
    }
  }
})();
