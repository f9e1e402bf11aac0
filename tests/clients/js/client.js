// Runs in the page: one sora-js-sdk connection, reported as events.
//
// Query parameters: role (sendonly | recvonly | sendrecv), url, channel,
// duration (s), videoCodec, colours (comma separated), colourPeriod (s),
// source (canvas: a painted colour sequence | camera: Chromium's fake camera).
//
// Every event goes to window.soraEmit (provided by driver.mjs), which prints
// it as a JSON line. Events mirror the Python clients: start, signaling,
// offer, reoffer, notify, connected, track, colour, frame, frames, audio,
// connect_error, disconnect, done.
import Sora from "/sora.mjs";

const PALETTE = {
  red: [255, 0, 0],
  green: [0, 255, 0],
  blue: [0, 0, 255],
  yellow: [255, 255, 0],
  magenta: [255, 0, 255],
  cyan: [0, 255, 255],
  white: [255, 255, 255],
  black: [0, 0, 0],
};
const MAX_COLOUR_DISTANCE = 80;

const q = new URLSearchParams(location.search);
const role = q.get("role") || "recvonly";
const url = q.get("url");
const channel = q.get("channel");
const duration = Number(q.get("duration") || "15");
const videoCodec = q.get("videoCodec") || null;
const colours = (q.get("colours") || "red,green,blue,yellow").split(",").filter((c) => c);
const colourPeriod = Number(q.get("colourPeriod") || "1");
const source = q.get("source") || "canvas";

function emit(event, fields = {}) {
  const rec = Object.assign({ event, page_t: performance.now() / 1000 }, fields);
  try {
    window.soraEmit(JSON.parse(JSON.stringify(rec)));
  } catch (e) {
    console.error("emit failed", e);
  }
}

function classify(r, g, b) {
  let best = "unknown";
  let bestD = Infinity;
  for (const [name, [pr, pg, pb]] of Object.entries(PALETTE)) {
    const d = Math.hypot(r - pr, g - pg, b - pb);
    if (d < bestD) {
      best = name;
      bestD = d;
    }
  }
  return bestD <= MAX_COLOUR_DISTANCE ? best : "unknown";
}

function summarise(msg) {
  if (msg === null || typeof msg !== "object") return msg;
  const out = {};
  for (const [k, v] of Object.entries(msg)) {
    if (k === "sdp" && typeof v === "string") out.sdp_len = v.length;
    else if (k === "stats" && Array.isArray(v)) out.stats_len = v.length;
    else out[k] = v;
  }
  return out;
}

function paintColours() {
  const canvas = document.getElementById("source");
  const ctx = canvas.getContext("2d");
  const start = performance.now();
  let current = null;
  const paint = () => {
    const elapsed = (performance.now() - start) / 1000;
    const colour = colours[Math.floor(elapsed / colourPeriod) % colours.length];
    const [r, g, b] = PALETTE[colour];
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (colour !== current) {
      current = colour;
      emit("colour", { colour });
    }
  };
  paint();
  // Timers, not requestAnimationFrame: headless pages may not animate.
  setInterval(paint, 1000 / 30);
  return canvas.captureStream(30);
}

async function localStream() {
  if (source === "camera") {
    return navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  }
  const stream = paintColours();
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  for (const t of mic.getAudioTracks()) stream.addTrack(t);
  return stream;
}

// --- receiving ----------------------------------------------------------------

const videoStats = new Map(); // stream id -> {colour, count}
const audioTracks = new Map(); // track id -> stream id

