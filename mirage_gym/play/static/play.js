// mirage-gym play: the page side. One websocket request at a time (move, reset, memory), one
// reply each, so a held key keeps the generator busy without queueing work on the server.
"use strict";

// Key -> [action index, sign]; the action is forward, right, yaw (left +), pitch (up +).
const KEYS = {
  KeyW: [0, 1], ArrowUp: [0, 1], KeyS: [0, -1], ArrowDown: [0, -1],
  KeyD: [1, 1], KeyA: [1, -1],
  ArrowLeft: [2, 1], ArrowRight: [2, -1],
  KeyQ: [3, 1], KeyE: [3, -1],
};
const FPS_WINDOW_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  socket: null,
  token: null,
  hello: null,
  pending: false,       // a websocket request awaits its reply
  uploading: false,     // an HTTP upload is in flight
  queue: [],            // non-move requests waiting for the socket
  held: new Set(),      // movement keys / buttons held down
  arrivals: [],         // [time, frames] of recent updates, for the frame rate
  lastUpdate: 0,
  timers: [],
  framesReceived: 0,
};
window.miragePlay = state;  // for tests and the curious

function showMessage(text, kind = "error", retry = false) {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
  if (retry) {
    const button = document.createElement("button");
    button.textContent = "Retry";
    button.addEventListener("click", () => { box.hidden = true; connect(); });
    box.append(button);
  }
}

function clearMessage() { $("message").hidden = true; }

function action() {
  const a = [0, 0, 0, 0];
  for (const key of state.held) {
    const [index, sign] = KEYS[key];
    a[index] = Math.max(-1, Math.min(1, a[index] + sign));
  }
  return a;
}

function send(request) {
  state.pending = true;
  state.socket.send(JSON.stringify(request));
}

// Send the next request if none is in flight: queued controls first, then the held move.
function pump() {
  if (state.pending || state.uploading || !state.token || state.socket.readyState !== WebSocket.OPEN) return;
  if (state.queue.length) send(state.queue.shift());
  else if (state.held.size && action().some((v) => v !== 0)) send({ type: "move", action: action() });
}

