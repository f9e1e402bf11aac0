// Drives one sora-js-sdk client in headless Chromium and prints its events
// as JSON lines on stdout.
//
//   node driver.mjs --role sendonly|recvonly|sendrecv --url ws://127.0.0.1:5000/signaling
//                   --channel ch [--duration 15] [--video-codec VP8] [--colours red,green]
//                   [--colour-period 1] [--source canvas|camera]
//
// The page is served by this driver from http://127.0.0.1:<free port>:
// Chromium's local network access checks block a page loaded from file://
// (or from another origin) from opening ws://127.0.0.1. Chromium is Debian's
// (/usr/bin/chromium, or $CHROMIUM_PATH); playwright-core never downloads one.
//
// Exit code: 0 when the page reported "done", 1 on a page error or when the
// page did not finish within duration + 60 s.
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const T0 = performance.now();

function emit(event, fields = {}) {
  const rec = Object.assign({ event, t: Math.round(performance.now() - T0) / 1000 }, fields);
  process.stdout.write(`${JSON.stringify(rec)}\n`);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2);
    const value = argv[i + 1];
    if (value === undefined || value.startsWith("--")) throw new Error(`--${key} needs a value`);
    out[key] = value;
    i++;
  }
  for (const k of ["url", "channel"]) if (!out[k]) throw new Error(`--${k} is required`);
  return out;
}

const FILES = {
  "/": ["index.html", "text/html"],
  "/index.html": ["index.html", "text/html"],
  "/client.js": ["client.js", "text/javascript"],
  "/sora.mjs": ["node_modules/sora-js-sdk/dist/sora.mjs", "text/javascript"],
};

function serve() {
  const server = http.createServer(async (req, res) => {
    const file = FILES[new URL(req.url, "http://x").pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(path.join(HERE, file[0]));
      res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" }).end(body);
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const duration = Number(args.duration || "15");
  const server = await serve();
  const port = server.address().port;
  const query = new URLSearchParams({
    role: args.role || "recvonly",
    url: args.url,
    channel: args.channel,
    duration: String(duration),
    colours: args.colours || "red,green,blue,yellow",
    colourPeriod: args["colour-period"] || "1",
    source: args.source || "canvas",
  });
  if (args["video-codec"]) query.set("videoCodec", args["video-codec"]);

  const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--disable-background-networking",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
  emit("browser", { version: browser.version(), page: `http://127.0.0.1:${port}/` });
  let exitCode = 1;
  try {
    const page = await browser.newPage();
    let finish;
    const finished = new Promise((r) => {
      finish = r;
    });
    await page.exposeFunction("soraEmit", (rec) => {
      const { event, ...rest } = rec;
      emit(event, rest);
      if (event === "done") finish(0);
      if (event === "error") finish(1);
    });
    page.on("console", (m) => process.stderr.write(`[console.${m.type()}] ${m.text()}\n`));
    page.on("pageerror", (e) => {
      emit("page_error", { message: String(e && e.message) });
    });
    await page.goto(`http://127.0.0.1:${port}/index.html?${query}`);
    const timer = new Promise((r) => setTimeout(() => r("timeout"), (duration + 60) * 1000));
    const result = await Promise.race([finished, timer]);
    if (result === "timeout") emit("driver_timeout", { after_s: duration + 60 });
    else exitCode = result;
  } finally {
    await browser.close().catch(() => {});
    server.close();
  }
  emit("driver_exit", { code: exitCode });
  process.exit(exitCode);
}

main().catch((e) => {
  emit("driver_error", { message: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
