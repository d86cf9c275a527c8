"use strict";
(function () {
  var KEY = "console.operatorToken";
  var SVG = "http://www.w3.org/2000/svg";
  var $ = function (id) { return document.getElementById(id); };
  var token = null;
  var may = { read: false, operate: false, audit: false };

  function setState(s) { document.body.dataset.state = s; }

  function showMessage(text) {
    var m = $("message");
    m.textContent = text || "";
    m.hidden = !text;
  }

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function errorText(res) {
    var b = res.body;
    if (b && b.error && typeof b.error.message === "string") return b.error.message;
    return "the server answered " + res.status;
  }

  // Every call carries the token in the Authorization header only (never the URL).
  async function api(method, path, body) {
    var opts = { method: method, headers: { Authorization: "Bearer " + token }, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    var r = await fetch(path, opts);
    var j = null;
    try { j = await r.json(); } catch (e) { j = null; }
    return { status: r.status, ok: r.ok, body: j };
  }

  function signOut(reason) {
    token = null;
    may = { read: false, operate: false, audit: false };
    sessionStorage.removeItem(KEY);
    $("main").hidden = true;
    $("session").hidden = true;
    $("signin").hidden = false;
    $("who").textContent = "";
    $("token").value = "";
    ["tenants-body", "accounts-body", "usage-charts", "pairing-body", "audit-body", "reload-slot", "reload-result"].forEach(function (id) { clear($(id)); });
    showMessage(reason || "");
    setState(reason ? "denied" : "signed-out");
  }

  async function signIn(t) {
    token = t;
    setState("loading");
    showMessage("");
    var res;
    try { res = await api("GET", "/admin/whoami"); } catch (e) { showMessage("The server cannot be reached."); setState("error"); return; }
    if (res.status === 401 || res.status === 429) {
      signOut(res.status === 401 ? "This token is not an operator token." : errorText(res));
      return;
    }
    if (!res.ok || !res.body) { showMessage(errorText(res)); setState("error"); return; }
    sessionStorage.setItem(KEY, t);
    may = res.body.may || may;
    $("who").textContent = "Signed in as " + res.body.operator + " (" + res.body.role + ")";
    $("token").value = "";
    $("signin").hidden = true;
    $("session").hidden = false;
    $("main").hidden = false;
    await refresh();
  }

  async function refresh() {
    setState("loading");
    try {
      var status = await api("GET", "/admin/status");
      if (status.status === 401) { signOut("The token is no longer accepted."); return; }
      if (!status.ok) throw new Error(errorText(status));
      var pairing = await api("GET", "/admin/pairing");
      if (!pairing.ok) throw new Error(errorText(pairing));
      renderTenants(status.body);
      renderAccounts(status.body.accounts || []);
      renderUsage(status.body.tenants || []);
      renderPairing(pairing.body.pending || []);
      renderReload(status.body.reload || {});
      if (may.audit) {
        var audit = await api("GET", "/admin/audit/status");
        if (!audit.ok) throw new Error(errorText(audit));
        renderAudit(audit.body);
      } else {
        renderAudit(null);
      }
      setState("ready");
    } catch (e) {
      showMessage(String(e && e.message ? e.message : e));
      setState("error");
    }
  }

  function renderTenants(s) {
    var body = $("tenants-body");
    clear(body);
    (s.tenants || []).forEach(function (t) {
      var tr = el("tr");
      tr.dataset.tenant = t.id;
      tr.appendChild(el("th", t.id)).setAttribute("scope", "row");
      tr.appendChild(el("td", t.name));
      var agents = el("td");
      var ul = el("ul");
      (t.agents || []).forEach(function (a) { ul.appendChild(el("li", a.name && a.name !== a.id ? a.id + " (" + a.name + ")" : a.id)); });
      agents.appendChild(ul);
      tr.appendChild(agents);
      var q = t.queue || {};
      tr.appendChild(el("td", q.running, "num"));
      tr.appendChild(el("td", q.waiting, "num"));
      var mean = q.waitCount > 0 ? (q.waitSeconds / q.waitCount * 1000).toFixed(1) + " ms over " + q.waitCount + " turns" : "no turns yet";
      tr.appendChild(el("td", mean, "num"));
      body.appendChild(tr);
    });
  }

  function renderAccounts(list) {
    var body = $("accounts-body");
    clear(body);
    $("accounts-empty").hidden = list.length > 0;
    list.forEach(function (a) {
      var tr = el("tr");
      tr.dataset.account = a.channel + "/" + a.account;
      tr.appendChild(el("td", a.channel));
      tr.appendChild(el("td", a.account));
      tr.appendChild(el("td", a.tenant || "none"));
      tr.appendChild(el("td", a.state, "state " + (a.state === "running" ? "good" : a.state === "configured" ? "" : "bad")));
      body.appendChild(tr);
    });
  }

  // One small bar chart per tenant: input and output tokens stacked per day (inline SVG).
  function renderUsage(tenants) {
    var box = $("usage-charts");
    clear(box);
    var W = 300, H = 110, PAD = 18;
    tenants.forEach(function (t) {
      var days = t.usage || [];
      var max = 1;
      days.forEach(function (d) { max = Math.max(max, d.inputTokens + d.outputTokens); });
      var total = days.reduce(function (s, d) { return s + d.inputTokens + d.outputTokens; }, 0);
      var runs = days.reduce(function (s, d) { return s + d.runs; }, 0);
      var fig = el("figure");
      fig.dataset.tenant = t.id;
      var svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("width", W);
      svg.setAttribute("height", H);
      svg.setAttribute("viewBox", "0 0 " + W + " " + H);
      svg.setAttribute("role", "img");
      var label = t.id + ": " + total + " tokens, " + runs + " runs in " + days.length + " days";
      svg.setAttribute("aria-label", label);
      svg.id = "usage-chart-" + t.id;
      var title = document.createElementNS(SVG, "title");
      title.textContent = label;
      svg.appendChild(title);
      var bw = (W - PAD) / Math.max(days.length, 1);
      days.forEach(function (d, i) {
        var hIn = (H - PAD) * d.inputTokens / max, hOut = (H - PAD) * d.outputTokens / max;
        var x = PAD + i * bw + 1;
        var rIn = document.createElementNS(SVG, "rect");
        rIn.setAttribute("class", "in");
        rIn.setAttribute("x", x); rIn.setAttribute("width", Math.max(bw - 2, 1));
        rIn.setAttribute("y", H - PAD - hIn); rIn.setAttribute("height", hIn);
        var tip = document.createElementNS(SVG, "title");
        tip.textContent = d.day + ": " + d.inputTokens + " in, " + d.outputTokens + " out, " + d.runs + " runs";
        rIn.appendChild(tip);
        var rOut = document.createElementNS(SVG, "rect");
        rOut.setAttribute("class", "out");
        rOut.setAttribute("x", x); rOut.setAttribute("width", Math.max(bw - 2, 1));
        rOut.setAttribute("y", H - PAD - hIn - hOut); rOut.setAttribute("height", hOut);
        svg.appendChild(rIn);
        svg.appendChild(rOut);
      });
      var axis = document.createElementNS(SVG, "line");
      axis.setAttribute("class", "axis");
      axis.setAttribute("x1", PAD); axis.setAttribute("x2", W);
      axis.setAttribute("y1", H - PAD); axis.setAttribute("y2", H - PAD);
      svg.appendChild(axis);
      if (days.length) {
        [[0, "start"], [days.length - 1, "end"]].forEach(function (p) {
          var tx = document.createElementNS(SVG, "text");
          tx.setAttribute("x", p[1] === "start" ? PAD : W);
          tx.setAttribute("y", H - 4);
          tx.setAttribute("text-anchor", p[1]);
          tx.textContent = days[p[0]].day;
          svg.appendChild(tx);
        });
        var mx = document.createElementNS(SVG, "text");
        mx.setAttribute("x", 0); mx.setAttribute("y", 10);
        mx.textContent = String(max);
        svg.appendChild(mx);
      }
      fig.appendChild(el("figcaption", t.name ? t.name + " (" + t.id + ")" : t.id));
      fig.appendChild(svg);
      fig.appendChild(el("p", total + " tokens, " + runs + " runs", "muted"));
      box.appendChild(fig);
    });
  }

  function renderPairing(pending) {
    var body = $("pairing-body");
    clear(body);
    $("pairing-empty").hidden = pending.length > 0;
    $("pairing-actions-head").hidden = !may.operate;
    pending.forEach(function (p) {
      var tr = el("tr");
      tr.dataset.code = p.code;
      tr.appendChild(el("td", p.code, "mono"));
      tr.appendChild(el("td", p.tenant));
      tr.appendChild(el("td", p.channel + "/" + p.account));
      tr.appendChild(el("td", p.username ? p.sender + " (" + p.username + ")" : p.sender));
      tr.appendChild(el("td", p.ageSecs + " s", "num"));
      // Roles that may not decide get no buttons at all; the server refuses them anyway (403).
      if (may.operate) {
        var td = el("td");
        var ok = el("button", "Approve", "approve");
        ok.type = "button";
        ok.setAttribute("aria-label", "Approve code " + p.code);
        ok.addEventListener("click", function () { decide(p.code, true); });
        var no = el("button", "Deny", "deny");
        no.type = "button";
        no.setAttribute("aria-label", "Deny code " + p.code);
        no.addEventListener("click", function () { decide(p.code, false); });
        td.appendChild(ok);
        td.appendChild(no);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    });
  }

  async function decide(code, approve) {
    setState("loading");
    var res = await api("POST", approve ? "/admin/pairing/approve" : "/admin/pairing/deny", { code: code });
    if (!res.ok) { showMessage(errorText(res)); setState("error"); return; }
    showMessage("");
    await refresh();
  }

  function renderAudit(a) {
    var body = $("audit-body");
    clear(body);
    $("audit-denied").hidden = a !== null;
    $("audit-off").hidden = !(a && a.enabled === false);
    $("audit-table").hidden = !(a && a.enabled);
    if (!a) return;
    (a.logs || []).forEach(function (l) {
      var tr = el("tr");
      tr.dataset.log = l.log;
      tr.appendChild(el("th", l.log)).setAttribute("scope", "row");
      tr.appendChild(el("td", l.verified ? "verified" : "FAILED: " + l.error, "verified " + (l.verified ? "good" : "bad")));
      tr.appendChild(el("td", l.records === null ? "" : l.records, "num"));
      var cp = l.checkpoint;
      tr.appendChild(el("td", cp ? "seq " + cp.seq : "", "num"));
      tr.appendChild(el("td", cp ? cp.head : "", "mono"));
      tr.appendChild(el("td", cp ? cp.ts : ""));
      body.appendChild(tr);
    });
  }

  function list(title, items) {
    var frag = document.createDocumentFragment();
    if (!items || !items.length) return frag;
    frag.appendChild(el("p", title));
    var ul = el("ul");
    items.forEach(function (i) { ul.appendChild(el("li", i)); });
    frag.appendChild(ul);
    return frag;
  }

  function showReport(box, last) {
    clear(box);
    if (!last) { box.appendChild(el("p", "No reload since the gateway started.", "muted")); delete box.dataset.applied; return; }
    var r = last.report || {};
    box.dataset.applied = r.applied ? "true" : "false";
    var when = new Date(last.at * 1000).toISOString();
    box.appendChild(el("p", (r.applied ? "Applied" : "Refused") + " (" + last.trigger + ", " + when + ")", r.applied ? "good" : "bad"));
    if (r.configDigest) box.appendChild(el("p", "Config digest " + r.configDigest, "mono"));
    box.appendChild(list("Tenants added:", r.tenantsAdded));
    box.appendChild(list("Tenants removed:", r.tenantsRemoved));
    box.appendChild(list("Tenants changed:", r.tenantsChanged));
    box.appendChild(list("Policies changed:", r.policiesChanged));
    box.appendChild(list("Accounts restarted:", r.accountsRestarted));
    box.appendChild(list("Errors:", r.errors));
    if (r.applied && !(r.tenantsAdded || []).length && !(r.tenantsRemoved || []).length && !(r.tenantsChanged || []).length &&
        !(r.policiesChanged || []).length && !(r.accountsRestarted || []).length) {
      box.appendChild(el("p", "Nothing changed.", "muted"));
    }
  }

  function renderReload(rel) {
    var slot = $("reload-slot");
    clear(slot);
    if (may.operate) {
      var b = el("button", "Reload configuration");
      b.id = "reload";
      b.type = "button";
      b.disabled = rel.available === false;
      if (rel.available === false) slot.appendChild(el("p", "This gateway runs without a config file; there is nothing to reload.", "muted"));
      b.addEventListener("click", reload);
      slot.insertBefore(b, slot.firstChild);
    } else {
      slot.appendChild(el("p", "Your role may not reload the configuration.", "muted"));
    }
    showReport($("reload-result"), rel.last || null);
  }

  async function reload() {
    var b = $("reload");
    if (b) b.disabled = true;
    setState("loading");
    var res = await api("POST", "/admin/reload");
    if (res.status !== 200 && res.status !== 409) { showMessage(errorText(res)); setState("error"); if (b) b.disabled = false; return; }
    showMessage("");
    await refresh();
    var r = $("reload");
    if (r) r.focus();
  }

  $("signin").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var t = $("token").value.trim();
    if (t) signIn(t);
  });
  $("sign-out").addEventListener("click", function () { signOut(""); $("token").focus(); });
  $("refresh").addEventListener("click", function () { refresh(); });

  var saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved); else setState("signed-out");
})();
