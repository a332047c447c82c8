// Click to segment: prompts are kept here and sent whole on every change; the server keeps the embeddings.
"use strict";
const $ = (id) => document.getElementById(id);
const img = $("photo-img"), maskLayer = $("mask-layer"), promptLayer = $("prompt-layer");
const state = { info: null, width: 0, height: 0, name: "", prompts: [], seq: 0, shown: 0, drag: null };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text) { $("status").textContent = text; }

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body;
  try { body = await response.json(); } catch (e) { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok || body.error) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showTimings(t, cached) {
  for (const k of ["preprocess", "encoder", "decoder", "postprocess"]) {
    const v = t[k];
    $(`t-${k}`).textContent = v === undefined ? "–" : v.toFixed(1) + (k === "encoder" && cached ? " (reused)" : "");
  }
}

function variant() { return state.info.variants.find((v) => v.id === $("variant").value); }

function showVariant() {
  const v = variant();
  const opts = (c) => Object.entries(v.options[c] || {}).map(([k, x]) => `${k} ${x}`).join(", ") || "defaults";
  $("variant-info").textContent = `encoder ${v.encoder} (${opts("encoder")}) · decoder ${v.decoder} ` +
    `(${opts("decoder")}) · masks upsampled ${v.upsample === "fp32" ? "in fp32 outside the graph" : "in the graph"}` +
    ` · parity ${v.parity}`;
}

async function loadImage(query, body, src, name) {
  setStatus("encoding…");
  document.body.dataset.busy = "1";
  try {
    const r = await api(`/api/image?${query}&variant=${encodeURIComponent($("variant").value)}`,
      { method: "POST", body });
    await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = src; });
    Object.assign(state, { width: r.width, height: r.height, name, prompts: [] });
    for (const c of [maskLayer, promptLayer]) { c.width = r.width; c.height = r.height; }
    showError("");
    showTimings(r.timings_ms, false);
    $("mask-info").textContent = "";
    $("download").classList.add("disabled");
    drawPrompts();
    setStatus(`${name}: ${r.width}×${r.height}, encoded; click on it`);
    document.body.dataset.image = name;
  } catch (e) {
    showError(e.message);
    setStatus(state.name ? `still showing ${state.name}` : "no image");
  } finally {
    delete document.body.dataset.busy;
  }
}

function loadPhoto(name) {
  return loadImage(`photo=${encodeURIComponent(name)}`, null, `/api/photo/${encodeURIComponent(name)}`, name);
}

function loadUpload(file) {
  return loadImage(`filename=${encodeURIComponent(file.name)}`, file, URL.createObjectURL(file), file.name);
}

function radius() { return Math.max(4, 7 * state.width / promptLayer.getBoundingClientRect().width); }

function drawPrompts(extraBox) {
  const ctx = promptLayer.getContext("2d");
  ctx.clearRect(0, 0, promptLayer.width, promptLayer.height);
  const r = radius();
  ctx.lineWidth = r / 2.5;
  for (const p of state.prompts) {
    if (p.box) {
      ctx.strokeStyle = "#ffd700";
      ctx.strokeRect(p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]);
    } else {
      ctx.beginPath();
      ctx.arc(p.x, p.y, r, 0, 2 * Math.PI);
      ctx.fillStyle = p.label ? "#00c800" : "#dc0000";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }
  if (extraBox) {
    ctx.setLineDash([r, r / 2]);
    ctx.strokeStyle = "#ffd700";
    ctx.strokeRect(extraBox[0], extraBox[1], extraBox[2] - extraBox[0], extraBox[3] - extraBox[1]);
    ctx.setLineDash([]);
  }
  const n = state.prompts.filter((p) => !p.box).length, box = state.prompts.some((p) => p.box);
  $("prompt-info").textContent = `${n} point${n === 1 ? "" : "s"}${box ? " and a box" : ""}`;
}

