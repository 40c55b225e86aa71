// NormGate radiographer viewer (plain ES module, no build step).
//
// Coordinates: everything is placed in ORIGINAL image pixels (docs/api.md, "POST /assess"). The stage is exactly
// width × height CSS pixels of the original image and is moved with one CSS transform
// (translate(tx, ty) scale(s)), so an image pixel (x, y) has its centre on screen at
// viewport + (tx + (x + 0.5)·s, ty + (y + 0.5)·s). The heatmap canvas holds the model-grid map and is
// stretched by the browser over the whole stage: the map covers the whole image (docs/formats.md, "The heatmap PNG").
//
// What is shown is what the model saw: every upload is rendered by the server's POST /render from the same
// decoded pixels /assess uses (DICOM VOI, 16-bit, EXIF rotation, colour to gray). Window/level is applied
// here, to that 8-bit display image.

const HISTORY_LIMIT = 20;
const MAX_CANVAS_PIXELS = 32e6; // larger images are drawn downsampled; coordinates stay in original pixels
const ZOOM_STEP = 1.25;
const PAN_FRACTION = 0.1;
// Cine playback: 12 frames per second shows a 25–30 frame cardiac cycle in about two and a half seconds,
// slow enough to follow one structure (the outflow tract) through systole.
const CINE_FRAME_MS = 1000 / 12;

// Perceptual colour map (matplotlib "inferno", 32 stops, linearly interpolated to 256).
const INFERNO_STOPS = [
  0x000004, 0x040312, 0x0b0724, 0x150b37, 0x230c4c, 0x310a5c, 0x3e0966, 0x4c0c6b,
  0x5a116e, 0x67166e, 0x741a6e, 0x801f6c, 0x8f2469, 0x9b2964, 0xa82e5f, 0xb43359,
  0xc13a50, 0xcc4248, 0xd74b3f, 0xe05536, 0xe9612b, 0xef6e21, 0xf57b17, 0xf8890c,
  0xfb9906, 0xfca80d, 0xfbb81d, 0xf9c72f, 0xf5d949, 0xf2e865, 0xf3f586, 0xfcffa4,
];
const COLOUR_LUT = buildColourLut(INFERNO_STOPS);
// Weak saliency stays see-through so the anatomy under it remains readable: transparent below 20 % of the
// map's range, a smooth ramp to opaque at 80 % (the slider then scales the whole layer).
const HEATMAP_ALPHA = Uint8ClampedArray.from({ length: 256 }, (_, v) => {
  const t = clamp((v / 255 - 0.2) / 0.6, 0, 1);
  return Math.round(255 * t * t * (3 - 2 * t));
});

const ERROR_TEXT = {
  bad_image: ["Image could not be read",
    "The file is damaged, empty or truncated, or it is a DICOM without pixel data. Export it again and reopen it."],
  too_large: ["Image too large",
    "The file or its pixel count is over this server's limit. Export a smaller image or ask the administrator."],
  unsupported_media_type: ["File type not supported",
    "NormGate reads DICOM, PNG and JPEG. This file's type, or its DICOM compression, has no decoder on the server."],
  bad_parameter: ["Invalid setting", "The server rejected the requested model or method."],
  overloaded: ["Server busy", "Too many images are waiting to be assessed. Nothing is wrong with this image."],
  not_ready: ["Model still loading", "The server is starting and warming up its model."],
  timeout: ["Assessment timed out",
    "The image waited too long in the server's queue. Nothing is wrong with this image; send it again."],
  request_timeout: ["Upload too slow",
    "The image did not reach the server in time (slow or interrupted network). Nothing is wrong with the image; send it again."],
  internal: ["Server error", "The server failed while assessing this image. Quote the request id when reporting it."],
  unauthorized: ["API key needed",
    "This server only assesses images for callers with an API key. Enter the key above; the image is sent again."],
  forbidden: ["API key refused", "The server refused this API key. Check it with your administrator."],
};

// An unassessable answer's reason (docs/api.md, "Unassessable"), in words: [short title, one sentence].
const REASON_TEXT = {
  blank: ["Blank image", "The image has no content to judge: it is uniform, or only noise."],
  too_small: ["Image too small",
    "The image is smaller than this server's minimum size; send the full-resolution image."],
  low_dynamic_range: ["Too few grey levels",
    "The image has too little contrast or too few grey levels to show anatomy."],
  no_frames: ["No image frames", "The DICOM object declares no frames (Number of Frames = 0): there is nothing to judge."],
  unsupported_modality: ["Not a served image type",
    "No model on this server assesses this kind of image (its DICOM modality or body part)."],
  out_of_distribution: ["Unlike the training images",
    "The model's view of this image is far from every image it was trained on, so its probability decides nothing."],
};

function reasonText(reason) {
  return REASON_TEXT[reason] || ["Cannot be assessed", `The gate cannot judge this image (${reason || "no reason given"}).`];
}

const $ = (id) => document.getElementById(id);
const DEFAULT_CAPTION = $("heatmap-caption").textContent.replace(/\s+/g, " ").trim();
const el = {
  openButton: $("open-button"), fileInput: $("file-input"),
  apiKeyForm: $("api-key-form"), apiKeyInput: $("api-key-input"), serverStatus: $("server-status"),
  banner: $("banner"), bannerDecision: $("banner-decision"), bannerLabel: $("banner-label"),
  bannerMeta: $("banner-meta"),
  error: $("error"), errorTitle: $("error-title"), errorMessage: $("error-message"),
  errorDetail: $("error-detail"), retryButton: $("retry-button"), errorDismiss: $("error-dismiss"),
  viewport: $("viewport"), stage: $("stage"), imageCanvas: $("image-canvas"),
  heatmapCanvas: $("heatmap-canvas"), marker: $("marker"), emptyState: $("empty-state"),
  busy: $("busy"), busyText: $("busy-text"), dropHint: $("drop-hint"),
  cornerFile: $("corner-file"), zoomReadout: $("zoom-readout"), wlReadout: $("wl-readout"), pixelReadout: $("pixel-readout"),
  heatmapToggle: $("heatmap-toggle"), markerToggle: $("marker-toggle"),
  opacitySlider: $("opacity-slider"), opacityValue: $("opacity-value"),
  zoomIn: $("zoom-in"), zoomOut: $("zoom-out"), zoomFit: $("zoom-fit"), zoomActual: $("zoom-actual"),
  windowSlider: $("window-slider"), windowValue: $("window-value"),
  levelSlider: $("level-slider"), levelValue: $("level-value"),
  wlReset: $("wl-reset"), wlInvert: $("wl-invert"),
  heatmapCaption: $("heatmap-caption"), history: $("history"), historyEmpty: $("history-empty"),
  verdictButtons: Array.from(document.querySelectorAll(".verdict-button")),
  verdictNote: $("verdict-note"), verdictStatus: $("verdict-status"),
  cine: $("cine"), cinePlay: $("cine-play"), cinePrev: $("cine-prev"), cineNext: $("cine-next"),
  cineSlider: $("cine-slider"), cineWorst: $("cine-worst"), cineReadout: $("cine-readout"), cineStrip: $("cine-strip"),
  d: {
    file: $("d-file"), label: $("d-label"), prob: $("d-prob"), ood: $("d-ood"), point: $("d-point"),
    frames: $("d-frames"), size: $("d-size"),
    model: $("d-model"), method: $("d-method"), time: $("d-time"), request: $("d-request"),
  },
};

