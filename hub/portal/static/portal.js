// Couchfarm portal: small progressive enhancements, no libraries, nothing from other sites.
(function () {
  "use strict";
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function text(el, value) { if (el) { el.textContent = value; } }
  function when(wire) { return wire ? wire.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "—"; }
  function pct(v) { return v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%"; }
  function withQuery(url, params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== null && params[k] !== undefined && params[k] !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    });
    if (!parts.length) { return url; }
    return url + (url.indexOf("?") === -1 ? "?" : "&") + parts.join("&");
  }
  function getJSON(url) {
    return fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) {
        if (r.status === 401) { window.location.href = "/login"; throw new Error("logged out"); }
        return r.json().then(function (body) { return {status: r.status, body: body}; });
      });
  }

  // ---------------------------------------------------------------- confirmations
  $$("form.confirm").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm") || "Are you sure?")) { ev.preventDefault(); }
    });
  });

  // ---------------------------------------------------------------- dashboard polling
  var totals = $("#totals[data-poll]");
  if (totals) {
    var every = Math.max(2, parseInt(totals.getAttribute("data-refresh"), 10) || 10) * 1000;
    var poll = function () {
      getJSON(totals.getAttribute("data-poll")).then(function (res) {
        if (res.status !== 200) { return; }
        var board = res.body;
        Object.keys(board.totals).forEach(function (k) {
          var el = $('[data-total="' + k + '"]', totals);
          if (el) { text(el, k === "success_rate" ? pct(board.totals[k]) : board.totals[k]); }
        });
        text($("#updated-at"), when(board.at));
        board.tasks.forEach(function (t) {
          var row = $('tr[data-task="' + (window.CSS && CSS.escape ? CSS.escape(t.name) : t.name) + '"]');
          if (!row) { return; }
          Object.keys(t.counts).forEach(function (s) { text($('[data-count="' + s + '"]', row), t.counts[s]); });
          text($('[data-field="success_rate"]', row), pct(t.success_rate));
          text($('[data-field="next_due"]', row), when(t.next_due));
          var last = $('[data-field="last"]', row);
          if (last && t.last) {
            last.textContent = "";
            var badge = document.createElement("span");
            badge.className = "status status-" + t.last.status;
            badge.textContent = t.last.status;
            var at = document.createElement("span");
            at.className = "small";
            at.textContent = " " + when(t.last.due_at);
            last.appendChild(badge); last.appendChild(at);
          }
        });
      }).catch(function () { /* next tick tries again */ });
    };
    window.setInterval(poll, every);
  }

  // ---------------------------------------------------------------- task form
  var form = $("#task-form");
  if (form) {
    var kindSelect = $("[data-kind-select]", form);
    var showKind = function () {
      $$("fieldset.kind-fields", form).forEach(function (fs) {
        var on = fs.getAttribute("data-kind") === kindSelect.value;
        fs.hidden = !on; fs.disabled = !on;
      });
    };
    kindSelect.addEventListener("change", showKind);
    showKind();

    var modeOf = function () {
      var checked = $('input[name="schedule_mode"]:checked', form);
      return checked ? checked.value : "every";
    };
    var showMode = function () {
      $$("[data-mode]", form).forEach(function (el) { el.hidden = el.getAttribute("data-mode") !== modeOf(); });
    };
    $$('input[name="schedule_mode"]', form).forEach(function (r) { r.addEventListener("change", showMode); });
    showMode();

    var list = $("#preview-list"), problems = $("#preview-problems"), timer = null;
    var scheduleFromForm = function () {
      var s = {}, mode = modeOf();
      var val = function (name) { var el = form.elements[name]; return el ? el.value.trim() : ""; };
      if (mode === "every") { s.every = /^\d+$/.test(val("schedule.every")) ? parseInt(val("schedule.every"), 10) : val("schedule.every"); }
      else if (mode === "cron") { s.cron = val("schedule.cron"); }
      else { s.at = val("schedule.at"); }
      if (val("schedule.tz")) { s.tz = val("schedule.tz"); }
      if (val("schedule.start")) { s.start = val("schedule.start"); }
      if (val("schedule.end")) { s.end = val("schedule.end"); }
      if (val("schedule.jitter")) { s.jitter = /^\d+$/.test(val("schedule.jitter")) ? parseInt(val("schedule.jitter"), 10) : val("schedule.jitter"); }
      return s;
    };
    var preview = function () {
      fetch("/api/schedule/preview", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify({schedule: scheduleFromForm(), count: 5})
      }).then(function (r) { return r.json().then(function (b) { return {status: r.status, body: b}; }); })
        .then(function (res) {
          list.textContent = "";
          if (res.status === 200) {
            problems.hidden = true;
            if (!res.body.fires.length) { var none = document.createElement("li"); none.textContent = "No future runs."; list.appendChild(none); }
            res.body.local.forEach(function (local, i) {
              var li = document.createElement("li");
              li.textContent = local;
              li.title = res.body.fires[i];
              list.appendChild(li);
            });
          } else {
            problems.hidden = false;
            problems.textContent = (res.body.problems && res.body.problems.length ? res.body.problems : [res.body.detail]).join(" · ");
          }
        }).catch(function () { /* keep the last preview */ });
    };
    var schedulePreview = function () { window.clearTimeout(timer); timer = window.setTimeout(preview, 250); };
    $$('[name^="schedule"]', form).forEach(function (el) {
      el.addEventListener("input", schedulePreview);
      el.addEventListener("change", schedulePreview);
    });
    preview();
  }

  // ---------------------------------------------------------------- plot
  var plot = $("#plot[data-series]");
  if (plot) {
    var NS = "http://www.w3.org/2000/svg";
    var el = function (name, attrs, parent) {
      var node = document.createElementNS(NS, name);
      Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
      if (parent) { parent.appendChild(node); }
      return node;
    };
    var draw = function (series) {
      plot.textContent = "";
      var pts = series.points;
      if (!pts.length) {
        var p = document.createElement("p"); p.className = "muted small";
        p.textContent = "No finished runs in this range."; plot.appendChild(p); return;
      }
      var W = 900, H = 270, L = 60, R = 60, T = 26, B = 28, mid = 180;
      var svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: "100%", role: "img",
                           "aria-label": "duration, latency and success rate over time"}, plot);
      var t0 = Date.parse(series.since), t1 = Date.parse(series.until);
      var x = function (wire) { return L + (Date.parse(wire) - t0) / Math.max(1, t1 - t0) * (W - L - R); };
      var maxMs = 1;
      pts.forEach(function (p) { maxMs = Math.max(maxMs, p.duration_ms || 0, p.latency_ms || 0); });
      var y = function (ms) { return T + (1 - ms / maxMs) * (mid - T); };
      var ys = function (rate) { return mid + 22 + (1 - rate) * (H - B - mid - 22); };
      el("line", {x1: L, x2: W - R, y1: mid, y2: mid, stroke: "#ccd"}, svg);
      el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#ccd"}, svg);
      var label = function (txt, xx, yy, anchor, cls) {
        var t = el("text", {x: xx, y: yy, "text-anchor": anchor || "start", "font-size": 11, fill: "#555"}, svg);
        if (cls) { t.setAttribute("class", cls); }
        t.textContent = txt;
      };
      label(maxMs >= 1000 ? (maxMs / 1000).toFixed(1) + " s" : Math.round(maxMs) + " ms", L - 6, T + 10, "end");
      label("0", L - 6, mid, "end");
      label("100%", L - 6, mid + 30, "end");
      label("0%", L - 6, H - B, "end");
      label(when(series.since), L, H - 8, "start");
      label(when(series.until), W - R, H - 8, "end");
      var line = function (key, scale, color) {
        var d = "";
        pts.forEach(function (p) {
          if (p[key] === null || p[key] === undefined) { return; }
          d += (d ? " L" : "M") + x(p.t).toFixed(1) + " " + scale(p[key]).toFixed(1);
        });
        if (d) { el("path", {d: d, fill: "none", stroke: color, "stroke-width": 1.8}, svg); }
        pts.forEach(function (p) {
          if (p[key] === null || p[key] === undefined) { return; }
          var c = el("circle", {cx: x(p.t).toFixed(1), cy: scale(p[key]).toFixed(1), r: 2.4, fill: color}, svg);
          var title = el("title", {}, c);
          title.textContent = when(p.t) + ": " + key.replace("_ms", "") + " " + p[key] + (key === "success_rate" ? "" : " ms") + " (" + p.runs + " runs)";
        });
      };
      line("duration_ms", y, "#2b6cb0");
      line("latency_ms", y, "#dd6b20");
      line("success_rate", ys, "#2f855a");
      var legend = [["duration", "#2b6cb0", 80], ["latency (start − due)", "#dd6b20", 150], ["success rate", "#2f855a", 90]];
      var lx = W - R - 320;
      legend.forEach(function (item) {
        el("rect", {x: lx, y: 2, width: 10, height: 10, fill: item[1]}, svg);
        label(item[0], lx + 14, 11);
        lx += item[2];
      });
    };
    var load = function () {
      var sel = $("#plot-range-select");
      var seconds = sel ? parseInt(sel.value, 10) : 86400;
      var until = new Date(), since = new Date(until.getTime() - seconds * 1000);
      getJSON(withQuery(plot.getAttribute("data-series"), {since: since.toISOString(), until: until.toISOString(), buckets: 120}))
        .then(function (res) { if (res.status === 200) { draw(res.body); } })
        .catch(function () { text(plot, "Could not load the plot."); });
    };
    var rangeSel = $("#plot-range-select");
    if (rangeSel) { rangeSel.addEventListener("change", load); }
    load();
  }
})();
