// The try-it page. Same-origin only: GET /v1/models for the models and limits, POST /upscale for the result.
// No framework, no build step. <body data-state> is loading | key | ready | busy | done | error (tests wait
// on it; "key": the server answered 401, the page asks for an API key).

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("form"), drop: $("drop"), file: $("file"), fileInfo: $("file-info"), limits: $("limits"),
  custom: $("scale-custom"), customChoice: $("scale-custom-choice"), scaleHint: $("scale-hint"),
  model: $("model"), modelInfo: $("model-info"), ensembleRow: $("ensemble-row"), ensemble: $("ensemble"),
  ensembleInfo: $("ensemble-info"), go: $("go"), status: $("status"), error: $("error"),
  result: $("result"), split: $("split"), zoom: $("zoom"), pixels: $("pixels"), viewport: $("viewport"),
  stage: $("stage"), before: $("before"), after: $("after"), divider: $("divider"),
  resultInfo: $("result-info"), download: $("download"),
  timingNames: document.querySelector("#timings thead tr"), timingValues: document.querySelector("#timings tbody tr"),
  keyForm: $("key-form"), apiKey: $("api-key"), keyInfo: $("key-info"),
};

const state = {
  models: [], limits: null, file: null, size: null, // size: {width, height} when the browser decoded it
  inputUrl: null, outputUrl: null, output: null, busy: false,
};

// ---- formatting ---------------------------------------------------------------------------------------
const trim = (x, digits = 2) => String(Number(x.toFixed(digits)));
const megapixels = (n) => `${trim(n / 1e6)} megapixel${n === 1e6 ? "" : "s"}`;
const bytes = (n) => (n >= 1024 * 1024 ? `${trim(n / 1048576, 1)} MB` : `${trim(n / 1024, 1)} KB`);
const dims = (w, h) => `${w}×${h}`;
const capitalise = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);
const sentence = (s) => capitalise(s).replace(/([^.!?])$/, "$1.");

function setState(name) { document.body.dataset.state = name; }

function showError(message, requestId) {
  ui.error.replaceChildren();
  const p = document.createElement("p");
  p.textContent = message;
  ui.error.append(p);
  if (requestId) {
    const small = document.createElement("p");
    small.className = "request-id";
    small.textContent = `Request id: ${requestId}`;
    ui.error.append(small);
  }
  ui.error.hidden = false;
  ui.status.textContent = "";
  setState("error");
}

function clearError() { ui.error.hidden = true; ui.error.replaceChildren(); }

// ---- the API key, for a server that asks for one (401) --------------------------------------------------
// Kept in sessionStorage at most (this tab, until it closes), never in the page's URL or localStorage.
const KEY_ITEM = "drrn-api-key";
function storedKey() { try { return sessionStorage.getItem(KEY_ITEM) || ""; } catch { return ""; } }
function storeKey(key) { try { sessionStorage.setItem(KEY_ITEM, key); } catch { /* storage off: this page only */ } }
state.apiKey = storedKey();
const authHeaders = () => (state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {});

function askForKey(message) {
  ui.keyForm.hidden = false;
  ui.keyInfo.textContent = message;
  ui.apiKey.focus();
}

// ---- the server's models and limits -------------------------------------------------------------------
function qualityText(model, scales = ["2", "3", "4"], short = false) {
  // card "quality": {"results": {"Set5": {"2": {"psnr": 36.7, "ssim": ...}, ...}, ...}} (the drrn eval
  // table); Set5 when measured, else the first set.
  const results = (model.quality && model.quality.results) || {};
  const name = results.Set5 ? "Set5" : Object.keys(results)[0];
  const cells = scales.filter((s) => name && results[name][s] && results[name][s].psnr != null)
    .map((s) => `×${s} ${trim(results[name][s].psnr)}`);
  if (!cells.length) return "quality not measured";
  return short ? `${cells.join(" / ")} dB` : `${name} PSNR ${cells.join(" / ")} dB`;
}

function costText(model) {
  return model.mflop_per_pixel != null ? `${trim(model.mflop_per_pixel)} MFLOP per output pixel` : "";
}