const state = {
  apiKey: "",
  entries: [],          // newest first: {id, fileName, result, bitmap, heatmap: ImageData|null, wl}
  currentId: null,
  gray: null,           // Uint8Array luminance of the current display image at canvas resolution
  canvasScale: 1,       // canvas pixels per original pixel
  view: { s: 1, tx: 0, ty: 0, fit: true },
  heatmapOn: true,
  markerOn: true,
  opacity: 0.5,
  pending: null,        // {file, bytes, contentType} of the last upload that did not succeed (retry)
  retryTimer: null,
  busy: false,
  nextId: 1,
  settled: 0,
  positiveClass: {},    // model name → its positive class, from GET /models
  oodThreshold: {},     // model name → the threshold of its out-of-distribution check, from GET /models
  playTimer: null,      // the interval that advances the cine while it plays
};

// ---------------------------------------------------------------------------------------------- util

function buildColourLut(stops) {
  const lut = new Uint8ClampedArray(256 * 3);
  const n = stops.length - 1;
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * n;
    const k = Math.min(Math.floor(t), n - 1);
    const f = t - k;
    const a = stops[k], b = stops[k + 1];
    for (let c = 0; c < 3; c++) {
      const sh = 16 - 8 * c;
      const va = (a >> sh) & 255, vb = (b >> sh) & 255;
      lut[i * 3 + c] = Math.round(va + (vb - va) * f);
    }
  }
  return lut;
}

function humanLabel(name) {
  return String(name || "").replace(/_/g, " ");
}

function fmtProb(p) {
  return Number(p).toFixed(2);
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

function sniffContentType(bytes, fileName, browserType) {
  const u8 = new Uint8Array(bytes, 0, Math.min(bytes.byteLength, 132));
  const ascii = (from, len) => String.fromCharCode(...u8.slice(from, from + len));
  if (u8.length >= 132 && ascii(128, 4) === "DICM") return "application/dicom";
  if (u8.length >= 8 && u8[0] === 0x89 && ascii(1, 3) === "PNG") return "image/png";
  if (u8.length >= 3 && u8[0] === 0xff && u8[1] === 0xd8 && u8[2] === 0xff) return "image/jpeg";
  const ext = (fileName.toLowerCase().match(/\.([a-z0-9]+)$/) || [])[1] || "";
  if (ext === "dcm" || ext === "dicom" || ext === "dic") return "application/dicom";
  if (ext === "png") return "image/png";
  if (ext === "jpg" || ext === "jpeg") return "image/jpeg";
  return browserType || "application/octet-stream";
}

function authHeaders() {
  return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
}

// ------------------------------------------------------------------------------------ server calls

class ServerError extends Error {
  constructor(status, code, detail, requestId, retryAfter) {
    super(detail || code);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

async function readServerError(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: keep the status alone */ }
  let code = body && typeof body.error === "string" ? body.error : "";
  if (!code) {
    code = { 401: "unauthorized", 403: "forbidden", 413: "too_large", 415: "unsupported_media_type",
             503: "overloaded", 504: "timeout" }[response.status] || `http_${response.status}`;
  }
  const retryHeader = response.headers.get("Retry-After");
  const retryAfter = retryHeader && /^\d+$/.test(retryHeader.trim()) ? Number(retryHeader) : null;
  return new ServerError(response.status, code, body && body.detail, body && body.request_id, retryAfter);
}

async function post(path, bytes, contentType) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST", body: bytes, headers: { "Content-Type": contentType, ...authHeaders() },
    });
  } catch (err) {
    throw new ServerError(0, "network", `Could not reach the NormGate server at ${location.origin}.`);
  }
  if (!response.ok) throw await readServerError(response);
  return response;
}

async function assess(bytes, contentType) {
  const response = await post("/assess", bytes, contentType);
  return response.json();
}

async function renderOnServer(bytes, contentType) {
  const response = await post("/render", bytes, contentType);
  return decodeBitmap(await response.blob());
}

function decodeBitmap(blob) {
  // No colour management: the pixel values must stay the ones the model saw.
  return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

async function displayBitmap(bytes, contentType) {
  // Always the server's rendering, for every format: it is the very array the model read (EXIF rotation,
  // alpha, 16-bit and colour-to-gray conversions included), so overlay and image cannot disagree.
  return renderOnServer(bytes, contentType);
}

async function decodeHeatmap(heatmap) {
  if (!heatmap || !heatmap.png_base64) return null;
  const bin = atob(heatmap.png_base64);
  const u8 = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
  const bitmap = await decodeBitmap(new Blob([u8], { type: "image/png" }));
  const canvas = document.createElement("canvas");
  canvas.width = heatmap.width;
  canvas.height = heatmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, heatmap.width, heatmap.height);
  bitmap.close();
  const src = ctx.getImageData(0, 0, heatmap.width, heatmap.height);
  const out = ctx.createImageData(heatmap.width, heatmap.height);
  for (let i = 0, n = src.data.length; i < n; i += 4) {
    const v = src.data[i];
    out.data[i] = COLOUR_LUT[v * 3];
    out.data[i + 1] = COLOUR_LUT[v * 3 + 1];
    out.data[i + 2] = COLOUR_LUT[v * 3 + 2];
    out.data[i + 3] = HEATMAP_ALPHA[v];
  }
  return out;
}

