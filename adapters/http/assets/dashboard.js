// The province office's dashboard: polls /api/overview every few seconds
// and searches /api/search. Everything received is put on the page as text
// (never as HTML): subjects and details come from the agencies' systems.
"use strict";

const REFRESH_MS = 5000;

function $(id) { return document.getElementById(id); }

// The session's CSRF token, put in the page by the server: every request
// that changes something carries it.
function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

// A session that ended (idle too long, or the operator was removed) sends
// the page back to the login form.
async function api(url, options) {
  const res = await fetch(url, { cache: "no-store", ...(options || {}) });
  if (res.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  return res;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(n) {
  return Number(n || 0).toLocaleString("vi-VN");
}

// "2026-11-24T09:05:03+07:00" → "09:05:03 24/11/2026" (already Vietnam time).
function when(s) {
  if (!s || s.length < 19) return s || "";
  return `${s.slice(11, 19)} ${s.slice(8, 10)}/${s.slice(5, 7)}/${s.slice(0, 4)}`;
}

function dateVi(s) {
  if (!s || s.length < 10) return s || "";
  return `${s.slice(8, 10)}/${s.slice(5, 7)}/${s.slice(0, 4)}`;
}

function age(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} ngày ${h} giờ`;
  if (h > 0) return `${h} giờ ${m} phút`;
  return `${m} phút`;
}

function fillBody(table, rows, empty, cols) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", empty, "muted");
    td.colSpan = cols;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const r of rows) body.append(r);
}

function agencyCell(name, code) {
  const td = el("td");
  td.append(el("div", name || code));
  if (name) td.append(el("code", code));
  return td;
}

function traffic(prefix, t) {
  for (const k of ["documents", "deliveries", "acknowledged", "statuses", "refused"]) {
    $(`${prefix}-${k}`).textContent = num(t[k]);
  }
}

function searchFor(q) {
  $("search-q").value = q;
  runSearch(q);
  $("search-section").scrollIntoView({ behavior: "smooth" });
}

function render(o) {
  $("gateway").textContent = o.gateway;
  $("version").textContent = o.version;
  $("today-label").textContent = `(${dateVi(o.today)})`;
  $("month-label").textContent = `(tháng ${o.month.slice(5, 7)}/${o.month.slice(0, 4)})`;
  traffic("today", o.today_traffic);
  traffic("month", o.month_traffic);

  const db = $("health-db");
  db.textContent = o.health.database ? "Cơ sở dữ liệu: hoạt động bình thường" : "Cơ sở dữ liệu: mất kết nối";
  db.className = "pill " + (o.health.database ? "pill-ok" : "pill-bad");
  const br = $("health-broker");
  if (o.health.broker === null || o.health.broker === undefined) {
    br.textContent = "Hàng đợi (RabbitMQ): chưa cấu hình";
    br.className = "pill pill-unknown";
  } else {
    br.textContent = o.health.broker ? "Hàng đợi (RabbitMQ): hoạt động" : "Hàng đợi (RabbitMQ): mất kết nối";
    br.className = "pill " + (o.health.broker ? "pill-ok" : "pill-bad");
  }

  fillBody($("inboxes"), o.inboxes.map((i) => {
    const tr = el("tr");
    tr.append(agencyCell(i.name, i.organ_id), el("td", num(i.depth), "num"),
      el("td", `${age(i.oldest_seconds)} (từ ${when(i.oldest_at)})`));
    return tr;
  }), "Không có cơ quan nào còn văn bản chưa nhận.", 3);

  $("overdue-total").textContent = num(o.overdue_total);
  $("without03-total").textContent = num(o.without_03_total);
  $("within-hours").textContent = o.accept_within_working_hours;
  fillBody($("overdue"), o.overdue.map((d) => {
    const tr = el("tr");
    const code = el("td");
    const a = el("a", d.code || d.message_id);
    a.href = "#";
    a.addEventListener("click", (ev) => { ev.preventDefault(); searchFor(d.message_id); });
    code.append(a);
    tr.append(code, el("td", d.subject),
      el("td", `${d.sender_name || d.sender} → ${d.recipient_name || d.recipient}`),
      el("td", dateVi(d.due_date)), el("td", `${d.days_overdue} ngày`, "num"));
    return tr;
  }), "Không có văn bản quá hạn.", 5);

  fillBody($("refusals"), o.refusals.map((r) => {
    const tr = el("tr");
    tr.dataset.reason = r.reason;
    const id = el("td");
    if (r.message_id) {
      const a = el("a", r.message_id);
      a.href = "#";
      a.addEventListener("click", (ev) => { ev.preventDefault(); searchFor(r.message_id); });
      id.append(a);
    }
    tr.append(el("td", when(r.at)), agencyCell(r.sender_name, r.sender || "(không rõ)"),
      el("td", r.reason_text, "reason"), el("td", r.detail, "detail"), id);
    return tr;
  }), "Không có văn bản nào bị từ chối.", 5);

  $("updated").textContent = `Cập nhật lúc ${when(o.now)}`;
}

// Maintenance windows announced by the operators: the same markup
// the server puts in the page, built from /api/maintenance as text.
function renderMaintenance(windows) {
  const box = $("maintenance");
  box.replaceChildren();
  for (const w of windows) {
    const item = el("div", null, "maintenance-item");
    item.dataset.id = String(w.id);
    const en = el("span", w.text_en, "maintenance-en");
    en.lang = "en";
    item.append(el("strong", w.text_vi), " ", el("span", w.message, "maintenance-message"),
      el("br"), en);
    box.append(item);
  }
}

async function refreshMaintenance() {
  try {
    const res = await api("/api/maintenance");
    if (res.ok) {
      const windows = await res.json();
      renderMaintenance(windows);
      if (isAdmin()) renderWindows(windows);
    }
  } catch (e) {
    // Keep what is shown; the offline banner says the gateway is unreachable.
  }
}

// The last backup, and a warning when the daily one is late.
async function refreshBackup() {
  try {
    const res = await api("/api/backup");
    if (!res.ok) return;
    const b = await res.json();
    const box = $("backup");
    box.textContent = "Sao lưu: " + b.message;
    box.className = b.late ? "banner banner-backup-late" : "banner-backup muted";
  } catch (e) {
    // Keep what is shown; the offline banner says the gateway is unreachable.
  }
}

// Each peer gateway's directory updates: the last applied, and how many
// seen and not yet applied (its lag).
async function refreshPeers() {
  try {
    const res = await api("/api/peers");
    if (!res.ok) return;
    const peers = await res.json();
    const box = $("peers");
    box.hidden = peers.length === 0;
    const behind = peers.some((p) => p.lag > 0);
    box.className = behind ? "banner banner-backup-late" : "banner-backup muted";
    box.replaceChildren(
      ...peers.map((p) => {
        const when = p.applied_at
          ? new Date(p.applied_at / 1000).toLocaleString("vi-VN")
          : "chưa nhận";
        const lag = p.lag > 0 ? `, chậm ${p.lag} bản cập nhật` : ", đã đồng bộ";
        return el(
          "div",
          `Danh bạ từ trục ${p.name} (${p.codes}): cập nhật số ${p.applied_sequence} lúc ${when}, ${p.agencies} cơ quan${lag}`,
          "peer"
        );
      })
    );
  } catch (e) {
    // Keep what is shown; the offline banner says the gateway is unreachable.
  }
}

async function refresh() {
  refreshMaintenance();
  refreshBackup();
  refreshPeers();
  try {
    const res = await api("/api/overview");
    const body = await res.json();
    if (!res.ok) throw new Error(body.message || res.statusText);
    render(body);
    $("offline").hidden = true;
  } catch (e) {
    $("offline").hidden = false;
    const db = $("health-db");
    db.textContent = "Không lấy được số liệu";
    db.className = "pill pill-bad";
  }
}

async function runSearch(q) {
  const out = $("search-result");
  out.replaceChildren(el("p", "Đang tìm…", "muted"));
  try {
    const res = await api("/api/search?q=" + encodeURIComponent(q));
    const body = await res.json();
    out.replaceChildren();
    if (!res.ok) {
      out.append(el("p", body.message || "Không tìm được.", "error"));
      return;
    }
    for (const h of body) out.append(hit(h));
  } catch (e) {
    out.replaceChildren(el("p", "Không kết nối được tới trục liên thông để tra cứu.", "error"));
  }
}

function hit(h) {
  const box = el("div", null, "hit");
  const kind = h.kind === "document" ? "Văn bản" : h.kind === "status" ? "Thông báo trạng thái" : "Gói tin bị từ chối";
  box.append(el("h3", `${kind}${h.code ? " số " + h.code : ""}${h.subject ? " — " + h.subject : ""}`));
  const meta = el("p", null, "muted");
  meta.append(`Nơi gửi: ${h.sender_name || h.sender || "(không rõ)"} · Mã gói tin: `, el("code", h.message_id));
  if (h.accepted_at) meta.append(` · Tiếp nhận lúc ${when(h.accepted_at)}`);
  box.append(meta);
  const t = el("table", null, "trace");
  const head = el("tr");
  for (const c of ["Thời gian", "Diễn biến", "Từ", "Đến", "Lý do / chi tiết"]) head.append(el("th", c));
  t.append(el("thead"));
  t.tHead.append(head);
  const body = el("tbody");
  for (const e of h.trace) {
    const tr = el("tr");
    const why = e.kind === "rejected" ? `${e.reason_text} — ${e.detail}` : e.detail;
    tr.append(el("td", when(e.at)), el("td", e.kind_text, e.kind === "rejected" ? "reason" : ""),
      el("td", e.from), el("td", e.to), el("td", why, "detail"));
    body.append(tr);
  }
  t.append(body);
  box.append(t);
  return box;
}

function isAdmin() {
  return document.body.dataset.role === "admin";
}

// Admins: the windows with a button to cancel each.
function renderWindows(windows) {
  fillBody($("windows"), windows.map((w) => {
    const tr = el("tr");
    const td = el("td");
    const b = el("button", "Hủy");
    b.type = "button";
    b.addEventListener("click", () => cancelWindow(w.id));
    td.append(b);
    const message = w.interruption === false ? `${w.message} (không dự kiến gián đoạn)` : w.message;
    tr.append(el("td", when(w.starts_at)), el("td", when(w.ends_at)), el("td", message), td);
    return tr;
  }), "Không có lịch bảo trì.", 4);
}

async function post(url, body) {
  const res = await api(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrf() },
    body: JSON.stringify(body || {}),
  });
  const out = await res.json();
  if (!res.ok) throw new Error(out.message || res.statusText);
  return out;
}

async function announce() {
  const result = $("announce-result");
  try {
    await post("/api/maintenance", {
      from: $("announce-from").value, to: $("announce-to").value, message: $("announce-message").value,
      interruption: !$("announce-no-interruption").checked,
    });
    result.textContent = "Đã thông báo lịch bảo trì.";
    $("announce-form").reset();
    refreshMaintenance();
  } catch (e) {
    result.textContent = "Không thông báo được: " + e.message;
  }
}

async function cancelWindow(id) {
  try {
    await post(`/api/maintenance/${id}/cancel`);
    $("announce-result").textContent = "Đã hủy lịch bảo trì.";
    refreshMaintenance();
  } catch (e) {
    $("announce-result").textContent = "Không hủy được: " + e.message;
  }
}

function reportLinks() {
  const p = new URLSearchParams();
  const period = $("report-period").value.trim();
  const under = $("report-under").value.trim();
  if (period) p.set("period", period);
  if (under) p.set("under", under);
  const qs = p.toString() ? "?" + p.toString() : "";
  $("report-xlsx").href = "/reports/summary.xlsx" + qs;
  $("report-csv").href = "/reports/summary.csv" + qs;
  $("report-json").href = "/reports/summary.json" + qs;
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("search-q").value.trim();
    if (q) runSearch(q);
  });
  $("report-form").addEventListener("input", reportLinks);
  $("report-form").addEventListener("submit", (ev) => ev.preventDefault());
  if (isAdmin()) {
    $("admin-section").hidden = false;
    $("announce-form").addEventListener("submit", (ev) => { ev.preventDefault(); announce(); });
  }
  refresh();
  setInterval(refresh, REFRESH_MS);
});
