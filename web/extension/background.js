// Talking portrait: the service worker. It owns every signalling WebSocket (DESIGN.md section 3):
// its Origin is chrome-extension://ID, which the service accepts by default, while a page on another
// origin would be refused. One port from a tab's bridge.js = one server session:
//   hello (token) -> welcome -> portrait (a built-in name, or the uploaded image as one binary
//   frame) -> "ready" to the page -> the page's offer -> answer to the page -> stats (kept for the popup).
// The page's RTCPeerConnection never sees the token. A closed port (tracks stopped, tab closed)
// sends bye and closes the socket at once.
"use strict";

const DEFAULTS = { serviceUrl: "http://127.0.0.1:8080", token: "", portraitName: "", portraitImage: "" };
const CONNECT_TIMEOUT_MS = 10000; // socket open + welcome + portrait
const ANSWER_TIMEOUT_MS = 15000;

const MESSAGES = {
  unauthorized: "the service refused the access token (unauthorized). Set the right token in the extension's popup.",
  rate_limited: "too many wrong access tokens came from this computer, so the service refuses it for a while",
  busy: "the service is busy (all its sessions are in use). Try again in a moment.",
  timeout: "the service ended the session because it waited too long",
  bad_portrait: "the chosen portrait cannot be used",
  bad_sdp: "the service could not use this browser's connection offer",
};

const sessions = new Map(); // number -> session record (for the popup)
let nextSession = 1;
let lastError = null; // {message, at}

async function settings() {
  const stored = await chrome.storage.local.get(DEFAULTS);
  return { ...DEFAULTS, ...stored };
}

// http(s)://host:port[/path] -> ws(s)://host:port/ws
function socketUrl(serviceUrl) {
  const url = new URL(serviceUrl || DEFAULTS.serviceUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.pathname = "/ws";
  url.search = "";
  url.hash = "";
  return url.href;
}

function base64ToBytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function readable(code, serverMessage) {
  const base = MESSAGES[code];
  if (code === "bad_portrait" || code === "bad_sdp" || code === "rate_limited") {
    return `Talking portrait: ${base}${serverMessage ? `: ${serverMessage}` : ""}`;
  }
  if (base) return `Talking portrait: ${base}`;
  return `Talking portrait: the service reported an error (${code})${serverMessage ? `: ${serverMessage}` : ""}`;
}

// One session: a WebSocket to the service, driven by messages from one port.
function startSession(port, open) {
  const record = {
    id: nextSession++, tab: port.sender && port.sender.tab ? port.sender.tab.id : null,
    page: open.page || (port.sender && port.sender.origin) || "", state: "connecting",
    speaking: false, latency_ms: null, fps: null, fresh_fps: null, server_session: null, error: null,
    started: Date.now(),
  };
  sessions.set(record.id, record);
  let ws = null;
  let ended = false;
  let timer = null;
  let portOpen = true;

  const post = (msg) => { if (portOpen) { try { port.postMessage(msg); } catch { portOpen = false; } } };
  const arm = (ms, what) => {
    clearTimeout(timer);
    timer = setTimeout(() => fail("timeout", `Talking portrait: the service did not ${what} within ${ms / 1000} s.`), ms);
  };
  function end(sendBye) {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    if (ws) {
      if (sendBye && ws.readyState === WebSocket.OPEN) {
        try { ws.send(JSON.stringify({ type: "bye" })); } catch { /* closing anyway */ }
      }
      try { ws.close(1000, "bye"); } catch { /* already closed */ }
    }
    sessions.delete(record.id);
  }
  function fail(code, message) {
    if (ended) return;
    record.error = message;
    lastError = { message, at: Date.now() };
    post({ type: "error", code, message });
    end(true);
    if (portOpen) { portOpen = false; port.disconnect(); }
  }

  port.onDisconnect.addListener(() => { portOpen = false; end(true); });
  port.onMessage.addListener((msg) => {
    if (msg.type === "offer" && ws && ws.readyState === WebSocket.OPEN) {
      record.state = "offering";
      ws.send(JSON.stringify({ type: "offer", sdp: msg.sdp }));
      arm(ANSWER_TIMEOUT_MS, "answer the connection offer");
    } else if (msg.type === "close") {
      portOpen = false;
      end(true);
    }
  });

  settings().then((s) => {
    if (ended) return;
    let url;
    try {
      url = socketUrl(s.serviceUrl);
    } catch {
      fail("config", `Talking portrait: the service URL "${s.serviceUrl}" is not a valid address; fix it in the extension's popup.`);
      return;
    }
    record.url = url;
    arm(CONNECT_TIMEOUT_MS, "welcome this session");
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let welcomed = false;
    let closedByServerError = false;
    ws.onopen = () => ws.send(JSON.stringify(s.token ? { type: "hello", token: s.token } : { type: "hello" }));
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      switch (msg.type) {
        case "welcome":
          welcomed = true;
          record.server_session = msg.session;
          record.state = "choosing portrait";
          if (s.portraitImage) {
            ws.send(base64ToBytes(s.portraitImage));
          } else if (s.portraitName) {
            ws.send(JSON.stringify({ type: "portrait", name: s.portraitName }));
          } else {
            clearTimeout(timer);
            record.state = "ready";
            post({ type: "ready", welcome: msg });
          }
          break;
        case "portrait":
          if (record.state === "choosing portrait") {
            clearTimeout(timer);
            record.state = "ready";
            post({ type: "ready" });
          }
          break;
        case "answer":
          clearTimeout(timer);
          record.state = "connected";
          post({ type: "answer", sdp: msg.sdp });
          break;
        case "stats":
          record.speaking = !!msg.speaking;
          record.latency_ms = msg.latency_ms ?? null;
          record.fps = msg.fps ?? null;
          record.fresh_fps = msg.fresh_fps ?? null;
          break;
        case "error":
          closedByServerError = true;
          fail(msg.code, readable(msg.code, msg.message));
          break;
        default:
          break;
      }
    };
    ws.onclose = (event) => {
      if (ended || closedByServerError) return;
      if (!welcomed) {
        fail("unreachable", `Talking portrait: cannot reach the service at ${s.serviceUrl} (is \`avatar serve\` running, and is this its address? Set it in the extension's popup). WebSocket closed with code ${event.code}.`);
      } else {
        fail("closed", "Talking portrait: the service ended the session.");
      }
    };
  });
}

chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== "session") return;
  const first = (msg) => {
    port.onMessage.removeListener(first);
    if (msg && msg.type === "open") startSession(port, msg);
  };
  port.onMessage.addListener(first);
});

// The popup asks for the state, and may check the settings (hello, welcome with the portrait list, bye).
chrome.runtime.onMessage.addListener((msg, sender, reply) => {
  if (!msg || sender.id !== chrome.runtime.id) return false;
  if (msg.type === "status") {
    reply({ sessions: [...sessions.values()], lastError });
    return false;
  }
  if (msg.type === "check") {
    check().then(reply);
    return true;
  }
  return false;
});

async function check() {
  const s = await settings();
  let url;
  try { url = socketUrl(s.serviceUrl); } catch { return { ok: false, message: `"${s.serviceUrl}" is not a valid address.` }; }
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const done = (result) => { clearTimeout(timer); try { ws.close(); } catch { /* closed */ } resolve(result); };
    const timer = setTimeout(() => done({ ok: false, message: "The service did not answer within 5 s." }), 5000);
    ws.onopen = () => ws.send(JSON.stringify(s.token ? { type: "hello", token: s.token } : { type: "hello" }));
    ws.onmessage = (event) => {
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (msg.type === "welcome") {
        try { ws.send(JSON.stringify({ type: "bye" })); } catch { /* closing */ }
        done({ ok: true, portraits: msg.portraits, disclosure: msg.disclosure, width: msg.width, height: msg.height, fps: msg.fps });
      } else if (msg.type === "error") {
        done({ ok: false, code: msg.code, message: readable(msg.code, msg.message) });
      }
    };
    ws.onclose = () => done({ ok: false, message: `Cannot reach the service at ${s.serviceUrl}.` });
  });
}