// ----------------------------------------------------------------------------------- upload flow

async function openFile(file) {
  if (!file || state.busy) return;
  let bytes;
  try {
    bytes = await file.arrayBuffer();
  } catch {
    showError({ title: "File could not be opened", message: `The browser could not read ${file.name}.` });
    return;
  }
  const contentType = sniffContentType(bytes, file.name, file.type);
  await submit({ fileName: file.name, bytes, contentType });
}

async function submit(upload) {
  clearRetryTimer();
  hideError();
  state.pending = upload;
  setBusy(true, `Assessing ${upload.fileName}…`);
  showAssessing(upload.fileName);
  try {
    // Both requests carry the same bytes; the display image is only needed when the assessment succeeds.
    const resultPromise = assess(upload.bytes, upload.contentType);
    const bitmapPromise = displayBitmap(upload.bytes, upload.contentType);
    bitmapPromise.catch(() => {}); // reported through the assessment's error when both fail
    const result = await resultPromise;
    let bitmap = null;
    try {
      bitmap = await bitmapPromise;
    } catch (err) {
      // An unassessable answer stands without a picture (a DICOM without frames has none to show).
      if (result.decision !== "unassessable") {
        throw err instanceof ServerError ? err
          : new ServerError(0, "display", "The image was assessed but could not be displayed in this browser.");
      }
    }
    const heatmap = await decodeHeatmap(result.heatmap);
    // A multi-frame image: one heatmap per frame, decoded once so that playback only draws.
    const frames = Array.isArray(result.frames) && result.frames.length > 1 ? result.frames : null;
    const frameHeatmaps = frames ? await Promise.all(frames.map((f) => decodeHeatmap(f.heatmap))) : null;
    const entry = {
      id: state.nextId++, fileName: upload.fileName, result, bitmap, heatmap, frames, frameHeatmaps,
      frame: frames ? clamp(Number(result.worst_frame ?? 0), 0, frames.length - 1) : 0,
      wl: { window: 256, level: 128, invert: false }, at: new Date(),
    };
    state.entries.unshift(entry);
    while (state.entries.length > HISTORY_LIMIT) {
      const old = state.entries.pop();
      if (old.bitmap) old.bitmap.close();
    }
    state.pending = null;
    showEntry(entry.id, { refit: true });
    renderHistory();
  } catch (err) {
    showUploadFailure(upload, err);
  } finally {
    setBusy(false);
    // Settled submissions, success or not: lets automation wait for "this upload has been answered".
    state.settled += 1;
    el.viewport.dataset.settled = String(state.settled);
  }
}

function showUploadFailure(upload, err) {
  // A failed new image must never leave the previous decision on screen.
  state.currentId = null;
  clearImage();
  setBanner("stale", "NOT ASSESSED", `${upload.fileName} was not assessed.`,
    "No decision is available for this image.");
  renderHistory();
  if (!(err instanceof ServerError)) {
    showError({ title: "Unexpected problem", message: String(err && err.message ? err.message : err) });
    return;
  }
  const [title, message] = ERROR_TEXT[err.code]
    || (err.code === "network" ? ["Server unreachable", err.detail]
      : err.code === "display" ? ["Display failed", err.detail]
        : ["Server error", `The server answered ${err.status || "with an error"}.`]);
  const detailParts = [];
  if (err.detail && err.detail !== message) detailParts.push(`Server said: ${err.detail}`);
  if (err.requestId) detailParts.push(`request ${err.requestId}`);
  const retryable = ["overloaded", "not_ready", "timeout", "request_timeout", "network", "unauthorized", "forbidden"]
    .includes(err.code) || err.status >= 500;
  showError({
    title, message, detail: detailParts.join(" · "),
    retryAfter: err.retryAfter, retry: retryable, severe: ["bad_image", "unsupported_media_type", "too_large"].includes(err.code),
  });
  if (err.code === "unauthorized" || err.code === "forbidden") {
    el.apiKeyForm.hidden = false;
    el.apiKeyInput.focus();
  }
}

// ------------------------------------------------------------------------------ result display

function currentEntry() {
  return state.entries.find((e) => e.id === state.currentId) || null;
}

function showEntry(id, { refit = false } = {}) {
  const entry = state.entries.find((e) => e.id === id);
  if (!entry) return;
  stopCine();
  state.currentId = id;
  const { result } = entry;
  const w = result.image.width, h = result.image.height;

  if (!entry.bitmap) {  // nothing to display: the decision and its reason are the whole result
    clearImage();
    el.emptyState.hidden = true;
    showResultText(entry);
    renderHistory();
    return;
  }
  // Display image at (at most) full resolution; grayscale luminance as the model reads it.
  const k = Math.min(1, Math.sqrt(MAX_CANVAS_PIXELS / (w * h)));
  state.canvasScale = k;
  el.imageCanvas.width = Math.max(1, Math.round(w * k));
  el.imageCanvas.height = Math.max(1, Math.round(h * k));
  el.stage.style.width = `${w}px`;
  el.stage.style.height = `${h}px`;
  el.imageCanvas.style.width = `${w}px`;
  el.imageCanvas.style.height = `${h}px`;
  el.heatmapCanvas.style.width = `${w}px`;
  el.heatmapCanvas.style.height = `${h}px`;
  drawFrame(entry);

  el.stage.hidden = false;
  el.emptyState.hidden = true;
  syncWlControls(entry.wl);
  applyWindowLevel();
  if (refit || state.view.fit) fitView(); else applyView();
  applyOverlaySettings();
  showResultText(entry);
  renderCine(entry);
  renderHistory();
  renderVerdict();
}

function drawFrame(entry) {
  // The frame on screen (a single image is its only frame) and its own heatmap. /render stacks a cine's frames
  // top to bottom in one PNG, so frame i is the band of rows [i·h, (i + 1)·h).
  const { width: w, height: h } = entry.result.image;
  const canvas = el.imageCanvas;
  const cw = canvas.width, ch = canvas.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  if (entry.frames) ctx.drawImage(entry.bitmap, 0, entry.frame * h, w, h, 0, 0, cw, ch);
  else ctx.drawImage(entry.bitmap, 0, 0, cw, ch);
  // The display PNG is 8-bit grayscale, so any one channel is the value.
  const rgba = ctx.getImageData(0, 0, cw, ch).data;
  const gray = new Uint8Array(cw * ch);
  for (let i = 0, j = 0; j < gray.length; i += 4, j++) gray[j] = rgba[i];
  state.gray = gray;

  const heatmap = entry.frames ? entry.frameHeatmaps[entry.frame] : entry.heatmap;
  const hm = el.heatmapCanvas;
  if (heatmap) {
    if (hm.width !== heatmap.width || hm.height !== heatmap.height) {
      hm.width = heatmap.width;
      hm.height = heatmap.height;
    }
    hm.getContext("2d").putImageData(heatmap, 0, 0);
  } else {
    hm.width = 1;
    hm.height = 1;
    hm.getContext("2d").clearRect(0, 0, 1, 1);
  }
}

