// vispipe web UI: line charts on canvas, live training (server-sent events),
// job polling, classify forms, LR preview, the network's layer graph and the TF.js
// page. No dependencies; user text is only ever inserted with textContent, or in
// the server's escaped layer-graph SVG, parsed as XML.
// The pages hold no script (their Content-Security-Policy allows none inline):
// each says what to run in <script type="application/json" id="page-data">, as
// {"function": [arguments...]}, and every POST carries the page's CSRF token.
"use strict";
(() => {
  const COLORS = { loss: "#1f6feb", val_loss: "#d97706", val_accuracy: "#2e7d32", accuracy: "#7c3aed", lr: "#c62828" };

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 1000 || a < 0.01 ? v.toExponential(1) : +v.toPrecision(3) + "";
  }

  function range(series, axis) {
    let lo = Infinity, hi = -Infinity;
    for (const s of series) if ((s.axis || "left") === axis) for (const [, y] of s.points) { if (y < lo) lo = y; if (y > hi) hi = y; }
    if (lo === Infinity) return null;
    if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 0.5; hi += Math.abs(hi) * 0.1 || 0.5; }
    return [Math.min(lo, 0), hi];
  }

  // series: [{name, color, points: [[x, y]...], axis: "left"|"right", dots}]
  function lineChart(canvas, series, opts = {}) {
    const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
    const pad = { l: 52, r: opts.right ? 48 : 12, t: 22, b: 26 };
    ctx.clearRect(0, 0, W, H);
    ctx.font = "11px system-ui, sans-serif";
    let x0 = Infinity, x1 = -Infinity;
    for (const s of series) for (const [x] of s.points) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); }
    if (x0 === Infinity) { ctx.fillStyle = "#5c6675"; ctx.fillText(opts.empty || "Waiting for data…", pad.l, H / 2); return; }
    if (opts.xmin !== undefined) x0 = Math.min(x0, opts.xmin);
    if (opts.xmax !== undefined) x1 = Math.max(x1, opts.xmax);
    if (x1 === x0) x1 = x0 + 1;
    const axes = { left: range(series, "left"), right: opts.right ? (opts.rightRange || range(series, "right")) : null };
    const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r);
    const Y = (y, axis) => { const [lo, hi] = axes[axis]; return H - pad.b - (y - lo) / (hi - lo) * (H - pad.t - pad.b); };
    ctx.strokeStyle = "#d8dde5"; ctx.fillStyle = "#5c6675"; ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const yy = pad.t + i * (H - pad.t - pad.b) / 4;
      ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(W - pad.r, yy); ctx.stroke();
      if (axes.left) { const [lo, hi] = axes.left; ctx.textAlign = "right"; ctx.fillText(fmt(hi - i * (hi - lo) / 4), pad.l - 4, yy + 4); }
      if (axes.right) { const [lo, hi] = axes.right; ctx.textAlign = "left"; ctx.fillText(fmt(hi - i * (hi - lo) / 4), W - pad.r + 4, yy + 4); }
    }
    ctx.textAlign = "center";
    for (let i = 0; i <= 5; i++) { const x = x0 + i * (x1 - x0) / 5; ctx.fillText(fmt(x), X(x), H - 8); }
    let lx = pad.l;
    for (const s of series) {
      const axis = s.axis || "left";
      if (!axes[axis] || !s.points.length) continue;
      ctx.strokeStyle = ctx.fillStyle = s.color; ctx.lineWidth = 2; ctx.beginPath();
      s.points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y, axis)) : ctx.moveTo(X(x), Y(y, axis))));
      ctx.stroke();
      // A single point draws no line: mark it so the first epoch shows at once.
      if (s.dots || s.points.length === 1) for (const [x, y] of s.points) { ctx.beginPath(); ctx.arc(X(x), Y(y, axis), 2.5, 0, 7); ctx.fill(); }
      ctx.textAlign = "left"; ctx.fillRect(lx, 6, 10, 10); ctx.fillStyle = "#1d2430"; ctx.fillText(s.name, lx + 14, 15);
      lx += ctx.measureText(s.name).width + 30;
    }
  }

  // A POST from this page: its session's CSRF token goes along (the server refuses it without).
  function post(url, body) {
    const token = document.querySelector('meta[name="csrf-token"]').content;
    return fetch(url, { method: "POST", body, headers: { "X-CSRF-Token": token } });
  }

  async function poll(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  function followJob(id, active) {
    if (!active) return;
    const timer = setInterval(async () => {
      const data = await poll(`/jobs/${id}/status`);
      document.getElementById("log").textContent = data.log;
      if (data.page) { clearInterval(timer); location.href = data.page; }
      else if (!["queued", "running"].includes(data.status)) { clearInterval(timer); location.reload(); }
      else { const s = document.querySelector("#job-status .badge"); s.textContent = data.status; s.className = "badge s-" + data.status; }
    }, 1500);
  }

  // Reloads the page once every listed background job (export, evaluate) has ended.
  function reloadWhenDone(ids) {
    if (!ids.length) return;
    const timer = setInterval(async () => {
      const states = await Promise.all(ids.map((id) => poll(`/jobs/${id}/status`)));
      if (states.every((s) => !["queued", "running"].includes(s.status))) { clearInterval(timer); location.reload(); }
    }, 1500);
  }

  function followRun(id, epochs, active) {
    const records = [];
    const lossCanvas = document.getElementById("chart-loss"), lrCanvas = document.getElementById("chart-lr");
    let pending = false;
    function draw() {
      pending = false;
      const steps = records.filter((r) => r.kind === "step"), ep = records.filter((r) => r.kind === "epoch");
      const pick = (rs, k) => rs.filter((r) => typeof r[k] === "number").map((r) => [r.epoch, r[k]]);
      lossCanvas.dataset.points = String(ep.length);
      lineChart(lossCanvas, [
        { name: "train loss", color: COLORS.loss, points: pick(steps.concat(ep).sort((a, b) => a.epoch - b.epoch), "loss") },
        { name: "val loss", color: COLORS.val_loss, points: pick(ep, "val_loss"), dots: true },
        { name: "val accuracy", color: COLORS.val_accuracy, points: pick(ep, "val_accuracy"), axis: "right", dots: true },
      ], { right: true, rightRange: [0, 1], xmin: 0, xmax: epochs || undefined });
      lineChart(lrCanvas, [{ name: "learning rate", color: COLORS.lr, points: pick(records, "lr") }], { xmin: 0, xmax: epochs || undefined });
      const last = records[records.length - 1];
      if (last && last.images_per_s) {
        const perEpoch = last.time / Math.max(last.epoch, 1e-9);
        const eta = epochs ? Math.max(0, (epochs - last.epoch) * perEpoch) : 0;
        document.getElementById("throughput").textContent =
          `Epoch ${last.epoch.toFixed(2)} of ${epochs} · ${Math.round(last.images_per_s)} images/s` + (active ? ` · ETA ${Math.round(eta)} s` : "");
      }
    }
    const es = new EventSource(`/runs/${id}/events`);
    es.addEventListener("metric", (e) => { records.push(JSON.parse(e.data)); if (!pending) { pending = true; requestAnimationFrame(draw); } });
    es.addEventListener("status", (e) => {
      const s = JSON.parse(e.data);
      const badge = document.querySelector("#run-status .badge");
      badge.textContent = s.status; badge.className = "badge s-" + s.status;
      if (s.log) document.getElementById("log").textContent = s.log;
      if (!["queued", "running"].includes(s.status)) { es.close(); if (active) setTimeout(() => location.reload(), 800); }
    });
    draw();
  }

  function showTop(target, title, top, extra) {
    target.replaceChildren();
    if (title) target.appendChild(el("h3", {}, title));
    const box = el("div", { class: "bars" });
    for (const [label, p] of top) {
      const row = el("div", { class: "bar" });
      row.appendChild(el("span", { class: "label" }, label));
      const track = el("div"); const fill = el("div", { class: "fill" }); fill.style.width = (100 * p).toFixed(1) + "%";
      track.appendChild(fill); row.appendChild(track); row.appendChild(el("span", {}, (100 * p).toFixed(1) + "%"));
      box.appendChild(row);
    }
    target.appendChild(box);
    if (extra) target.appendChild(el("p", { class: "muted" }, extra));
  }

  async function classifyBlob(url, blob, name, visualize, explain) {
    const data = new FormData();
    data.append("image", blob, name);
    if (visualize) data.append("visualize", "1");
    if (explain) data.append("explain", "1");
    const r = await post(url, data);
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || ("HTTP " + r.status));
    return body;
  }

  function classifyForm(form, url, out) {
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const file = form.querySelector("input[type=file]").files[0];
      if (!file) return;
      out.textContent = "Classifying…";
      try {
        const explain = form.querySelector("[name=explain]");
        const body = await classifyBlob(url, file, file.name, form.querySelector("[name=visualize]").checked,
                                        explain && explain.checked);
        if (body.error) { out.textContent = body.error; return; }
        showTop(out, "Top predictions for " + file.name, body.top, `${body.ms} ms` + (body.note ? " · " + body.note : ""));
        if (body.gradcam) {
          const fig = el("figure", { class: "gradcam" });
          if (body.gradcam.image) {
            fig.appendChild(el("img", { src: body.gradcam.image, id: "gradcam-image", alt: "Grad-CAM heat map over the image" }));
            fig.appendChild(el("figcaption", { class: "muted" }, `Where the model looks for "${body.top[0][0]}" (Grad-CAM at layer ${body.gradcam.layer})`));
          } else fig.appendChild(el("figcaption", { class: "muted" }, body.gradcam.error));
          out.appendChild(fig);
        }
        if (body.layers) {
          const t = el("table", { class: "list" }); const head = el("tr");
          for (const h of ["layer", "activation shape", "mean", "std", "params"]) head.appendChild(el("th", {}, h));
          t.appendChild(head);
          for (const l of body.layers) {
            const tr = el("tr");
            for (const v of [l.name, l.shape.join("x"), fmt(l.mean), fmt(l.std), String(l.params)]) tr.appendChild(el("td", {}, v));
            t.appendChild(tr);
          }
          out.appendChild(t);
        }
        out.dataset.top1 = body.top[0][0];
      } catch (err) { out.textContent = err.message; }
    });
  }

  function lrPreview(form, canvas) {
    async function update() {
      const q = new URLSearchParams();
      for (const input of form.querySelectorAll(".lr-input")) q.set(input.name, input.value);
      try {
        const data = await poll("/api/lr-preview?" + q);
        lineChart(canvas, [{ name: "learning rate", color: COLORS.lr, points: data.percent.map((x, i) => [x, data.lr[i]]) }], { xmin: 0, xmax: 100 });
        canvas.dataset.points = String(data.lr.length);  // Lets a page test know the preview is drawn.
        document.getElementById("lr-preview-note").textContent = "Learning rate over training (%)";
      } catch (err) { document.getElementById("lr-preview-note").textContent = "Cannot preview: " + err.message; }
    }
    form.querySelectorAll(".lr-input").forEach((i) => i.addEventListener("change", update));
    update();
  }

  // The server's layer-graph SVG (labels escaped there), parsed as XML rather than
  // HTML so nothing in it can become markup, in a box that scrolls both ways.
  function layerGraph(svgText) {
    const box = el("div", { class: "network-graph", id: "network-graph", tabindex: "0" });
    const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
    if (doc.documentElement.localName === "svg" && !doc.querySelector("parsererror")) box.appendChild(document.importNode(doc.documentElement, true));
    else box.appendChild(el("p", { class: "error" }, "Cannot draw the layer graph."));
    return box;
  }

  // The custom network's layers, built on the server without starting a job.
  function networkPreview(form, button, out) {
    const shape = (s) => (Array.isArray(s) ? "(" + s.map((d) => (d === null ? "None" : d)).join(", ") + ")" : String(s));
    button.addEventListener("click", async () => {
      const data = new FormData();
      data.set("custom_code", form.elements.custom_code.value);
      data.set("dataset", form.elements.dataset ? form.elements.dataset.value : "");
      out.replaceChildren(el("p", { class: "muted" }, "Building the network…"));
      button.disabled = true;
      try {
        const r = await post("/models/network-preview", data);
        const body = await r.json();
        if (!r.ok) { out.replaceChildren(el("p", { class: "error", role: "alert" }, Object.values(body.errors || {}).join("; ") || "HTTP " + r.status)); return; }
        const table = el("table", { class: "list", id: "network-layers" });
        const head = el("tr");
        for (const h of ["Layer", "Type", "Output shape", "Parameters", "Inputs"]) head.appendChild(el("th", {}, h));
        table.appendChild(el("thead")).appendChild(head);
        const rows = table.appendChild(el("tbody"));
        for (const l of body.layers) {
          const tr = el("tr");
          for (const v of [l.name, l.type, shape(l.output_shape), l.params.toLocaleString("en-US"), l.inputs.join(", ") || "-"]) tr.appendChild(el("td", {}, v));
          rows.appendChild(tr);
        }
        const view = el("div", { class: "network-view" });
        view.appendChild(layerGraph(body.graph_svg));
        view.appendChild(el("div", { class: "network-table" })).appendChild(table);
        out.replaceChildren(el("p", {}, `${body.layers.length} layers, ${body.total_params.toLocaleString("en-US")} parameters (${body.trainable_params.toLocaleString("en-US")} trainable); built for ${body.built_for}.`), view);
        out.dataset.params = String(body.total_params);
      } catch (err) { out.replaceChildren(el("p", { class: "error" }, err.message)); }
      finally { button.disabled = false; }
    });
  }

  // Probabilities of both sides, class by class, and the largest difference.
  function showComparison(target, labels, browser, server) {
    const table = el("table", { class: "list" }), head = el("tr");
    for (const h of ["Class", "Browser", "Server", "Difference"]) head.appendChild(el("th", {}, h));
    table.appendChild(el("thead")).appendChild(head);
    const body = table.appendChild(el("tbody"));
    let largest = 0;
    browser.forEach((p, i) => {
      const q = server[i], d = Math.abs(p - q);
      largest = Math.max(largest, d);
      const tr = el("tr");
      for (const v of [labels[i], (100 * p).toFixed(3) + "%", (100 * q).toFixed(3) + "%", (100 * d).toFixed(3) + "%"]) tr.appendChild(el("td", {}, v));
      body.appendChild(tr);
    });
    const box = el("div", { class: "scroll" }); box.appendChild(table);
    target.replaceChildren(el("h3", {}, "All probabilities"), el("p", { class: "muted" }, `Largest difference: ${(100 * largest).toFixed(3)} percentage points`), box);
    target.dataset.maxDiff = String(largest);
  }

  // Browser and server classify the same pixels: an uploaded file as decoded at
  // its own size (the server gets the file's bytes), a drawing scaled to the
  // model's input size (the server gets that as a PNG), so neither side resizes it.
  function tfjsPage(base, serverUrl) {
    const canvas = document.getElementById("draw"), ctx = canvas.getContext("2d");
    const browserOut = document.getElementById("browser-result"), serverOut = document.getElementById("server-result");
    const compareOut = document.getElementById("compare");
    let model = null, meta = null, upload = null;  // upload: {file, image} of the chosen file.
    function clear() { upload = null; ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
    clear();
    async function load() {
      const variant = document.getElementById("variant").value;
      browserOut.textContent = "Loading model…";
      model = await tf.loadGraphModel(base + variant + "/model.json");
      meta = (model.metadata && model.metadata.vispipe) || {};
      browserOut.textContent = `Model loaded (${variant}, backend ${tf.getBackend()}).`;
      document.body.dataset.modelReady = "1";
    }
    // The upload at its own size, composited on white as the server does.
    function uploadPixels() {
      const { image } = upload, flat = document.createElement("canvas");
      flat.width = image.naturalWidth; flat.height = image.naturalHeight;
      const c = flat.getContext("2d");
      c.fillStyle = "#fff"; c.fillRect(0, 0, flat.width, flat.height); c.drawImage(image, 0, 0);
      return flat;
    }
    function inputTensor(source, channels) {
      return tf.tidy(() => {
        const rgb = tf.browser.fromPixels(source, 3);
        // Pillow's RGB->L: (19595 R + 38470 G + 7471 B + 2^15) >> 16.
        const pixels = channels === 1 ? rgb.mul(tf.tensor1d([19595, 38470, 7471], "int32")).sum(-1, true).add(32768).floorDiv(65536) : rgb;
        return pixels.expandDims(0);
      });
    }
    function drawingPixels() {
      const [, height, width] = (meta.input && meta.input.shape) || [];
      if (!height || !width) return canvas;
      const small = document.createElement("canvas");
      small.width = width; small.height = height;
      const c = small.getContext("2d");
      c.imageSmoothingQuality = "high"; c.drawImage(canvas, 0, 0, width, height);
      return small;
    }
    function serverBlob(source) {
      if (upload) return Promise.resolve([upload.file, upload.file.name]);
      return new Promise((resolve) => source.toBlob((blob) => resolve([blob, "canvas.png"]), "image/png"));
    }
    async function predict() {
      if (!model) return;
      const channels = meta.input ? meta.input.shape[3] : 1;
      const labels = meta.labels || [];
      const source = upload ? uploadPixels() : drawingPixels();
      const input = inputTensor(source, channels);
      const sig = model.executor && model.executor._signature;
      const outName = sig && sig.outputs && sig.outputs.probabilities ? sig.outputs.probabilities.name : undefined;
      const inName = sig && sig.inputs && sig.inputs.images ? sig.inputs.images.name : model.inputs[0].name;
      let out = await model.executeAsync({ [inName]: input }, outName);
      if (Array.isArray(out)) out = out[0];
      const probs = Array.from(await out.data());
      tf.dispose([input, out]);
      const names = probs.map((_, i) => (labels[i] !== undefined ? String(labels[i]) : String(i)));
      const top = probs.map((p, i) => [names[i], p]).sort((a, b) => b[1] - a[1]).slice(0, 5);
      showTop(browserOut, "", top);
      browserOut.dataset.top1 = top[0][0];
      compareOut.replaceChildren();
      if (!serverUrl) return;
      try {
        const [blob, name] = await serverBlob(source);
        const data = new FormData();
        data.append("image", blob, name);
        data.append("top", String(probs.length));
        const r = await post(serverUrl, data);
        const body = await r.json();
        if (!r.ok) throw new Error(body.detail || ("HTTP " + r.status));
        if (body.error) throw new Error(body.error);
        showTop(serverOut, "", body.top.slice(0, 5), `${body.ms} ms on the server` + (body.note ? " · " + body.note : ""));
        serverOut.dataset.top1 = body.top[0][0];
        const byName = new Map(body.top);
        showComparison(compareOut, names, probs, names.map((n) => byName.get(n) || 0));
        const [, height, width] = (meta.input && meta.input.shape) || [];
        if (upload && height && (source.width !== width || source.height !== height)) {
          compareOut.appendChild(el("p", { class: "muted" }, `The image is ${source.width}x${source.height} and the model takes ${width}x${height}: ` +
            "TF.js resizes it bilinearly inside the graph and the server as the dataset was made, so the lists may differ slightly."));
        }
      } catch (err) { serverOut.textContent = err.message; }
    }
    let drawing = false;
    const pos = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; };
    canvas.addEventListener("pointerdown", (e) => {
      if (upload) clear();  // Drawing starts over on a blank canvas.
      drawing = true; const [x, y] = pos(e); ctx.beginPath(); ctx.moveTo(x, y);
    });
    canvas.addEventListener("pointermove", (e) => { if (!drawing) return; const [x, y] = pos(e); ctx.strokeStyle = "#fff"; ctx.lineWidth = 16; ctx.lineCap = "round"; ctx.lineTo(x, y); ctx.stroke(); });
    window.addEventListener("pointerup", () => { if (drawing) { drawing = false; predict(); } });
    document.getElementById("clear").addEventListener("click", clear);
    document.getElementById("predict").addEventListener("click", predict);
    document.getElementById("variant").addEventListener("change", () => load().then(predict));
    document.getElementById("tfjs-file").addEventListener("change", (e) => {
      const file = e.target.files[0]; if (!file) return;
      if (upload) URL.revokeObjectURL(upload.image.src);
      const image = new Image();
      image.onload = () => {
        clear(); ctx.drawImage(image, 0, 0, canvas.width, canvas.height);  // Shown scaled; classified at its own size.
        upload = { file, image }; predict();
      };
      image.src = URL.createObjectURL(file);
    });
    load().catch((err) => { browserOut.textContent = "Cannot load the model: " + err.message; });
  }

  // Confusion-matrix cells shaded by their share of the row (data-share, 0 to 1).
  function shadeShares(tableId) {
    const table = document.getElementById(tableId);
    if (!table) return;
    for (const td of table.querySelectorAll("td[data-share]")) td.style.background = `rgba(31, 111, 235, ${(0.85 * td.dataset.share).toFixed(2)})`;
  }

  // The compare page: one chart per metric, one line per model (its colour), and
  // the colour swatches of the table headers.
  function compareRuns(runs, canvases) {
    for (const [metric, id] of Object.entries(canvases)) {
      const series = runs.map((r) => ({ name: r.name, color: r.color, points: r.curves[metric] || [] }));
      lineChart(byId(id), series, { empty: "No " + metric.replace("_", " ") + " recorded." });
    }
    for (const swatch of document.querySelectorAll(".swatch[data-color]")) swatch.style.background = swatch.dataset.color;
  }

  // What a page may ask for in its page data; ids are looked up here.
  const byId = (id) => document.getElementById(id);
  const PAGE_FUNCTIONS = {
    followJob, reloadWhenDone, followRun, tfjsPage, shadeShares, compareRuns,
    classifyForm: (formId, url, outId) => classifyForm(byId(formId), url, byId(outId)),
    lrPreview: (formId, canvasId) => lrPreview(byId(formId), byId(canvasId)),
    networkPreview: (formId, buttonId, outId) => networkPreview(byId(formId), byId(buttonId), byId(outId)),
    reloadAfter: (ms) => setTimeout(() => location.reload(), ms),
  };

  function start() {
    const data = JSON.parse(byId("page-data").textContent);
    for (const [name, args] of Object.entries(data)) PAGE_FUNCTIONS[name](...args);
    document.addEventListener("submit", (e) => {
      const question = e.target.dataset.confirm;
      if (question && !confirm(question)) e.preventDefault();
    });
    document.addEventListener("click", (e) => {
      if (e.target.closest("[data-back]") && history.length > 1) { e.preventDefault(); history.back(); }
    });
  }

  start();
})();