async function loadModels() {
  let response;
  try {
    response = await fetch("v1/models", { headers: { Accept: "application/json", ...authHeaders() } });
  } catch {
    showError("Could not reach the server to list its models. Check that it is running, then reload.");
    return;
  }
  if (response.status === 401) {
    ui.limits.textContent = "This server asks for an API key before it lists its models.";
    askForKey(state.apiKey ? "The server did not accept this API key. Check it and enter it again."
      : "This server asks for an API key. It stays in this browser tab only and is sent with each request.");
    setState("key");
    return;
  }
  ui.keyForm.hidden = true;
  if (response.status === 503) { // warming up or draining: it says when to ask again
    const retry = Number(response.headers.get("Retry-After")) || 2;
    ui.limits.textContent = `The server is not ready yet (HTTP ${response.status}); trying again in ${retry} s…`;
    setTimeout(loadModels, retry * 1000);
    return;
  }
  let listing = null;
  try { listing = response.ok ? await response.json() : null; } catch { /* not JSON: a proxy's page */ }
  if (!listing || !Array.isArray(listing.models) || !listing.models.length) {
    showError(`The server did not list its models (HTTP ${response.status}). Check its address, then reload.`);
    return;
  }
  state.models = listing.models;
  state.limits = listing.models[0].limits;
  ui.model.replaceChildren(...listing.models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    const cost = m.mflop_per_pixel != null ? `${trim(m.mflop_per_pixel)} MFLOP/px, ` : "";
    option.textContent = `${m.name} — ${cost}${qualityText(m, ["2"], true)}`;
    option.selected = m.name === listing.default;
    return option;
  }));
  const L = state.limits;
  ui.limits.textContent = `This server accepts files up to ${bytes(L.max_upload_bytes)} and images up to `
    + `${megapixels(L.max_input_pixels)}, and makes results up to ${megapixels(L.max_output_pixels)}.`;
  ui.custom.max = String(L.max_scale);
  ui.scaleHint.textContent = `Any factor above 1, up to ×${trim(L.max_scale)}.`;
  if (L.max_ensemble_output_pixels > 0) {
    ui.ensembleRow.hidden = false;
    ui.ensembleInfo.textContent = "Runs the model on the 8 flips and rotations and averages them: a little "
      + `sharper, 8× the work. Results up to ${megapixels(L.max_ensemble_output_pixels)}.`;
  }
  ui.model.disabled = false;
  describeModel();
  updateButton();
  setState("ready");
}

function selectedModel() { return state.models.find((m) => m.name === ui.model.value); }

function describeModel() {
  const m = selectedModel();
  if (!m) return;
  const parts = [costText(m), qualityText(m)];
  if (m.architecture) parts.unshift(m.architecture);
  if (m.default) parts.unshift("the server's default");
  ui.modelInfo.textContent = parts.filter(Boolean).join(" · ");
}

// ---- choosing a file and checking it against the limits -----------------------------------------------
async function decodedSize(file) {
  // The browser's own decoder; null when it cannot read the file (e.g. TIFF): the server then decides.
  try {
    const bitmap = await createImageBitmap(file);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return size;
  } catch {
    return null;
  }
}

function fileProblem(file, size) {
  const L = state.limits;
  if (!L) return null;
  if (file.size > L.max_upload_bytes) {
    return `The file is ${bytes(file.size)}; this server accepts at most ${bytes(L.max_upload_bytes)}.`;
  }
  if (size && size.width * size.height > L.max_input_pixels) {
    return `The image is ${dims(size.width, size.height)}; this server accepts at most `
      + `${megapixels(L.max_input_pixels)}.`;
  }
  return null;
}

let picks = 0; // counts file choices, so a slow decode of an earlier one cannot overwrite a later one

async function chooseFile(file) {
  if (!file || state.busy) return;
  const pick = ++picks;
  clearError();
  ui.result.hidden = true; // the result shown belongs to the previous file
  ui.after.onload = null; // ... and one still loading must not show itself over the new file
  state.file = null; // Upscale waits for this file: until it is measured, no file is ready to send
  updateButton();
  const size = await decodedSize(file);
  if (pick !== picks) return; // another file was chosen while this one was being measured
  state.file = file;
  state.size = size;
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  const what = state.size ? `${dims(state.size.width, state.size.height)}, ` : "";
  ui.fileInfo.textContent = `${file.name} (${what}${bytes(file.size)})`;
  const problem = fileProblem(file, state.size);
  if (problem) showError(problem);
  else setState("ready");
  updateButton();
}

function scaleValue() {
  const choice = ui.form.elements.scale.value;
  return choice === "custom" ? Number(ui.custom.value) : Number(choice);
}