function shownPoint(entry) {
  // The marker follows the frame on screen; a single image has one point.
  return entry.frames ? entry.frames[entry.frame].point : entry.result.point;
}

// ---------------------------------------------------------------------------------------------- cine

function decisionWords(frame) {
  if (frame.decision === "unassessable") return `unassessable (${reasonText(frame.reason)[0].toLowerCase()})`;
  return frame.decision === "reacquire" ? "re-acquire" : "accept";
}

function frameSummary(entry, index) {
  const f = entry.frames[index];
  const p = f.probability == null ? "no probability" : `probability ${fmtProb(f.probability)}`;
  return `Frame ${index + 1} / ${entry.frames.length}: ${p}, ${decisionWords(f)}`;
}

function renderCine(entry) {
  // Built once per shown result: the strip's bars, the slider's range; showFrame then only moves the marks.
  const frames = entry && entry.bitmap ? entry.frames : null;
  el.cine.hidden = !frames;
  el.cineStrip.replaceChildren();
  if (!frames) {
    el.d.frames.textContent = "—";
    return;
  }
  const worst = entry.result.worst_frame;
  el.cineSlider.max = String(frames.length);
  el.cineWorst.disabled = worst == null;
  const threshold = Number(entry.result.threshold);
  if (Number.isFinite(threshold)) {
    const line = document.createElement("div");
    line.className = "cine-threshold";
    line.style.bottom = `${clamp(threshold, 0, 1) * 100}%`;
    line.setAttribute("aria-hidden", "true");
    el.cineStrip.append(line);
  }
  frames.forEach((f, index) => {
    const bar = document.createElement("button");
    bar.type = "button";
    bar.tabIndex = -1;  // the slider and the keys reach every frame; 30 tab stops would not help
    bar.className = `cine-bar ${f.decision}${index === worst ? " worst" : ""}`;
    bar.dataset.frame = String(index);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.height = `${clamp(Number(f.probability ?? 0), 0, 1) * 100}%`;
    bar.append(fill);
    bar.setAttribute("aria-label", `${frameSummary(entry, index)}${index === worst ? " (deciding frame)" : ""}`);
    bar.title = bar.getAttribute("aria-label");
    bar.addEventListener("click", () => { stopCine(); showFrame(index); });
    el.cineStrip.append(bar);
  });
  const worstText = worst == null ? "no deciding frame" : `deciding frame ${worst + 1}`;
  el.d.frames.textContent = `${frames.length} frames · ${worstText}`;
  markFrame(entry);
}

function markFrame(entry) {
  const index = entry.frame;
  el.cineSlider.value = String(index + 1);
  el.cineSlider.setAttribute("aria-valuetext", frameSummary(entry, index));
  for (const bar of el.cineStrip.querySelectorAll(".cine-bar")) {
    bar.classList.toggle("current", Number(bar.dataset.frame) === index);
  }
  const worst = entry.result.worst_frame;
  el.cineReadout.textContent = `${frameSummary(entry, index)}${index === worst ? " · deciding frame" : ""}`;
  const point = shownPoint(entry);
  el.d.point.textContent = point ? `${point.x}, ${point.y} (frame ${index + 1})` : "—";
}

function showFrame(index) {
  const entry = currentEntry();
  if (!entry || !entry.frames || !entry.bitmap) return;
  const n = entry.frames.length;
  entry.frame = ((index % n) + n) % n;  // stepping past either end wraps, as a cine loops
  drawFrame(entry);
  applyWindowLevel();
  placeMarker();
  markFrame(entry);
}

function stepFrame(delta) {
  const entry = currentEntry();
  if (!entry || !entry.frames) return false;
  stopCine();
  showFrame(entry.frame + delta);
  return true;
}

function showDecidingFrame() {
  const entry = currentEntry();
  if (!entry || !entry.frames || entry.result.worst_frame == null) return false;
  stopCine();
  showFrame(entry.result.worst_frame);
  return true;
}

function playing() {
  return state.playTimer !== null;
}

function setPlayButton() {
  const on = playing();
  el.cinePlay.firstChild.textContent = on ? "Pause " : "Play ";
  el.cine.dataset.playing = String(on);
  // A live region that spoke every frame would drown the screen reader while the cine plays.
  el.cineReadout.setAttribute("aria-live", on ? "off" : "polite");
}

function stopCine() {
  if (state.playTimer !== null) clearInterval(state.playTimer);
  state.playTimer = null;
  setPlayButton();
}

function togglePlay() {
  const entry = currentEntry();
  if (!entry || !entry.frames) return false;
  if (playing()) {
    stopCine();
  } else {
    state.playTimer = setInterval(() => {
      const current = currentEntry();
      if (!current || !current.frames) { stopCine(); return; }
      showFrame(current.frame + 1);
    }, CINE_FRAME_MS);
    setPlayButton();
  }
  return true;
}

function clearImage() {
  stopCine();
  el.cine.hidden = true;
  el.cineStrip.replaceChildren();
  el.stage.hidden = true;
  el.marker.hidden = true;
  el.emptyState.hidden = false;
  state.gray = null;
  el.viewport.setAttribute("aria-label", "No image shown. Press O to open one.");
  for (const dd of Object.values(el.d)) dd.textContent = "—";
  el.zoomReadout.textContent = "";
  el.wlReadout.textContent = "";
  el.pixelReadout.textContent = "";
  el.cornerFile.textContent = "";
  el.heatmapCaption.textContent = DEFAULT_CAPTION;
  renderVerdict();
}

function setBanner(kind, decision, line, meta) {
  el.banner.className = `banner banner-${kind}`;
  el.bannerDecision.textContent = decision;
  el.bannerLabel.textContent = line;
  el.bannerMeta.textContent = meta || "";
}

