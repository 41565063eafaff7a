// Talking portrait: the ISOLATED-world content script. It relays between the page world (page.js,
// window.postMessage) and the service worker (background.js, one chrome.runtime port per session).
// The page world cannot use chrome.* APIs, and a WebSocket opened from a page or a content script
// carries the page's Origin, which the service refuses (HTTP 403) for pages on other origins.
"use strict";

(() => {
  const TO_EXT = "talking-portrait:to-extension";
  const TO_PAGE = "talking-portrait:to-page";
  const ports = new Map(); // session id -> chrome.runtime.Port

  function toPage(id, msg) {
    window.postMessage({ channel: TO_PAGE, id, msg }, "*");
  }

  window.addEventListener("message", (event) => {
    if (event.source !== window || !event.data || event.data.channel !== TO_EXT) return;
    const { id, msg } = event.data;
    if (typeof id !== "string" || !msg || typeof msg.type !== "string") return;
    if (msg.type === "open") {
      if (ports.has(id)) return;
      let port;
      try {
        port = chrome.runtime.connect({ name: "session" });
      } catch (err) { // the extension was reloaded or removed under this page
        toPage(id, { type: "error", code: "extension", message: `The extension is not available (${err.message}); reload the page.` });
        return;
      }
      ports.set(id, port);
      port.onMessage.addListener((m) => toPage(id, m));
      port.onDisconnect.addListener(() => {
        ports.delete(id);
        toPage(id, { type: "closed" });
      });
      port.postMessage({ type: "open", audio: !!msg.audio, page: location.origin });
      return;
    }
    const port = ports.get(id);
    if (!port) return;
    if (msg.type === "close") {
      try { port.postMessage({ type: "close" }); } catch { /* already gone */ }
      port.disconnect();
      ports.delete(id);
      return;
    }
    if (msg.type === "offer" && typeof msg.sdp === "string") port.postMessage({ type: "offer", sdp: msg.sdp });
  });
})();