function requestProblem(scale) {
  const L = state.limits;
  if (!(scale > 1) || scale > L.max_scale) {
    return `The scale must be above 1 and at most ${trim(L.max_scale)}; ${ui.custom.value || "nothing"} is not.`;
  }
  const problem = fileProblem(state.file, state.size);
  if (problem || !state.size) return problem;
  const w = Math.ceil(state.size.width * scale), h = Math.ceil(state.size.height * scale);
  const ensemble = ui.ensemble.checked && !ui.ensembleRow.hidden;
  const max = ensemble ? L.max_ensemble_output_pixels : L.max_output_pixels;
  if (w * h > max) {
    return `At ×${trim(scale)} the result would be ${dims(w, h)} (${megapixels(w * h)}); this server makes at `
      + `most ${megapixels(max)}${ensemble ? " with the ×8 ensemble" : ""}. Choose a smaller scale.`;
  }
  return null;
}

function updateButton() {
  ui.go.disabled = state.busy || !state.file || !state.limits;
}

// ---- the request --------------------------------------------------------------------------------------
function serverErrorText(status, body, retryAfter) {
  // Plain words from the JSON error body {error, detail, limit}; never the raw response.
  const code = body && body.error, detail = body && body.detail, limit = (body && body.limit) || {};
  const s = state.size;
  switch (code) {
    case "input_too_large":
      return s ? `The image is ${dims(s.width, s.height)}; this server accepts at most ${megapixels(limit.value)}.`
        : `The image is too large; this server accepts at most ${megapixels(limit.value)}.`;
    case "upload_too_large":
      return `The file is ${bytes(state.file.size)}; this server accepts at most ${bytes(limit.value)}.`;
    case "unsupported_format":
      return `The server cannot read this file: ${detail}.`;
    case "corrupt_image":
    case "empty_body":
      return sentence(detail);
    case "unauthorized":
      return "The server did not accept the API key. Enter it again above.";
    case "quota_exceeded":
      return "This API key has as many requests running as the server allows. Try again when one has finished.";
    case "queue_full":
    case "overloaded":
    case "backlog":
    case "not_ready":
    case "shutting_down": {
      const wait = Number(retryAfter);
      return wait > 0 ? `The server is busy right now. Please try again in ${wait} s.`
        : "The server is busy right now. Please try again in a few seconds.";
    }
    case "deadline_exceeded":
      return `The server could not finish within ${limit.value} s. Try a smaller image or a smaller scale.`;
    default:
      if (detail) return sentence(detail);
      return `The server could not upscale this image (HTTP ${status}).`;
  }
}

function downloadName(file, scale, model, ensemble) {
  const stem = (file.name.replace(/\.[^.]*$/, "") || "image").replace(/[^\w.-]+/g, "_");
  return `${stem}_x${trim(scale)}_${model}${ensemble ? "_ensemble8" : ""}.png`;
}

async function upscale(event) {
  event.preventDefault();
  if (state.busy || !state.file) return;
  clearError();
  const scale = scaleValue();
  const problem = requestProblem(scale);
  if (problem) { showError(problem); return; }
  const model = ui.model.value;
  const ensemble = ui.ensemble.checked && !ui.ensembleRow.hidden;
  const query = new URLSearchParams({ scale: String(scale), model });
  if (ensemble) query.set("ensemble", "8");
  setBusy(true);
  try {
    const response = await fetch(`upscale?${query}`, {
      method: "POST",
      // The server reads the format from the bytes; a file the OS calls text/plain is sent as bytes too.
      headers: {
        "Content-Type": state.file.type.startsWith("image/") ? state.file.type : "application/octet-stream",
        ...authHeaders(),
      },
      body: state.file,
    });
    const requestId = response.headers.get("X-Request-ID");
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch { /* not JSON (a proxy page): say the status only */ }
      showError(serverErrorText(response.status, body, response.headers.get("Retry-After")), requestId);
      if (response.status === 401) askForKey("The server did not accept this API key. Check it and enter it again.");
      return;
    }
    const blob = await response.blob();
    showResult(blob, { scale, model, ensemble, requestId, timing: response.headers.get("Server-Timing") });
  } catch (err) {
    showError(`The request did not complete (${err.message}). Check that the server is reachable.`);
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  state.busy = busy;
  ui.form.setAttribute("aria-busy", String(busy));
  for (const el of ui.form.querySelectorAll("input, select")) el.disabled = busy;
  ui.custom.disabled = busy || !ui.customChoice.checked;
  ui.go.textContent = busy ? "Upscaling…" : "Upscale";
  ui.go.classList.toggle("busy", busy);
  if (busy) { ui.status.textContent = "Uploading and upscaling…"; setState("busy"); }
  updateButton();
}

// ---- the result ---------------------------------------------------------------------------------------
function parseServerTiming(header) {
  // "read;dur=1.2, decode;dur=3.4, ..." -> [["read", 1.2], ...]
  return (header || "").split(",").map((part) => {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim().split("=")).find(([k]) => k === "dur");
    return [name, dur ? Number(dur[1]) : null];
  }).filter(([name, dur]) => name && dur != null);
}