function showAssessing(fileName) {
  state.currentId = null;
  clearImage();
  el.emptyState.hidden = true;
  setBanner("busy", "ASSESSING…", fileName, "Waiting for the quality gate.");
}

function showResultText(entry) {
  if (entry.result.decision === "unassessable") {
    showUnassessableText(entry);
    return;
  }
  const r = entry.result;
  const reacquire = r.decision === "reacquire";
  const p = Number(r.probability), t = Number(r.threshold);
  const model = r.model || {};
  const modelText = `${model.name || "?"} ${model.version || ""} (${model.arch || "?"})`.replace(/\s+/g, " ");
  const line = `${humanLabel(r.label)} — probability ${fmtProb(p)} ${p >= t ? "≥" : "<"} threshold ${fmtProb(t)}`;
  const method = r.heatmap ? r.heatmap.method : "no heatmap";
  setBanner(reacquire ? "reacquire" : "accept", reacquire ? "RE-ACQUIRE" : "ACCEPT", line,
    `Model ${modelText} · ${entry.fileName} · ${r.image.width}×${r.image.height} px`);

  el.d.file.textContent = entry.fileName;
  el.d.label.textContent = humanLabel(r.label);
  el.d.prob.textContent = `${fmtProb(p)} (threshold ${fmtProb(t)})`;
  el.d.ood.textContent = oodText(r);
  el.d.point.textContent = r.point ? `${r.point.x}, ${r.point.y}` : "—";
  el.d.size.textContent = `${r.image.width} × ${r.image.height} px`;
  el.d.model.textContent = modelText;
  el.d.method.textContent = method;
  const tm = r.timings_ms || {};
  el.d.time.textContent = tm.total != null ? `${Math.round(tm.total)} ms` : "—";
  el.d.request.textContent = r.request_id || "—";

  const positive = reacquire ? humanLabel(r.label)
    : humanLabel(state.positiveClass[model.name] || "the quality problem");
  el.heatmapCaption.textContent = !r.heatmap
    ? "No heatmap was requested for this result."
    : reacquire
      ? `Evidence of ${positive}; the ring marks the strongest point.`
      : `Where the model looked for ${positive}; nothing reached the threshold.`;
  el.cornerFile.textContent = `${entry.fileName}\n${r.image.width} × ${r.image.height} px`;
  const where = r.point ? ` Heatmap peak marked at x ${r.point.x}, y ${r.point.y}.` : "";
  const cine = entry.frames ? ` Cine of ${entry.frames.length} frames; the series decision is shown.` : "";
  el.viewport.setAttribute("aria-label",
    `${entry.fileName}, ${r.image.width} by ${r.image.height} pixels.${cine} ` +
    `${reacquire ? "Re-acquire" : "Accept"}: ${humanLabel(r.label)}, probability ${fmtProb(p)}.${where}`);
}

function oodText(r) {
  if (r.ood_score == null) return "—";
  const limit = state.oodThreshold[(r.model || {}).name];
  return limit == null ? r.ood_score.toFixed(1) : `${r.ood_score.toFixed(1)} (limit ${limit.toFixed(1)})`;
}

function showUnassessableText(entry) {
  // Its own colour and words: an image the gate cannot judge must never read as ACCEPT.
  const r = entry.result;
  const [title, sentence] = reasonText(r.reason);
  const model = r.model || {};
  const modelText = `${model.name || "?"} ${model.version || ""} (${model.arch || "?"})`.replace(/\s+/g, " ");
  const ran = r.probability != null;
  setBanner("unassessable", "UNASSESSABLE", `${title} — ${sentence}`,
    `No decision: assess the image yourself or acquire it again · Model ${modelText} · ${entry.fileName} · ` +
    `${r.image.width}×${r.image.height} px`);
  el.d.file.textContent = entry.fileName;
  el.d.label.textContent = `Not assessed: ${title.toLowerCase()} (${r.reason})`;
  el.d.prob.textContent = ran ? `${fmtProb(r.probability)} (not used)` : "— (the model did not run)";
  el.d.ood.textContent = oodText(r);
  el.d.point.textContent = r.point ? `${r.point.x}, ${r.point.y}` : "—";
  el.d.size.textContent = `${r.image.width} × ${r.image.height} px`;
  el.d.model.textContent = modelText;
  el.d.method.textContent = r.heatmap ? r.heatmap.method : "no heatmap";
  const tm = r.timings_ms || {};
  el.d.time.textContent = tm.total != null ? `${Math.round(tm.total)} ms` : "—";
  el.d.request.textContent = r.request_id || "—";
  el.heatmapCaption.textContent = r.heatmap
    ? "Where the model looked; the image is unlike its training data, so nothing follows from it."
    : "No heatmap: the model did not run on this image.";
  el.cornerFile.textContent = `${entry.fileName}\n${r.image.width} × ${r.image.height} px`;
  el.viewport.setAttribute("aria-label",
    `${entry.fileName}, ${r.image.width} by ${r.image.height} pixels. Unassessable: ${title}. ${sentence}`);
}

const BADGE = {
  reacquire: ["badge-reacquire", "RE-ACQUIRE", "re-acquire"],
  accept: ["badge-accept", "ACCEPT", "accept"],
  unassessable: ["badge-unassessable", "UNASSESSABLE", "unassessable"],
};

function renderHistory() {
  el.history.replaceChildren();
  el.historyEmpty.hidden = state.entries.length > 0;
  for (const entry of state.entries) {
    const r = entry.result;
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.entryId = String(entry.id);
    const [badgeClass, badgeText, spoken] = BADGE[r.decision] || BADGE.unassessable;
    const badge = document.createElement("span");
    badge.className = `badge ${badgeClass}`;
    badge.textContent = badgeText;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.fileName;
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = r.probability == null ? "—" : fmtProb(r.probability);
    button.append(badge, name, prob);
    const why = r.decision === "unassessable" ? reasonText(r.reason)[0].toLowerCase()
      : `probability ${fmtProb(r.probability)}`;
    button.setAttribute("aria-label", `${entry.fileName}: ${spoken}, ${why}, ${entry.at.toLocaleTimeString()}`);
    if (entry.id === state.currentId) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => showEntry(entry.id, { refit: true }));
    li.append(button);
    el.history.append(li);
  }
}