async function predict() {
  drawPrompts();
  const seq = ++state.seq;
  if (!state.prompts.length) {
    maskLayer.getContext("2d").clearRect(0, 0, maskLayer.width, maskLayer.height);
    maskLayer.dataset.seq = String(seq);
    $("mask-info").textContent = "";
    return;
  }
  const points = state.prompts.filter((p) => !p.box).map((p) => [p.x, p.y, p.label]);
  const boxes = state.prompts.filter((p) => p.box);
  setStatus("segmenting…");
  try {
    const request = JSON.stringify({ variant: $("variant").value, points, box: boxes.length ? boxes.at(-1).box : null });
    const r = await api("/api/predict", { method: "POST", headers: { "Content-Type": "application/json" },
      body: request });
    if (seq < state.shown) return; // an older answer arriving late
    const overlay = new Image();
    await new Promise((resolve) => { overlay.onload = resolve; overlay.src = r.overlay; });
    if (seq < state.shown) return;
    state.shown = seq;
    const ctx = maskLayer.getContext("2d");
    ctx.clearRect(0, 0, maskLayer.width, maskLayer.height);
    ctx.drawImage(overlay, 0, 0);
    maskLayer.dataset.seq = String(seq);
    maskLayer.dataset.variant = r.variant;
    maskLayer.dataset.request = request; // the prompt this mask answers, in image pixels
    showError("");
    showTimings(r.timings_ms, r.encoder_cached);
    $("mask-info").textContent = `mask: ${(100 * r.mask_fraction).toFixed(1)}% of the image, ` +
      `predicted IoU ${r.iou_prediction.toFixed(3)}`;
    $("download").href = `/api/mask.png?seq=${seq}`;
    $("download").classList.remove("disabled");
    setStatus(`${state.name}: mask for ${points.length} point(s)${boxes.length ? " and a box" : ""}`);
  } catch (e) {
    showError(e.message);
    setStatus("the last prompt failed");
  }
}

function imagePoint(event) {
  const rect = promptLayer.getBoundingClientRect();
  const x = (event.clientX - rect.left) * state.width / rect.width;
  const y = (event.clientY - rect.top) * state.height / rect.height;
  return [Math.min(Math.max(x, 0), state.width - 1), Math.min(Math.max(y, 0), state.height - 1)];
}

promptLayer.addEventListener("contextmenu", (e) => e.preventDefault());
promptLayer.addEventListener("mousedown", (e) => {
  if (!state.width) return;
  state.drag = { start: imagePoint(e), x: e.clientX, y: e.clientY, button: e.button, shift: e.shiftKey };
});
promptLayer.addEventListener("mousemove", (e) => {
  const d = state.drag;
  if (d && d.button === 0 && Math.hypot(e.clientX - d.x, e.clientY - d.y) > 5) {
    const [x, y] = imagePoint(e);
    drawPrompts([Math.min(d.start[0], x), Math.min(d.start[1], y), Math.max(d.start[0], x), Math.max(d.start[1], y)]);
  }
});
window.addEventListener("mouseup", (e) => {
  const d = state.drag;
  state.drag = null;
  if (!d) return;
  const [x, y] = imagePoint(e);
  if (d.button === 0 && Math.hypot(e.clientX - d.x, e.clientY - d.y) > 5) {
    state.prompts = state.prompts.filter((p) => !p.box); // one box at a time, as SAM takes it
    state.prompts.push({ box: [Math.min(d.start[0], x), Math.min(d.start[1], y), Math.max(d.start[0], x),
      Math.max(d.start[1], y)] });
  } else if (d.button === 0 || d.button === 2) {
    state.prompts.push({ x: d.start[0], y: d.start[1], label: d.button === 2 || d.shift ? 0 : 1 });
  } else return;
  predict();
});

$("undo").addEventListener("click", () => { state.prompts.pop(); predict(); });
$("clear").addEventListener("click", () => { state.prompts = []; predict(); });
$("photo").addEventListener("change", (e) => loadPhoto(e.target.value));
$("upload").addEventListener("change", (e) => { if (e.target.files.length) loadUpload(e.target.files[0]); });
$("variant").addEventListener("change", () => { showVariant(); if (state.prompts.length) predict(); });

async function init() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    showError(`cannot reach the demo server: ${e.message}`);
    return;
  }
  const info = state.info;
  $("model").textContent = `${info.model} · ${info.threads} thread${info.threads === 1 ? "" : "s"} · weights ${info.weights}`;
  if (info.random_weights) {
    $("weights-note").hidden = false;
    $("weights-note").textContent = `Seeded random weights (${info.weights}): the real ${info.model} architecture ` +
      "with no checkpoint, so the masks are not meaningful. Put the checkpoint where the model config says and " +
      "re-run `make all` for real masks.";
  }
  for (const p of info.photos) $("photo").add(new Option(p, p));
  for (const v of info.variants) $("variant").add(new Option(v.label, v.id));
  showVariant();
  await loadPhoto(info.photos[0]);
  document.body.dataset.ready = "1";
}

init();