function watchVideo(stream, track) {
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  document.getElementById("remotes").appendChild(video);
  video.play().catch((e) => emit("play_error", { message: String(e) }));
  const canvas = document.createElement("canvas");
  canvas.width = 32;
  canvas.height = 24;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const state = { colour: null, count: 0, lastReport: 0 };
  videoStats.set(stream.id, state);
  const onFrame = (_now, meta) => {
    state.count += 1;
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let r = 0;
    let g = 0;
    let b = 0;
    const n = px.length / 4;
    for (let i = 0; i < px.length; i += 4) {
      r += px[i];
      g += px[i + 1];
      b += px[i + 2];
    }
    r /= n;
    g /= n;
    b /= n;
    const colour = classify(r, g, b);
    if (colour !== state.colour) {
      state.colour = colour;
      emit("frame", {
        stream_id: stream.id,
        colour,
        rgb: [Math.round(r), Math.round(g), Math.round(b)],
        n: state.count,
        width: meta.width,
        height: meta.height,
      });
    }
    const now = performance.now();
    if (now - state.lastReport >= 1000) {
      state.lastReport = now;
      emit("frames", { stream_id: stream.id, count: state.count });
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

function watchAudio(stream, track) {
  audioTracks.set(track.id, stream.id);
  // Chromium decodes a remote audio track only while something plays it.
  const audio = document.createElement("audio");
  audio.autoplay = true;
  audio.srcObject = new MediaStream([track]);
  document.getElementById("remotes").appendChild(audio);
  audio.play().catch((e) => emit("play_error", { kind: "audio", message: String(e) }));
}

async function pollAudio(conn) {
  // Audio presence from the receiver's own counters: samples decoded per track.
  const reported = new Map();
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    if (!conn.pc) continue;
    let stats;
    try {
      stats = await conn.pc.getStats();
    } catch {
      continue;
    }
    for (const s of stats.values()) {
      if (s.type !== "inbound-rtp" || s.kind !== "audio") continue;
      const samples = s.totalSamplesReceived || 0;
      const streamId = audioTracks.get(s.trackIdentifier) || null;
      const key = s.trackIdentifier || s.id;
      if (samples > 0 && samples !== reported.get(key)) {
        reported.set(key, samples);
        emit("audio", {
          stream_id: streamId,
          samples,
          packets: s.packetsReceived || 0,
          level: s.audioLevel === undefined ? null : s.audioLevel,
        });
      }
    }
  }
}

// --- main ---------------------------------------------------------------------

async function main() {
  emit("start", { role, url, channel_id: channel, video_codec: videoCodec, colours, source });
  const sora = Sora.connection([url], false);
  const options = { audio: true, video: true };
  if (videoCodec) options.videoCodecType = videoCodec;
  let conn;
  if (role === "sendonly") conn = sora.sendonly(channel, null, options);
  else if (role === "sendrecv") conn = sora.sendrecv(channel, null, options);
  else conn = sora.recvonly(channel, null, options);

  conn.on("signaling", (ev) => {
    emit("signaling", { type: ev.type, transport: ev.transportType, message: summarise(ev.data) });
    if (ev.type === "onmessage-offer") {
      emit("offer", { connection_id: ev.data.connection_id, mid: ev.data.mid || null });
    } else if (ev.type === "onmessage-re-offer") {
      emit("reoffer", { sdp_len: (ev.data.sdp || "").length });
    }
  });
  conn.on("notify", (msg) => emit("notify", { event_type: msg.event_type, message: msg }));
  conn.on("push", (msg) => emit("push", { message: msg }));
  conn.on("connected", () => emit("connected", { connection_id: conn.connectionId }));
  conn.on("timeout", () => emit("timeout", {}));
  let onDisconnect;
  const disconnected = new Promise((r) => {
    onDisconnect = r;
  });
  conn.on("disconnect", (ev) => {
    emit("disconnect", {
      type: ev.type,
      title: ev.title,
      code: ev.code === undefined ? null : ev.code,
      reason: ev.reason === undefined ? null : ev.reason,
    });
    onDisconnect();
  });
  conn.on("track", (ev) => {
    const stream = ev.streams[0];
    emit("track", { kind: ev.track.kind, stream_id: stream.id, track_id: ev.track.id });
    if (ev.track.kind === "video") watchVideo(stream, ev.track);
    else watchAudio(stream, ev.track);
  });
  conn.on("removetrack", (ev) => emit("removetrack", { track_id: ev.track ? ev.track.id : null }));

  let closed = false;
  const deadline = new Promise((r) => setTimeout(r, duration * 1000));
  try {
    if (role === "recvonly") await conn.connect();
    else await conn.connect(await localStream());
    emit("connect_resolved", { connection_id: conn.connectionId });
    if (role !== "sendonly") pollAudio(conn);
  } catch (e) {
    closed = true;
    emit("connect_error", {
      message: String(e && e.message),
      code: e && e.code !== undefined ? e.code : null,
      reason: e && e.reason !== undefined ? e.reason : null,
    });
  }
  if (!closed) {
    await Promise.race([deadline, disconnected]);
    if (conn.pc || conn.ws) {
      await conn.disconnect();
    }
  }
  emit("done", { connection_id: conn.connectionId });
}

main().catch((e) => emit("error", { message: String(e && e.stack ? e.stack : e) }));