function flip(delta) {
  // delta +1 = older (J), -1 = newer (K); the list is newest first.
  if (!state.entries.length || state.busy) return;
  let index = state.entries.findIndex((e) => e.id === state.currentId);
  if (index < 0) index = delta > 0 ? -1 : state.entries.length;
  const next = clamp(index + delta, 0, state.entries.length - 1);
  if (next === index) return;
  hideError();
  showEntry(state.entries[next].id, { refit: true });
}

// ------------------------------------------------------------------------------------- verdicts

const VERDICT_TEXT = {
  agree: "Agree",
  reacquired_anyway: "Re-took anyway",
  accepted_anyway: "Kept anyway",
  wrong_location: "Wrong location",
};

function renderVerdict() {
  // The buttons belong to the decision on screen: disabled without one, the recorded verdict pressed.
  const entry = currentEntry();
  const usable = Boolean(entry && entry.result.assessment_id);
  for (const button of el.verdictButtons) {
    button.disabled = !usable || Boolean(entry && entry.verdictPending);
    button.setAttribute("aria-pressed", String(usable && entry.verdict === button.dataset.verdict));
  }
  el.verdictNote.disabled = !usable;
  if (!usable) el.verdictNote.value = "";
  el.verdictStatus.textContent = !usable ? ""
    : entry.verdictMessage || (entry.verdict ? `Recorded: ${VERDICT_TEXT[entry.verdict]}.` : "No verdict yet.");
}

async function sendVerdict(verdict) {
  const entry = currentEntry();
  if (!entry || !entry.result.assessment_id || entry.verdictPending || !VERDICT_TEXT[verdict]) return;
  const note = el.verdictNote.value.trim();
  entry.verdictPending = true;
  entry.verdictMessage = `Recording ${VERDICT_TEXT[verdict]}…`;
  renderVerdict();
  try {
    let response;
    try {
      response = await fetch(`/assessments/${encodeURIComponent(entry.result.assessment_id)}/verdict`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(note ? { verdict, note } : { verdict }),
      });
    } catch {
      throw new ServerError(0, "network", `Could not reach the NormGate server at ${location.origin}.`);
    }
    if (!response.ok) throw await readServerError(response);
    const body = await response.json();
    const previous = body.supersedes ? ` (replaces ${VERDICT_TEXT[body.supersedes.verdict] || body.supersedes.verdict})` : "";
    entry.verdict = verdict;
    entry.verdictMessage = `Recorded: ${VERDICT_TEXT[verdict]}${previous}.`;
    el.verdictNote.value = "";
  } catch (err) {
    const why = err instanceof ServerError ? (err.detail || err.code) : String(err);
    entry.verdictMessage = `Not recorded: ${why}`;
    if (err instanceof ServerError && (err.code === "unauthorized" || err.code === "forbidden")) {
      el.apiKeyForm.hidden = false;
    }
  } finally {
    entry.verdictPending = false;
    if (entry === currentEntry()) renderVerdict();
  }
}

// ------------------------------------------------------------------------------- window / level

function syncWlControls(wl) {
  el.windowSlider.value = String(wl.window);
  el.levelSlider.value = String(wl.level);
  el.windowValue.textContent = String(wl.window);
  el.levelValue.textContent = String(wl.level);
  el.wlInvert.setAttribute("aria-pressed", String(wl.invert));
  el.wlReadout.textContent = `W ${wl.window} / L ${wl.level}${wl.invert ? " · inverted" : ""}`;
}

let wlFrame = 0;
function scheduleWindowLevel() {
  if (wlFrame) return;
  wlFrame = requestAnimationFrame(() => { wlFrame = 0; applyWindowLevel(); });
}

function applyWindowLevel() {
  const entry = currentEntry();
  if (!entry || !state.gray) return;
  const { window: w, level: c, invert } = entry.wl;
  // DICOM PS3.3 C.11.2.1.2 linear VOI function; window 256 / level 128 is the identity on 8-bit input.
  // One 32-bit RGBA word per gray value, so each pixel is a single table look-up and store.
  const lut = new Uint32Array(256);
  const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  const lo = c - 0.5 - (w - 1) / 2, hi = c - 0.5 + (w - 1) / 2;
  for (let g = 0; g < 256; g++) {
    let v = g <= lo ? 0 : g > hi ? 255 : ((g - (c - 0.5)) / (w - 1) + 0.5) * 255;
    if (invert) v = 255 - v;
    v = Math.round(v);
    lut[g] = littleEndian ? ((255 << 24) | (v << 16) | (v << 8) | v) >>> 0 : ((v << 24) | (v << 16) | (v << 8) | 255) >>> 0;
  }
  const canvas = el.imageCanvas;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const img = ctx.createImageData(canvas.width, canvas.height);
  const out = new Uint32Array(img.data.buffer), gray = state.gray;
  for (let j = 0; j < gray.length; j++) out[j] = lut[gray[j]];
  ctx.putImageData(img, 0, 0);
  syncWlControls(entry.wl);
}

function changeWl(dWindow, dLevel) {
  const entry = currentEntry();
  if (!entry) return;
  entry.wl.window = Math.round(clamp(entry.wl.window + dWindow, 2, 256));
  entry.wl.level = Math.round(clamp(entry.wl.level + dLevel, 0, 255));
  scheduleWindowLevel();
}

function resetWl() {
  const entry = currentEntry();
  if (!entry) return;
  entry.wl = { window: 256, level: 128, invert: false };
  applyWindowLevel();
}

// -------------------------------------------------------------------------------- zoom and pan

function viewportSize() {
  return { vw: el.viewport.clientWidth, vh: el.viewport.clientHeight };
}

function fitView() {
  const entry = currentEntry();
  if (!entry) return;
  const { vw, vh } = viewportSize();
  const w = entry.result.image.width, h = entry.result.image.height;
  const s = Math.min(vw / w, vh / h);
  state.view = { s, tx: (vw - w * s) / 2, ty: (vh - h * s) / 2, fit: true };
  applyView();
}

function zoomAt(factor, cx, cy) {
  const entry = currentEntry();
  if (!entry) return;
  const { vw, vh } = viewportSize();
  if (cx == null) { cx = vw / 2; cy = vh / 2; }
  const w = entry.result.image.width, h = entry.result.image.height;
  const fit = Math.min(vw / w, vh / h);
  const v = state.view;
  const s = clamp(v.s * factor, Math.min(fit, 1) * 0.5, 32);
  const k = s / v.s;
  state.view = { s, tx: cx - (cx - v.tx) * k, ty: cy - (cy - v.ty) * k, fit: false };
  applyView();
}