function showResult(blob, facts) {
  if (state.outputUrl) URL.revokeObjectURL(state.outputUrl);
  state.outputUrl = URL.createObjectURL(blob);
  ui.after.onerror = () => showError("The server's answer could not be shown as an image. Please try again.");
  ui.after.onload = () => {
    state.output = { width: ui.after.naturalWidth, height: ui.after.naturalHeight };
    const input = state.size ? `${dims(state.size.width, state.size.height)} → ` : "";
    ui.resultInfo.textContent = `${input}${dims(state.output.width, state.output.height)} with ${facts.model}`
      + ` at ×${trim(facts.scale)}${facts.ensemble ? " (×8 ensemble)" : ""}, ${bytes(blob.size)} PNG.`;
    ui.result.hidden = false;
    layout();
    ui.status.textContent = "Done: the result beside the original.";
    setState("done");
  };
  ui.before.src = state.inputUrl;
  ui.after.src = state.outputUrl;
  ui.download.href = state.outputUrl;
  ui.download.download = downloadName(state.file, facts.scale, facts.model, facts.ensemble);
  ui.download.dataset.model = facts.model;
  const stages = parseServerTiming(facts.timing);
  const cell = (tag, text, scope) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (scope) el.scope = scope;
    return el;
  };
  ui.timingNames.replaceChildren(cell("th", "stage", "row"), ...stages.map(([name]) => cell("th", name, "col")));
  ui.timingValues.replaceChildren(cell("th", "ms", "row"), ...stages.map(([, ms]) => cell("td", ms.toFixed(1))));
}

function layout() {
  if (!state.output) return;
  const { width, height } = state.output;
  const zoom = ui.zoom.value;
  const st = ui.stage.style;
  if (zoom === "fit") { // the whole picture in view: as wide as the box, no taller than the viewport's cap
    st.setProperty("width", `min(100%, calc(68vh * ${width / height}))`);
  } else {
    st.setProperty("width", `${(width * Number(zoom)) / window.devicePixelRatio}px`);
  }
  st.setProperty("aspect-ratio", `${width} / ${height}`);
  ui.stage.classList.toggle("pixelated", ui.pixels.checked);
  setSplit(Number(ui.split.value));
}

function setSplit(percent) {
  ui.after.style.setProperty("clip-path", `inset(0 0 0 ${percent}%)`);
  ui.divider.style.setProperty("left", `${percent}%`);
  ui.split.setAttribute("aria-valuetext", `${percent}% original, ${100 - percent}% upscaled`);
}

// Dragging on the picture moves the divider too (the range input is the keyboard way).
function splitFromPointer(event) {
  const box = ui.stage.getBoundingClientRect();
  const percent = Math.round(Math.min(100, Math.max(0, ((event.clientX - box.left) / box.width) * 100)));
  ui.split.value = String(percent);
  setSplit(percent);
}

// ---- wiring ------------------------------------------------------------------------------------------
ui.file.addEventListener("change", () => chooseFile(ui.file.files[0]));
for (const type of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(type, (e) => { e.preventDefault(); ui.drop.classList.add("dragging"); });
}
for (const type of ["dragleave", "dragend"]) {
  ui.drop.addEventListener(type, () => ui.drop.classList.remove("dragging"));
}
ui.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("dragging");
  chooseFile(e.dataTransfer.files[0]);
});
ui.form.addEventListener("submit", upscale);
ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  state.apiKey = ui.apiKey.value.trim();
  ui.apiKey.value = ""; // not left in the page
  if (!state.apiKey) return;
  storeKey(state.apiKey);
  clearError();
  loadModels();
});
ui.form.addEventListener("change", (e) => {
  if (e.target.name === "scale") {
    ui.custom.disabled = !ui.customChoice.checked;
    if (ui.customChoice.checked) ui.custom.focus();
  }
});
ui.model.addEventListener("change", describeModel);
ui.split.addEventListener("input", () => setSplit(Number(ui.split.value)));
ui.zoom.addEventListener("change", layout);
ui.pixels.addEventListener("change", layout);
ui.stage.addEventListener("pointerdown", (e) => {
  ui.stage.setPointerCapture(e.pointerId);
  splitFromPointer(e);
});
ui.stage.addEventListener("pointermove", (e) => { if (e.buttons) splitFromPointer(e); });
ui.before.addEventListener("error", () => { ui.before.alt = "The browser cannot show this original"; });

loadModels();
