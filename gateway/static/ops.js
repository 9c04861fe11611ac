// The operations page's script (gateway/ops_page.py). The page carries no
// data: this reads the operator token from the address's fragment (a browser
// never sends the fragment to a server) and asks the node's JSON endpoints
// with it, every few seconds. Everything the node answers is put in the page
// as text (textContent), never as markup.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_PATTERN = /^op_[A-Za-z0-9_-]{8,200}$/;
  let refreshTimer = null;
  let stopped = false;
  let lastGood = null;

  function byId(id) {
    return document.getElementById(id);
  }

  function token() {
    let text = "";
    try {
      text = decodeURIComponent(window.location.hash.slice(1));
    } catch (error) {
      text = "";
    }
    return TOKEN_PATTERN.test(text) ? text : null;
  }

  function authorization() {
    return { Authorization: "Bearer " + token() };
  }

  function setState(state, text) {
    const status = byId("status");
    status.textContent = text;
    status.className = "status" + (state === "refused" || state === "no-token" ? " error" : state === "stale" ? " stale" : "");
    document.body.dataset.state = state;
  }

  // ---------------------------------------------------------------- formats

  function count(value) {
    return Math.round(value).toLocaleString("en-US");
  }

  function rate(value) {
    return value < 10 ? value.toFixed(2) : value.toFixed(1);
  }

  function millis(value) {
    return value === null || value === undefined ? "none" : (value < 10 ? value.toFixed(2) : value.toFixed(1)) + " ms";
  }

  function age(seconds) {
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.round(seconds - minutes * 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function clock(atSeconds) {
    return new Date(atSeconds * 1000).toLocaleTimeString("en-GB");
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  // ---------------------------------------------------------------- tables

  function fillTable(id, rows, cells, emptyText) {
    const body = byId(id).tBodies[0];
    body.replaceChildren();
    if (rows.length === 0) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = byId(id).tHead.rows[0].cells.length;
      cell.className = "empty";
      cell.textContent = emptyText;
      return;
    }
    for (const item of rows) {
      const row = body.insertRow();
      for (const value of cells(item, row)) {
        const cell = row.insertCell();
        if (value instanceof Node) cell.appendChild(value);
        else cell.textContent = value;
      }
    }
  }

  // ---------------------------------------------------------------- charts

  function niceCeiling(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function svgElement(name, attributes) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    return element;
  }

  // A line per key of `points` (null values break the line), on a time axis
  // from the first interval's start to the last point.
  function drawChart(svg, points, keys, unit) {
    svg.replaceChildren();
    const width = 640, height = 180, left = 52, right = 10, top = 10, bottom = 22;
    const values = [];
    for (const point of points) for (const key of keys) if (point[key] !== null) values.push(point[key]);
    const top_value = niceCeiling(Math.max(0, ...values));
    const end = points.length ? points[points.length - 1].at_s : Date.now() / 1000;
    const start = Math.min(points.length ? points[0].at_s - points[0].interval_s : end, end - 60);
    const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
    const y = (v) => top + (1 - v / top_value) * (height - top - bottom);
    for (const fraction of [0, 0.5, 1]) {
      const value = top_value * fraction;
      svg.appendChild(svgElement("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
      const label = svgElement("text", { class: "axis", x: left - 4, y: y(value) + 4, "text-anchor": "end" });
      label.textContent = (value < 10 && value > 0 ? value.toFixed(1) : String(value)) + unit;
      svg.appendChild(label);
    }
    const since = svgElement("text", { class: "axis", x: left, y: height - 6 });
    since.textContent = "-" + age(end - start);
    svg.appendChild(since);
    const now = svgElement("text", { class: "axis", x: width - right, y: height - 6, "text-anchor": "end" });
    now.textContent = clock(end);
    svg.appendChild(now);
    keys.forEach((key, index) => {
      let segment = [];
      const flush = () => {
        if (segment.length === 1) {
          const [cx, cy] = segment[0];
          svg.appendChild(svgElement("circle", { class: "series-" + index, cx: cx, cy: cy, r: 2.5 }));
        } else if (segment.length > 1) {
          svg.appendChild(svgElement("polyline", { class: "series-" + index, points: segment.map((p) => p.join(",")).join(" ") }));
        }
        segment = [];
      };
      for (const point of points) {
        if (point[key] === null) flush();
        else segment.push([x(point.at_s).toFixed(1), y(point[key]).toFixed(1)]);
      }
      flush();
    });
    svg.dataset.points = String(points.length);
  }

  // ---------------------------------------------------------------- the page

  function clearFigures() {
    byId("figures").hidden = true;
    for (const element of document.querySelectorAll("#figures .value, #figures .note span, #retry-result, #dead-letters-note")) {
      element.textContent = "";
    }
    for (const table of document.querySelectorAll("#figures table")) table.tBodies[0].replaceChildren();
    for (const svg of document.querySelectorAll("#figures svg")) svg.replaceChildren();
    setText("node-id", "");
    setText("updated", "");
    lastGood = null;
  }

  function render(data) {
    setText("node-id", data.node_id ? "node " + data.node_id : "");
    setText("updated", "updated " + clock(data.generated_at_s));
    setText("sample-every", String(data.sample_every_s));
    const headline = data.headline;
    setText("payments-succeeded", count(data.payments_succeeded));
    setText("requests-total", count(data.requests));
    setText("payments-per-s", headline ? rate(headline.payments_per_s) : "none yet");
    setText("requests-per-s", headline ? rate(headline.requests_per_s) : "none yet");
    setText("latency-p50", headline ? millis(headline.p50_ms) : "none yet");
    setText("latency-p99", headline ? millis(headline.p99_ms) : "none yet");
    drawChart(byId("throughput-chart"), data.points, ["payments_per_s", "requests_per_s"], "/s");
    drawChart(byId("latency-chart"), data.points, ["p50_ms", "p99_ms"], " ms");
    setText("unknown-count", count(data.unknown_operations));
    setText("unknown-oldest", data.unknown_operations > 0 ? age(data.unknown_oldest_s) : "none");
    setText("refused", count(Object.values(data.refused_at_door).reduce((a, b) => a + b, 0)));
    setText("shed", count(data.shed_commands));
    setText("webhook-pending", data.webhook_pending === null ? "not on this node" : count(data.webhook_pending));
    setText("dead-count", count(data.dead_letters.length));
    const outcomes = Object.entries(data.webhook_deliveries).map(([outcome, n]) => outcome + " " + count(n));
    setText("webhook-outcomes", outcomes.length ? outcomes.join(", ") : "none");
    setText("outbox-published", count(data.outbox_published));
    setText(
      "dead-letters-note",
      data.dead_letters_error || (data.dead_letters.length >= data.dead_letters_shown_max ? "The newest " + data.dead_letters_shown_max + " are shown." : "")
    );
    fillTable("dead-letters", data.dead_letters, (letter, row) => {
      row.dataset.eventId = letter.event_id;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "retry";
      button.textContent = "Retry";
      button.dataset.eventId = letter.event_id;
      button.addEventListener("click", () => retry(letter.event_id, button));
      return [letter.event_id, letter.endpoint_id, letter.intent_id, String(letter.attempts), clock(letter.dead_since_s), button];
    }, "No dead letters.");
    setText("partitions-served", count(data.partitions_served));
    fillTable("partitions", data.partitions, (p, row) => {
      row.dataset.partition = String(p.partition);
      return [
        String(p.partition),
        p.owner || "none",
        p.epoch === null ? "" : String(p.epoch),
        p.lease_expires_in_s === null ? "" : p.lease_expires_in_s < 0 ? "expired" : age(p.lease_expires_in_s),
        p.mailbox_depth === null ? "elsewhere" : String(p.mailbox_depth),
      ];
    }, "No partitions.");
    fillTable("nodes", data.nodes, (n) => [n.node_id, n.url || "", age(n.silent_s) + " ago", n.leaving ? "yes" : "no", String(n.mailbox_depth)], "No cluster view yet.");
    fillTable("recent-errors", data.recent_errors, (e) => [clock(e.at_s), e.worker, e.event, count(e.count), e.detail], "No errors in the last samples.");
    fillTable("error-counts", data.errors, (e) => [e.worker, e.event, count(e.count)], "No errors.");
    byId("figures").hidden = false;
    lastGood = data.generated_at_s;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") return body.error.message;
    } catch (error) {
      // Not JSON: the status says enough.
    }
    return "HTTP " + response.status;
  }

  function refused(message) {
    stopped = true;
    clearFigures();
    setState("refused", "The operator token was refused: " + message + " Open the address `payments up` prints as 'ops page:'.");
  }

  function schedule() {
    clearTimeout(refreshTimer);
    if (!stopped) refreshTimer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (token() === null) {
      stopped = true;
      clearFigures();
      setState("no-token", "No operator token in this page's address: open the address `payments up` prints as 'ops page:' (/ops#op_...).");
      return;
    }
    try {
      const response = await fetch("/ops/data", { headers: authorization(), cache: "no-store" });
      if (response.status === 401) {
        refused(await errorMessage(response));
        return;
      }
      if (!response.ok) {
        const message = await errorMessage(response);
        setState("stale", "The node answered: " + message + (lastGood ? " Showing the figures of " + clock(lastGood) + "." : ""));
      } else {
        render(await response.json());
        setState("live", "Live: refreshed every " + REFRESH_MS / 1000 + " s.");
      }
    } catch (error) {
      setState("stale", "The node cannot be reached." + (lastGood ? " Showing the figures of " + clock(lastGood) + "." : ""));
    }
    schedule();
  }

  async function retry(eventId, button) {
    button.disabled = true;
    const result = byId("retry-result");
    result.textContent = "Sending " + eventId + " again...";
    delete result.dataset.eventId;
    try {
      const response = await fetch("/ops/dead-letters/" + encodeURIComponent(eventId) + "/retry", {
        method: "POST",
        headers: authorization(),
        cache: "no-store",
      });
      if (response.status === 401) {
        refused(await errorMessage(response));
        return;
      }
      if (!response.ok) {
        result.textContent = "Retry of " + eventId + " refused: " + (await errorMessage(response));
        button.disabled = false;
        return;
      }
      const body = await response.json();
      const endpoints = body.endpoints.length;
      result.textContent =
        "Queued again: " + body.id + " to " + endpoints + " endpoint" + (endpoints === 1 ? "" : "s") + (endpoints ? " (" + body.endpoints.join(", ") + ")." : ".");
      result.dataset.eventId = body.id;
      result.dataset.endpoints = String(endpoints);
    } catch (error) {
      result.textContent = "Retry of " + eventId + " failed: the node cannot be reached.";
      button.disabled = false;
    }
    refresh();
  }

  window.addEventListener("hashchange", () => {
    stopped = false;
    refresh();
  });
  document.addEventListener("DOMContentLoaded", refresh);
})();
