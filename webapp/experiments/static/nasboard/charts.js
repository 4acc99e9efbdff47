/* The experiment page's and the trial page's charts, drawn with the vendored Chart.js (window.Chart).
 *
 * NasCharts.mount({pointsUrl, trialUrl, isAccuracy, figureName, root}) fetches points.json once, fills the
 * canvases under `root` that carry a data-chart attribute, and returns {add(rows), reload(), ready, charts}:
 * `add` upserts trials by number ({number, val_acc, params, flops, finished_s, distance, arch}; a field left out
 * keeps its value) and redraws once per animation frame; `reload` fetches points.json again (new DARTS epochs).
 * NasCharts.learningCurve(canvas, {val_acc, train_loss}) draws a trial's per-epoch curves.
 *
 * Built for 10,000 trials: no animation, data handed over already parsed, points that shrink as they multiply,
 * and step lines that hold only the trials that changed the best.
 */
(function () {
  "use strict";
  const POINT = "rgba(47, 111, 222, 0.55)", BEST = "#17692f", FRONT = "#d9480f", GRID = "#eef0f3";
  const OP_COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#7048e8", "#c2255c", "#0b7285", "#e67700", "#495057"];
  const count = (v) => v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US");
  const compact = new Intl.NumberFormat("en-US", {notation: "compact", maximumSignificantDigits: 2});
  // A log axis ticks at 1..9 x 10^k; labelling 1, 2 and 5 only keeps the labels apart.
  function logTick(v) {
    const mantissa = v / Math.pow(10, Math.floor(Math.log10(v) + 1e-9));
    return [1, 2, 5].some((m) => Math.abs(mantissa - m) < 1e-6) ? compact.format(v) : "";
  }

  // A time axis in one unit, chosen by its longest time: seconds up to 2 minutes, minutes up to 2 hours, then hours;
  // with as many decimals (1 to 3) as the step between its ticks needs, so no two ticks read the same.
  function duration(value, index, ticks) {
    const max = this.max;
    const [scale, unit] = max <= 120 ? [1, " s"] : max <= 7200 ? [60, " min"] : [3600, " h"];
    const step = ticks && ticks.length > 1 ? Math.abs(ticks[1].value - ticks[0].value) / scale : 0.1;
    const digits = Math.min(3, Math.max(1, Math.ceil(-Math.log10(step) - 1e-9)));
    return Number((value / scale).toFixed(digits)) + unit;
  }

  /** Of points {x, y, n} (x: trial number or time, y: the figure, n: the trial), the ones that raised the best
   * y in order of x, plus the last x (so the line runs to the end): a step line of a few dozen points whatever
   * the number of trials. */
  function bestSoFar(points) {
    const sorted = points.slice().sort((a, b) => a.x - b.x || a.n - b.n);
    const steps = [];
    let best = -Infinity;
    sorted.forEach(function (p) { if (p.y > best) { best = p.y; steps.push({x: p.x, y: best, n: p.n}); } });
    const last = sorted[sorted.length - 1];
    if (last && steps[steps.length - 1].x !== last.x) steps.push({x: last.x, y: best});  // no trial: no tooltip
    return steps;
  }

  /** Of points {x: a cost, y: the figure, n}, the Pareto front of a higher figure for a smaller cost: the trials
   * no other trial beats on both, cheapest first. */
  function paretoFront(points) {
    const sorted = points.slice().sort((a, b) => a.x - b.x || b.y - a.y || a.n - b.n);
    const front = [];
    let best = -Infinity;
    sorted.forEach(function (p) { if (p.y > best) { best = p.y; front.push({x: p.x, y: p.y, n: p.n}); } });
    return front;
  }

  function pointRadius(n) { return n > 3000 ? 1.5 : n > 500 ? 2 : 3; }

  // Says so on an empty chart rather than leaving bare axes.
  const emptyNote = {
    id: "nasEmpty",
    afterDraw: function (chart) {
      if (chart.data.datasets.some((d) => d.data.length)) return;
      const {ctx, chartArea} = chart;
      ctx.save(); ctx.fillStyle = "#667085"; ctx.font = "13px system-ui, sans-serif"; ctx.textAlign = "center";
      ctx.fillText(chart.options.plugins.nasEmpty.text, (chartArea.left + chartArea.right) / 2,
                   (chartArea.top + chartArea.bottom) / 2);
      ctx.restore();
    },
  };

  function axis(title, extra) {
    return Object.assign({title: {display: true, text: title}, grid: {color: GRID}}, extra || {});
  }

  function mount(opts) {
    const root = opts.root || document;
    const rows = new Map();  // number -> row
    const charts = {};
    const fig = (v) => v === null || v === undefined ? "–" : opts.isAccuracy ? (100 * v).toFixed(2) + "%"
      : Number(v.toPrecision(4)).toString();
    const figTick = (v) => opts.isAccuracy ? (100 * v).toFixed(1) + "%" : Number(Number(v).toPrecision(3)).toString();
    // An accuracy is a fraction shown as a percentage; a score keeps its own scale and its name.
    const figAxis = () => axis(opts.isAccuracy ? opts.figureName + " (%)" : opts.figureName,
                               {grace: "5%", ticks: {callback: figTick}});

    const tooltip = {
      filter: (item) => item.raw && item.raw.n !== undefined,
      callbacks: {
        title: (items) => items.length ? "trial " + items[0].raw.n : "",
        label: function (item) {
          const r = rows.get(item.raw.n);
          if (!r) return "";
          return [r.arch, opts.figureName + ": " + fig(r.val_acc), "params: " + count(r.params),
                  "MACs: " + count(r.flops)];
        },
      },
    };

    function open(event, elements, chart) {
      for (const el of elements) {
        const raw = chart.data.datasets[el.datasetIndex].data[el.index];
        if (raw && raw.n !== undefined) { window.location.href = opts.trialUrl + raw.n + "/"; return; }
      }
    }

    function make(name, x, y, datasets, empty) {
      const canvas = root.querySelector('[data-chart="' + name + '"]');
      if (!canvas) return;
      charts[name] = new Chart(canvas, {
        type: "scatter",
        data: {datasets: datasets},
        plugins: [emptyNote],
        options: {
          animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
          interaction: {mode: "nearest", intersect: true},
          scales: {x: x, y: y},
          onClick: open,
          onHover: (event, elements) => { event.native.target.style.cursor = elements.length ? "pointer" : "default"; },
          plugins: {legend: {position: "bottom", labels: {boxWidth: 12}}, tooltip: tooltip,
                    nasEmpty: {text: empty || "no trials yet"}},
        },
      });
    }

    // Not clipped to the axes: the first trial sits on the y axis, and the last on the right edge.
    const trials = (label) => ({label: label || "trial", data: [], backgroundColor: POINT, borderColor: POINT,
                                pointRadius: 3, pointHoverRadius: 6, pointBorderWidth: 0, clip: false});
    // Level until the next point, then up: the best so far changes at the trial that beat it, and a front's
    // figure holds from one trial's cost up to the next one's.
    const step = (label, color, points) => ({label: label, data: [], type: "line", stepped: "before",
                                             borderColor: color, backgroundColor: color, borderWidth: 2,
                                             pointRadius: points ? 3.5 : 0, pointHitRadius: points ? 4 : 0,
                                             pointHoverRadius: points ? 6 : 0, fill: false, clip: false});
    const numberAxis = () => axis("trial", {type: "linear", min: 0, ticks: {precision: 0}});
    make("best-by-number", numberAxis(), figAxis(), [trials(), step("best so far", BEST)]);
    make("best-by-time", axis("wall time since the start", {type: "linear", min: 0, ticks: {callback: duration}}),
         figAxis(), [trials(), step("best so far", BEST)], "no finished trial with a time yet");
    make("by-params", axis("parameters (log)", {type: "logarithmic", ticks: {callback: logTick}}), figAxis(),
         [trials(), step("Pareto front (higher " + opts.figureName + ", fewer parameters)", FRONT, true)]);
    make("by-macs", axis("multiply-adds (log)", {type: "logarithmic", ticks: {callback: logTick}}), figAxis(),
         [trials(), step("Pareto front (higher " + opts.figureName + ", fewer MACs)", FRONT, true)]);
    make("distance", numberAxis(), axis("edit distance to the incumbent", {min: 0, grace: "5%", ticks: {precision: 0}}),
         [trials("proposal")],
         "no distances recorded");

    // Where each trial sits on each chart (null: not drawn there). A cost of 0 (unknown) has no place on a log
    // axis; a trial with no finishing time or no distance is left off those charts.
    const known = (v) => v !== null && v !== undefined;
    const SERIES = {
      "best-by-number": {x: (r) => r.number, y: (r) => r.val_acc, line: bestSoFar},
      "best-by-time": {x: (r) => r.finished_s, y: (r) => r.val_acc, line: bestSoFar},
      "by-params": {x: (r) => r.params > 0 ? r.params : null, y: (r) => r.val_acc, line: paretoFront},
      "by-macs": {x: (r) => r.flops > 0 ? r.flops : null, y: (r) => r.val_acc, line: paretoFront},
      "distance": {x: (r) => r.number, y: (r) => r.distance},
    };
    // Each chart keeps one array of points for its trials, changed in place: a new trial is a push and a changed
    // one an edit, so Chart.js makes elements for what is new only, not 10,000 of them on every poll.
    const series = {};
    Object.keys(SERIES).forEach(function (name) {
      if (charts[name]) series[name] = {points: charts[name].data.datasets[0].data, at: new Map(), dirty: false};
    });

    function place(row) {
      Object.keys(series).forEach(function (name) {
        const s = series[name], x = SERIES[name].x(row), y = SERIES[name].y(row), p = s.at.get(row.number);
        if (!known(x) || !known(y)) {
          if (p) { s.points.splice(s.points.indexOf(p), 1); s.at.delete(row.number); s.dirty = true; }
        } else if (!p) {
          const point = {x: x, y: y, n: row.number};
          s.points.push(point); s.at.set(row.number, point); s.dirty = true;
        } else if (p.x !== x || p.y !== y) {
          p.x = x; p.y = y; s.dirty = true;
        }
      });
    }

    function redraw() {
      Object.keys(series).forEach(function (name) {
        const s = series[name], chart = charts[name];
        if (!s.dirty) return;
        s.dirty = false;
        if (SERIES[name].line) chart.data.datasets[1].data = SERIES[name].line(s.points);
        const radius = pointRadius(s.points.length), style = s.points.length > 3000 ? "rect" : "circle";
        const trials = chart.data.datasets[0];
        if (trials.pointRadius !== radius) trials.pointRadius = radius;
        if (trials.pointStyle !== style) trials.pointStyle = style;  // a square of 3 pixels rasters faster
        chart.update("none");
      });
    }

    let frame = null;
    function schedule() {
      if (frame === null) frame = window.requestAnimationFrame(function () { frame = null; redraw(); });
    }

    function upsert(row) {
      const old = rows.get(row.number) || {finished_s: null, distance: null, arch: ""};
      const merged = Object.assign({}, old);
      Object.keys(row).forEach(function (k) { if (row[k] !== undefined) merged[k] = row[k]; });
      rows.set(row.number, merged);
      place(merged);
    }

    let alphaCharts = [];
    function alphas(epochs) {
      const holder = root.querySelector('[data-chart="alphas"]');
      if (!holder || !epochs.length) return;
      alphaCharts.forEach((c) => c.destroy());
      alphaCharts = [];
      holder.replaceChildren();
      const latest = epochs[epochs.length - 1];
      const legend = root.querySelector('[data-chart="alpha-legend"]');
      if (legend) {
        legend.replaceChildren();
        latest.ops.forEach(function (op, i) {
          const span = document.createElement("span");
          span.style.color = OP_COLORS[i % OP_COLORS.length];
          span.textContent = "■ " + op + "  ";
          legend.appendChild(span);
        });
      }
      Object.keys(latest.alphas).forEach(function (cellType) {
        latest.alphas[cellType].forEach(function (_, edge) {
          const box = document.createElement("div"); box.className = "alpha-chart";
          const title = document.createElement("div"); title.className = "muted";
          title.textContent = cellType + " " + ((latest.edges[cellType] || [])[edge] || ("edge " + edge));
          const wrap = document.createElement("div"); wrap.className = "chart small";
          const canvas = document.createElement("canvas"); canvas.dataset.edge = cellType + "/" + edge;
          wrap.appendChild(canvas); box.appendChild(title); box.appendChild(wrap); holder.appendChild(box);
          alphaCharts.push(new Chart(canvas, {
            type: "line",
            data: {datasets: latest.ops.map((op, k) => ({
              label: op, borderColor: OP_COLORS[k % OP_COLORS.length], backgroundColor: OP_COLORS[k % OP_COLORS.length],
              borderWidth: 1.5, pointRadius: epochs.length > 30 ? 0 : 2,
              data: epochs.map((e) => ({x: e.epoch, y: e.alphas[cellType][edge][k]})),
            }))},
            options: {
              animation: false, parsing: false, responsive: true, maintainAspectRatio: false,
              interaction: {mode: "index", intersect: false},
              // The y axis spans this edge's own range: early in a search every weight sits near 1/ops.
              scales: {x: axis("epoch", {type: "linear", ticks: {precision: 0}}),
                       y: axis("softmax(α)", {ticks: {callback: (v) => Number(v).toFixed(3)}})},
              plugins: {legend: {display: false},
                        tooltip: {callbacks: {title: (items) => "epoch " + items[0].raw.x,
                                              label: (item) => item.dataset.label + ": " + item.raw.y.toFixed(4)}}},
            },
          }));
        });
      });
    }

    let pending = null;
    function load() {
      if (pending) return pending;
      pending = fetch(opts.pointsUrl, {headers: {"Accept": "application/json"}}).then(function (response) {
        if (!response.ok) throw new Error("points.json answered " + response.status);
        return response.json();
      }).then(function (d) {
        // Filled into fresh arrays, handed to the charts once: pushed one by one into arrays a chart already
        // watches, each push would lay out its new point on its own.
        rows.clear();
        Object.values(series).forEach(function (s) { s.points = []; s.at.clear(); });
        d.number.forEach(function (n, i) {
          upsert({number: n, val_acc: d.val_acc[i], params: d.params[i], flops: d.flops[i],
                  finished_s: d.finished_s[i], distance: d.distance[i], arch: d.arch[i]});
        });
        Object.keys(series).forEach(function (name) {
          charts[name].data.datasets[0].data = series[name].points;
          series[name].dirty = true;
        });
        alphas(d.search_epochs || []);
        redraw();
      }).catch(function (e) {
        console.warn("charts not loaded:", e);  // the page works without them; the next reload tries again
      }).finally(function () { pending = null; });
      return pending;
    }

    const view = {
      charts: charts,
      alphaCharts: () => alphaCharts,
      add: function (newRows) { newRows.forEach(upsert); schedule(); },
      reload: load,
    };
    view.ready = load();
    return view;
  }

  // An epoch axis ticks at whole epochs only (a single epoch's axis runs from 0.5 to 1.5).
  function wholeEpochs(scale) {
    scale.ticks = scale.ticks.filter((t) => Number.isInteger(t.value));
  }

  function learningCurve(canvas, curves) {
    const epochs = Math.max(curves.val_acc.length, curves.train_loss.length);
    // An epoch whose loss is unknown (trained before checkpoints kept it) is left out rather than drawn at 0.
    const series = (values) => values.map((v, i) => ({x: i + 1, y: v})).filter((p) => p.y !== null);
    const pad = epochs > 1 ? 0 : 0.5;  // a single epoch is a point in the middle, not on the chart's edge
    return new Chart(canvas, {
      type: "line",
      data: {datasets: [
        {label: "validation accuracy (%)", data: series(curves.val_acc), yAxisID: "acc", borderColor: "#2f6fde",
         backgroundColor: "#2f6fde", borderWidth: 2, pointRadius: epochs > 50 ? 0 : 3},
        {label: "training loss (mean over the epoch)", data: series(curves.train_loss), yAxisID: "loss",
         borderColor: "#d9480f", backgroundColor: "#d9480f", borderWidth: 2, pointRadius: epochs > 50 ? 0 : 3},
      ]},
      options: {
        animation: false, parsing: false, responsive: true, maintainAspectRatio: false, spanGaps: false,
        interaction: {mode: "index", intersect: false},
        scales: {
          x: axis("epoch", {type: "linear", min: 1 - pad, max: Math.max(1, epochs) + pad, ticks: {precision: 0},
                            afterBuildTicks: wholeEpochs}),
          acc: axis("validation accuracy (%)", {position: "left",
                                                ticks: {callback: (v) => (100 * v).toFixed(1) + "%"}}),
          loss: axis("training loss", {position: "right", grid: {drawOnChartArea: false}}),
        },
        plugins: {
          legend: {position: "bottom", labels: {boxWidth: 12}},
          tooltip: {callbacks: {
            title: (items) => "epoch " + items[0].raw.x,
            label: (item) => item.dataset.yAxisID === "acc"
              ? "validation accuracy: " + (100 * item.raw.y).toFixed(2) + "%"
              : "training loss: " + item.raw.y.toFixed(4),
          }},
        },
      },
    });
  }

  window.NasCharts = {mount: mount, learningCurve: learningCurve, bestSoFar: bestSoFar, paretoFront: paretoFront};
})();