function request(message) {
  state.queue.push(message);
  pump();
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(2)} MiB`;
}

// Play a chunk's frames evenly over the time the previous chunk took to arrive.
function playFrames(frames, depth) {
  const now = performance.now();
  const gap = state.lastUpdate ? Math.min(now - state.lastUpdate, 1000) : 0;
  state.lastUpdate = now;
  state.timers.forEach(clearTimeout);
  state.timers = frames.map((src, i) => setTimeout(() => {
    $("frame").src = src;
    $("depth").src = depth[i];
  }, (i * gap) / frames.length));
}

function showUpdate(u) {
  playFrames(u.frames, u.depth);
  $("map").src = u.map;
  state.framesReceived += u.frames.length;
  document.body.dataset.framesReceived = state.framesReceived;

  const now = performance.now();
  state.arrivals.push([now, u.frames.length]);
  while (state.arrivals.length && now - state.arrivals[0][0] > FPS_WINDOW_MS) state.arrivals.shift();
  if (state.arrivals.length > 1) {
    const span = (now - state.arrivals[0][0]) / 1000;
    const frames = state.arrivals.slice(1).reduce((sum, [, n]) => sum + n, 0);
    $("fps").textContent = `${(frames / span).toFixed(1)} frames/s`;
  }

  const [x, y, z] = u.position;
  $("pose").textContent = `x ${x.toFixed(2)}  y ${y.toFixed(2)}  z ${z.toFixed(2)} m · ` +
    `yaw ${u.yaw.toFixed(0)}° · pitch ${u.pitch.toFixed(0)}°` +
    (u.collided ? ` · blocked${u.blocked_by === "unseen" ? " (space not shown yet)" : u.blocked_by ? ` (${u.blocked_by})` : ""}` : "");
  $("pose").classList.toggle("collided", u.collided);
  $("step-time").textContent = `${(u.step_time * 1000).toFixed(0)} ms for ${u.frames.length} frame${u.frames.length > 1 ? "s" : ""}`;
  const unit = u.memory === "pixel" ? "points" : "tokens";
  $("memory-held").textContent = u.memory === "oracle" ? "none (oracle: the ground truth is the world)"
    : u.memory === "none" ? "none (memory off)"
    : `${formatBytes(u.memory_bytes)} · ${u.memory_points.toLocaleString()} ${unit} (${u.memory})`;
  $("episode").textContent = `seed ${u.seed} · ` + (u.room_seed === null ? "no house" : `room ${u.room_seed}`) +
    ` · ${u.frames_generated} frames` + (u.start_image ? " · from your image" : "") +
    ` · physics: ${u.physics === "generated" ? "generated world" : "house (ground truth)"}`;
  $("memory-select").value = u.memory;
  $("seed").value = u.seed;
}

function onHello(h) {
  state.token = h.token;
  state.hello = h;
  $("status").textContent = `generator ${h.generator} · ${h.resolution}×${h.resolution} · ${h.chunk} frames per move`;
  const select = $("memory-select");
  select.replaceChildren();
  const modes = h.memory_modes.length ? h.memory_modes : ["oracle"];
  for (const mode of modes) select.append(new Option(mode, mode));
  select.disabled = h.memory_modes.length === 0;
  select.title = select.disabled ? "the oracle renders the ground truth and has no memory to switch" : "";
  const mib = h.max_upload_bytes / 2 ** 20;
  $("upload-help").textContent = `Restarts this room from your picture: centre-cropped to a square and resized to ` +
    `${h.resolution}×${h.resolution}; at most ${mib} MiB.`;
  if (h.memory_modes.length === 0) $("map-caption").textContent =
    "oracle mode keeps no memory: floor plan (ground truth), camera and path in cyan and grey";
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  state.socket = socket;
  state.token = null;
  state.pending = false;
  state.queue = [];
  let taken = false;
  socket.addEventListener("message", (event) => {
    const m = JSON.parse(event.data);
    if (m.type === "hello") onHello(m);
    else if (m.type === "taken") { taken = true; $("status").textContent = "scene taken"; showMessage(m.message, "error", true); }
    else if (m.type === "update") { state.pending = false; showUpdate(m); pump(); }
    else if (m.type === "error") { state.pending = false; showMessage(m.message); pump(); }
  });
  socket.addEventListener("close", () => {
    state.token = null;
    if (!taken) {
      $("status").textContent = "disconnected";
      showMessage("The connection to the server was lost (was mirage-gym play stopped?).", "error", true);
    }
  });
}

// ------------------------------------------------------------------ controls

function hold(key) { state.held.add(key); pump(); }
function release(key) { state.held.delete(key); }

window.addEventListener("keydown", (event) => {
  if (!(event.code in KEYS) || event.target.closest("input, select, textarea")) return;
  event.preventDefault();  // arrows would scroll the page
  hold(event.code);
});
window.addEventListener("keyup", (event) => release(event.code));
window.addEventListener("blur", () => state.held.clear());  // no stuck keys after switching windows

for (const button of document.querySelectorAll("[data-move]")) {
  const key = button.dataset.move;
  button.addEventListener("pointerdown", (event) => {
    button.setPointerCapture(event.pointerId);
    button.classList.add("held");
    hold(key);
  });
  for (const type of ["pointerup", "pointercancel"]) {
    button.addEventListener(type, () => { button.classList.remove("held"); release(key); });
  }
}

$("reset-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const seed = Number($("seed").value);
  if (!Number.isInteger(seed) || seed < 0) { showMessage("the seed must be a whole number >= 0"); return; }
  clearMessage();
  request({ type: "reset", seed });
});

$("memory-select").addEventListener("change", (event) => {
  clearMessage();
  request({ type: "memory", mode: event.target.value });
});

$("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";  // choosing the same file again fires another change
  if (!file || !state.token) return;
  if (file.size > state.hello.max_upload_bytes) {
    const mib = (file.size / 2 ** 20).toFixed(1);
    showMessage(`the image file is too large (${mib} MiB); the limit is ${state.hello.max_upload_bytes / 2 ** 20} MiB`);
    return;
  }
  state.uploading = true;
  try {
    const response = await fetch("/api/start-image", {
      method: "POST",
      headers: { "X-Mirage-Token": state.token, "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const body = await response.json();
    if (!response.ok) showMessage(body.detail || `upload failed (${response.status})`);
    else { clearMessage(); showUpdate(body); }
  } catch (err) {
    showMessage(`upload failed: ${err}`);
  } finally {
    state.uploading = false;
    pump();
  }
});

$("save").addEventListener("click", async () => {
  if (!state.token) return;
  const button = $("save");
  button.disabled = true;
  try {
    const response = await fetch(`/api/video?token=${encodeURIComponent(state.token)}`);
    if (!response.ok) { showMessage((await response.json()).detail || `saving failed (${response.status})`); return; }
    const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "")?.[1] || "mirage-play.mp4";
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } finally {
    button.disabled = false;
  }
});

connect();