function zoomTo(s) {
  const v = state.view;
  zoomAt(s / v.s);
}

function pan(dx, dy) {
  if (!currentEntry()) return;
  state.view.tx += dx;
  state.view.ty += dy;
  state.view.fit = false;
  applyView();
}

function applyView() {
  const entry = currentEntry();
  if (!entry) return;
  const { vw, vh } = viewportSize();
  const w = entry.result.image.width, h = entry.result.image.height;
  const v = state.view;
  // Keep at least a strip of the image on screen so it cannot be panned out of reach.
  const keep = 48;
  v.tx = clamp(v.tx, keep - w * v.s, vw - keep);
  v.ty = clamp(v.ty, keep - h * v.s, vh - keep);
  el.stage.style.transform = `translate(${v.tx}px, ${v.ty}px) scale(${v.s})`;
  el.zoomReadout.textContent = `Zoom ${Math.round(v.s * 100)}%${v.fit ? " (fit)" : ""}`;
  placeMarker();
}

function placeMarker() {
  const entry = currentEntry();
  const point = entry && shownPoint(entry);
  if (!point || !state.markerOn) {
    el.marker.hidden = true;
    return;
  }
  const v = state.view;
  el.marker.style.transform =
    `translate(${v.tx + (point.x + 0.5) * v.s}px, ${v.ty + (point.y + 0.5) * v.s}px)`;
  el.marker.hidden = false;
}

function applyOverlaySettings() {
  el.heatmapCanvas.classList.toggle("off", !state.heatmapOn);
  el.heatmapCanvas.style.opacity = String(state.opacity);
  el.heatmapToggle.checked = state.heatmapOn;
  el.markerToggle.checked = state.markerOn;
  const pct = Math.round(state.opacity * 100);
  el.opacitySlider.value = String(pct);
  el.opacitySlider.setAttribute("aria-valuetext", `${pct} percent`);
  el.opacityValue.textContent = `${pct}%`;
  placeMarker();
}

function setOpacity(value) {
  state.opacity = clamp(Math.round(value * 20) / 20, 0, 1);
  if (!state.heatmapOn && state.opacity > 0) state.heatmapOn = true;
  applyOverlaySettings();
}

// --------------------------------------------------------------------------------- UI plumbing

function setBusy(busy, text) {
  state.busy = busy;
  el.busy.hidden = !busy;
  if (text) el.busyText.textContent = text;
  el.openButton.disabled = busy;
  el.viewport.setAttribute("aria-busy", String(busy));
}

function clearRetryTimer() {
  if (state.retryTimer) clearInterval(state.retryTimer);
  state.retryTimer = null;
}

function showError({ title, message, detail = "", retryAfter = null, retry = false, severe = false }) {
  clearRetryTimer();
  el.error.classList.toggle("error-severe", severe);
  el.errorTitle.textContent = title;
  el.errorMessage.textContent = message || "";
  el.errorDetail.textContent = detail;
  el.retryButton.hidden = !(retry && state.pending);
  el.retryButton.disabled = false;
  el.retryButton.textContent = "Retry";
  if (retry && state.pending && retryAfter) {
    let left = retryAfter;
    const tick = () => {
      if (left <= 0) {
        clearRetryTimer();
        el.retryButton.disabled = false;
        el.retryButton.textContent = "Retry now";
        return;
      }
      el.retryButton.disabled = true;
      el.retryButton.textContent = `Retry in ${left} s`;
      left -= 1;
    };
    tick();
    state.retryTimer = setInterval(tick, 1000);
  }
  el.error.hidden = false;
}

function hideError() {
  clearRetryTimer();
  el.error.hidden = true;
}

async function loadModels() {
  try {
    const response = await fetch("/models", { headers: authHeaders() });
    if (!response.ok) return;
    const body = await response.json();
    for (const m of body.models || []) {
      state.positiveClass[m.name] = m.positive_class;
      if (m.ood) state.oodThreshold[m.name] = m.ood.threshold;
    }
  } catch { /* only used for wording */ }
}

async function checkServer() {
  try {
    const ready = await fetch("/readyz", { headers: authHeaders() });
    el.serverStatus.classList.toggle("bad", !ready.ok);
    el.serverStatus.textContent = ready.ok ? "● model ready" : "● model loading…";
    if (!ready.ok) setTimeout(checkServer, 5000);
  } catch {
    el.serverStatus.classList.add("bad");
    el.serverStatus.textContent = "● server unreachable";
    setTimeout(checkServer, 5000);
  }
}

function isTextField(target) {
  return target instanceof HTMLInputElement
    && !["checkbox", "radio", "range", "button", "submit", "file"].includes(target.type)
    || target instanceof HTMLTextAreaElement || (target && target.isContentEditable);
}

function onKeyDown(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (isTextField(target)) {
    if (event.key === "Escape") target.blur();
    return;
  }
  const onSlider = target instanceof HTMLInputElement && target.type === "range";
  const step = PAN_FRACTION * Math.min(el.viewport.clientWidth, el.viewport.clientHeight);
  let handled = true;
  switch (event.key) {
    case "o": case "O": el.fileInput.click(); break;
    case "h": case "H": state.heatmapOn = !state.heatmapOn; applyOverlaySettings(); break;
    case "m": case "M": state.markerOn = !state.markerOn; applyOverlaySettings(); break;
    case "[": setOpacity(state.opacity - 0.1); break;
    case "]": setOpacity(state.opacity + 0.1); break;
    case "+": case "=": zoomAt(ZOOM_STEP); break;
    case "-": case "_": zoomAt(1 / ZOOM_STEP); break;
    case "0": fitView(); break;
    case "1": zoomTo(1); break;
    case "r": case "R": resetWl(); break;
    case "i": case "I": {
      const entry = currentEntry();
      if (entry) { entry.wl.invert = !entry.wl.invert; applyWindowLevel(); }
      break;
    }
    case "j": case "J": flip(+1); break;
    case "a": case "A": sendVerdict("agree"); break;
    case "t": case "T": sendVerdict("reacquired_anyway"); break;
    case "c": case "C": sendVerdict("accepted_anyway"); break;
    case "w": case "W": sendVerdict("wrong_location"); break;
    case "k": case "K": flip(-1); break;
    case "p": case "P": handled = togglePlay(); break;
    case ",": case "<": handled = stepFrame(-1); break;
    case ".": case ">": handled = stepFrame(+1); break;
    case "f": case "F": handled = showDecidingFrame(); break;
    case "Escape": hideError(); break;
    case "ArrowLeft": case "ArrowRight": case "ArrowUp": case "ArrowDown": {
      if (onSlider && !event.shiftKey) { handled = false; break; }
      const dx = event.key === "ArrowLeft" ? 1 : event.key === "ArrowRight" ? -1 : 0;
      const dy = event.key === "ArrowUp" ? 1 : event.key === "ArrowDown" ? -1 : 0;
      if (event.shiftKey) changeWl(-dx * 8, dy * 4);  // Shift+→ widens the window, Shift+↑ raises the level
      else pan(dx * step, dy * step);
      break;
    }
    default: handled = false;
  }
  if (handled) event.preventDefault();
}

