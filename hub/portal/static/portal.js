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

    var list = $("#preview-list"), problems = $("#preview-problems"), excluded = $("#preview-excluded"), timer = null;
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
      if (val("schedule.exclusions")) { s.exclusions = val("schedule.exclusions"); }  // the hub reads the lines
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
            excluded.textContent = "";
            excluded.hidden = !res.body.exclusions;
            if (res.body.exclusions) {
              excluded.textContent = res.body.excluded_local.length
                ? "Skipped by the exclusion windows (not runs, never missed): " + res.body.excluded_local.join(", ")
                : "No run in this span falls inside the exclusion windows.";
            }
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

  // ---------------------------------------------------------------- plots
  // Small SVG charts: stacked panels over one time axis, each with its own scale and
  // labelled ticks (durations of 45 s and latencies of 0.7 s do not share an axis).
  var NS = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function svgText(parent, txt, x, y, anchor, extra) {
    var attrs = {x: x, y: y, "text-anchor": anchor || "start", "font-size": 11, fill: "#4a5568"};
    Object.keys(extra || {}).forEach(function (k) { attrs[k] = extra[k]; });
    var t = svgEl("text", attrs, parent);
    t.textContent = txt;
    return t;
  }
  function niceStep(span, count) {
    var raw = span / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  }
  function fmtMs(ms, step) {
    if (step >= 1000 || ms >= 10000) {
      var s = ms / 1000;
      return (step >= 1000 ? s.toFixed(0) : s.toFixed(1)) + " s";
    }
    return Math.round(ms) + " ms";
  }
  var FORMATS = {
    ms: {ticks: function (max) { return niceStep(max, 3); }, label: fmtMs,
         value: function (v) { return fmtMs(v, v >= 1000 ? 1 : 0); }},
    rate: {fixedMax: 1, ticks: function () { return 0.5; },
           label: function (v) { return Math.round(v * 100) + "%"; },
           value: function (v) { return (v * 100).toFixed(1) + "%"; }},
    count: {ticks: function (max) { return Math.max(1, niceStep(max, 3)); },
            label: function (v) { return String(Math.round(v)); },
            value: function (v) { return String(v); }}
  };
  function pad2(n) { return (n < 10 ? "0" : "") + n; }
  function timeTicks(t0, t1) {
    var steps = [60, 300, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
                 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400];
    var span = (t1 - t0) / 1000, step = steps[steps.length - 1];
    for (var i = 0; i < steps.length; i++) { if (span / steps[i] <= 7) { step = steps[i]; break; } }
    var ticks = [], first = Math.ceil(t0 / 1000 / step) * step;
    for (var s = first; s * 1000 <= t1; s += step) { ticks.push(s * 1000); }
    var label = function (ms) {
      var d = new Date(ms);
      var hm = pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes());
      var md = d.toISOString().slice(5, 10);
      if (step >= 86400) { return md; }
      return (span > 86400 ? md + " " : "") + hm;
    };
    return {ticks: ticks, label: label};
  }
  // panels: [{title, format, kind: "line"|"bar", series: [{key, color, label}]}]
  function drawChart(target, data, panels, aria) {
    target.textContent = "";
    var pts = data.points.filter(function (p) {
      return panels.some(function (panel) { return panel.series.some(function (s) { return p[s.key] !== null && p[s.key] !== undefined; }); });
    });
    if (!pts.length) {
      var p = document.createElement("p"); p.className = "muted small";
      p.textContent = "No finished runs in this range."; target.appendChild(p); return;
    }
    var W = 900, L = 70, R = 24, PH = 86, GAP = 30, TOP = 8, AXIS = 40;
    var H = TOP + panels.length * (PH + GAP) + AXIS - 6;
    var svg = svgEl("svg", {viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", "aria-label": aria}, target);
    var t0 = Date.parse(data.since), t1 = Date.parse(data.until);
    var bucket = (data.bucket_seconds || 0) * 1000;
    var x = function (wire) { return L + (Date.parse(wire) + bucket / 2 - t0) / Math.max(1, t1 - t0) * (W - L - R); };
    var tt = timeTicks(t0, t1);
    panels.forEach(function (panel, index) {
      var top = TOP + index * (PH + GAP) + 16, bottom = top + PH - 16;
      var fmt = FORMATS[panel.format];
      var max = fmt.fixedMax || 0;
      if (!fmt.fixedMax) {
        pts.forEach(function (p) {
          if (panel.stacked) { max = Math.max(max, panel.series.reduce(function (a, s) { return a + (p[s.key] || 0); }, 0)); }
          else { panel.series.forEach(function (s) { max = Math.max(max, p[s.key] || 0); }); }
        });
        var step0 = fmt.ticks(max || 1);
        max = Math.max(step0, Math.ceil((max || 1) / step0) * step0);
      }
      var step = fmt.ticks(max);
      var y = function (v) { return bottom - v / max * (bottom - top); };
      svgText(svg, panel.title, L, top - 5, "start", {"font-weight": "600", fill: "#2d3748", "font-size": 12});
      var lx = W - R;
      panel.series.slice().reverse().forEach(function (s) {
        var label = svgText(svg, s.label, lx, top - 5, "end");
        var measured = label.getComputedTextLength ? label.getComputedTextLength() : 0;
        var width = measured || s.label.length * 6;
        svgEl("rect", {x: lx - width - 14, y: top - 14, width: 10, height: 10, fill: s.color}, svg);
        lx -= width + 30;
      });
      for (var v = 0; v <= max + 1e-9; v += step) {
        svgEl("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: v === 0 ? "#a0aec0" : "#edf2f7"}, svg);
        svgText(svg, fmt.label(v, step), L - 6, y(v) + 4, "end", {"class": "tick"});
      }
      tt.ticks.forEach(function (ms) {
        var xx = L + (ms - t0) / Math.max(1, t1 - t0) * (W - L - R);
        svgEl("line", {x1: xx, x2: xx, y1: top, y2: bottom, stroke: "#edf2f7"}, svg);
      });
      var slot = Math.max(2, bucket / Math.max(1, t1 - t0) * (W - L - R) - 2);
      if (panel.kind === "bar") {
        pts.forEach(function (p) {
          var base = 0;
          panel.series.forEach(function (s) {
            var v = p[s.key] || 0;
            if (!v) { return; }
            var r = svgEl("rect", {x: (x(p.t) - slot / 2).toFixed(1), y: y(base + v).toFixed(1), width: slot.toFixed(1),
                                   height: Math.max(0.5, y(base) - y(base + v)).toFixed(1), fill: s.color}, svg);
            svgEl("title", {}, r).textContent = when(p.t) + ": " + s.label + " " + fmt.value(v);
            base += v;
          });
        });
        return;
      }
      panel.series.forEach(function (s) {
        var d = "";
        pts.forEach(function (p) {
          if (p[s.key] === null || p[s.key] === undefined) { return; }
          d += (d ? " L" : "M") + x(p.t).toFixed(1) + " " + y(p[s.key]).toFixed(1);
        });
        if (d) { svgEl("path", {d: d, fill: "none", stroke: s.color, "stroke-width": 1.6}, svg); }
        pts.forEach(function (p) {
          if (p[s.key] === null || p[s.key] === undefined) { return; }
          var c = svgEl("circle", {cx: x(p.t).toFixed(1), cy: y(p[s.key]).toFixed(1), r: 2.6, fill: s.color}, svg);
          svgEl("title", {}, c).textContent = when(p.t) + ": " + s.label + " " + fmt.value(p[s.key]) +
            (p.runs !== undefined ? " (" + p.runs + " runs)" : "");
        });
      });
    });
    var axisY = H - AXIS + 8;
    tt.ticks.forEach(function (ms) {
      var xx = L + (ms - t0) / Math.max(1, t1 - t0) * (W - L - R);
      svgText(svg, tt.label(ms), xx, axisY + 8, "middle", {"class": "tick"});
    });
    svgText(svg, "time (UTC)", L + (W - L - R) / 2, axisY + 24, "middle");
  }

  var plot = $("#plot[data-series]");
  if (plot) {
    var TASK_PANELS = [
      {title: "Duration (start → finish)", format: "ms", kind: "line", series: [{key: "duration_ms", color: "#2b6cb0", label: "mean duration"}]},
      {title: "Latency (due → start)", format: "ms", kind: "line", series: [{key: "latency_ms", color: "#dd6b20", label: "mean latency"}]},
      {title: "Success rate", format: "rate", kind: "line", series: [{key: "success_rate", color: "#2f855a", label: "runs ok"}]}
    ];
    var loadPlot = function () {
      var sel = $("#plot-range-select");
      var until = new Date(), since;
      var first = plot.getAttribute("data-first-run");
      if (!sel || sel.value === "first") {
        // The narrowest range holding the runs: from the first one (a little before it).
        var start = first ? Date.parse(first) : until.getTime() - 86400000;
        var span = Math.max(until.getTime() - start, 0);
        since = new Date(span < 600000 ? until.getTime() - 600000 : start - span * 0.03);
      } else {
        since = new Date(until.getTime() - parseInt(sel.value, 10) * 1000);
      }
      getJSON(withQuery(plot.getAttribute("data-series"), {since: since.toISOString(), until: until.toISOString(), buckets: 120}))
        .then(function (res) { if (res.status === 200) { drawChart(plot, res.body, TASK_PANELS, "duration, latency and success rate over time"); } })
        .catch(function () { text(plot, "Could not load the plot."); });
    };
    var rangeSel = $("#plot-range-select");
    if (rangeSel) { rangeSel.addEventListener("change", loadPlot); }
    loadPlot();
  }

  var activity = $("#activity[data-activity]");
  if (activity) {
    var ACTIVITY_PANELS = [
      {title: "Runs per hour", format: "count", kind: "bar", stacked: true,
       series: [{key: "ok", color: "#48bb78", label: "ok"}, {key: "not_ok", color: "#e53e3e", label: "error or failed"}]},
      {title: "Success rate per hour", format: "rate", kind: "line", series: [{key: "success_rate", color: "#2f855a", label: "runs ok"}]}
    ];
    var loadActivity = function () {
      getJSON(activity.getAttribute("data-activity")).then(function (res) {
        if (res.status !== 200) { return; }
        res.body.points.forEach(function (p) { p.not_ok = p.runs - p.ok; if (!p.runs) { p.ok = null; p.not_ok = null; } });
        drawChart(activity, res.body, ACTIVITY_PANELS, "runs per hour and success rate");
      }).catch(function () { text(activity, "Could not load the plot."); });
    };
    loadActivity();
    window.setInterval(loadActivity, 60000);
  }
})();