function bindEvents() {
  el.openButton.addEventListener("click", () => el.fileInput.click());
  el.fileInput.addEventListener("change", () => {
    const file = el.fileInput.files && el.fileInput.files[0];
    el.fileInput.value = "";
    if (file) openFile(file);
  });
  el.apiKeyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = el.apiKeyInput.value.trim();
    checkServer();
    if (state.pending) submit(state.pending);
  });
  el.retryButton.addEventListener("click", () => { if (state.pending) submit(state.pending); });
  el.errorDismiss.addEventListener("click", hideError);
  for (const button of el.verdictButtons) {
    button.addEventListener("click", () => sendVerdict(button.dataset.verdict));
  }

  el.heatmapToggle.addEventListener("change", () => { state.heatmapOn = el.heatmapToggle.checked; applyOverlaySettings(); });
  el.markerToggle.addEventListener("change", () => { state.markerOn = el.markerToggle.checked; applyOverlaySettings(); });
  el.opacitySlider.addEventListener("input", () => setOpacity(Number(el.opacitySlider.value) / 100));
  el.zoomIn.addEventListener("click", () => zoomAt(ZOOM_STEP));
  el.zoomOut.addEventListener("click", () => zoomAt(1 / ZOOM_STEP));
  el.zoomFit.addEventListener("click", fitView);
  el.zoomActual.addEventListener("click", () => zoomTo(1));
  el.windowSlider.addEventListener("input", () => {
    const entry = currentEntry();
    if (entry) { entry.wl.window = Number(el.windowSlider.value); scheduleWindowLevel(); }
  });
  el.levelSlider.addEventListener("input", () => {
    const entry = currentEntry();
    if (entry) { entry.wl.level = Number(el.levelSlider.value); scheduleWindowLevel(); }
  });
  el.wlReset.addEventListener("click", resetWl);
  el.cinePlay.addEventListener("click", togglePlay);
  el.cinePrev.addEventListener("click", () => stepFrame(-1));
  el.cineNext.addEventListener("click", () => stepFrame(+1));
  el.cineWorst.addEventListener("click", showDecidingFrame);
  el.cineSlider.addEventListener("input", () => { stopCine(); showFrame(Number(el.cineSlider.value) - 1); });
  el.wlInvert.addEventListener("click", () => {
    const entry = currentEntry();
    if (entry) { entry.wl.invert = !entry.wl.invert; applyWindowLevel(); }
  });

  document.addEventListener("keydown", onKeyDown);

  // Mouse: drag pans, Shift-drag changes window (horizontal) and level (vertical), wheel zooms at the cursor.
  let drag = null;
  el.viewport.addEventListener("pointerdown", (event) => {
    if (!currentEntry() || event.button !== 0) return;
    el.viewport.focus({ preventScroll: true });
    drag = { x: event.clientX, y: event.clientY, wl: event.shiftKey };
    el.viewport.classList.add(drag.wl ? "wl-dragging" : "dragging");
    el.viewport.setPointerCapture(event.pointerId);
  });
  el.viewport.addEventListener("pointermove", (event) => {
    showPixel(event);
    if (!drag) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    drag.x = event.clientX;
    drag.y = event.clientY;
    if (drag.wl) changeWl(dx, -dy * 0.5);
    else pan(dx, dy);
  });
  const endDrag = () => {
    drag = null;
    el.viewport.classList.remove("dragging", "wl-dragging");
  };
  el.viewport.addEventListener("pointerup", endDrag);
  el.viewport.addEventListener("pointercancel", endDrag);
  el.viewport.addEventListener("wheel", (event) => {
    if (!currentEntry()) return;
    event.preventDefault();
    const rect = el.viewport.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, event.clientX - rect.left, event.clientY - rect.top);
  }, { passive: false });

  // Drag and drop anywhere on the page.
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
    dragDepth += 1;
    el.dropHint.hidden = false;
    el.viewport.classList.add("drop-target");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) { el.dropHint.hidden = true; el.viewport.classList.remove("drop-target"); }
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    el.dropHint.hidden = true;
    el.viewport.classList.remove("drop-target");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) openFile(file);
  });

  new ResizeObserver(() => { if (state.view.fit) fitView(); else applyView(); }).observe(el.viewport);
}

function showPixel(event) {
  const entry = currentEntry();
  if (!entry || !state.gray) return;
  const rect = el.viewport.getBoundingClientRect();
  const v = state.view;
  const x = Math.floor((event.clientX - rect.left - v.tx) / v.s);
  const y = Math.floor((event.clientY - rect.top - v.ty) / v.s);
  const { width: w, height: h } = entry.result.image;
  if (x < 0 || y < 0 || x >= w || y >= h) { el.pixelReadout.textContent = ""; return; }
  const k = state.canvasScale;
  const cx = Math.min(el.imageCanvas.width - 1, Math.floor(x * k));
  const cy = Math.min(el.imageCanvas.height - 1, Math.floor(y * k));
  el.pixelReadout.textContent = `x ${x}, y ${y} · value ${state.gray[cy * el.imageCanvas.width + cx]}`;
}

bindEvents();
applyOverlaySettings();
setPlayButton();
checkServer();
loadModels();

// For tests and power users: read-only view of what is on screen.
window.normgateViewer = Object.freeze({
  current: () => {
    const entry = currentEntry();
    return entry
      ? {
        fileName: entry.fileName, result: entry.result, view: { ...state.view }, verdict: entry.verdict || null,
        frame: entry.frames ? entry.frame : null, playing: playing(),
      }
      : null;
  },
  count: () => state.entries.length,
});
