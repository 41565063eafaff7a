// Talking portrait: the popup. Settings live in chrome.storage.local (read by background.js when a
// session opens); the state shown comes from the service worker (sessions, the server's stats).
"use strict";

(() => {
  const DEFAULTS = { serviceUrl: "http://127.0.0.1:8080", token: "", portraitName: "", portraitImage: "", portraitFileName: "" };
  const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;
  const $ = (id) => document.getElementById(id);
  let pendingImage = null; // {b64, name} chosen but not saved yet

  function say(text, ok) {
    $("message").textContent = text;
    $("message").className = ok ? "ok" : "bad";
  }

  function bytesToBase64(bytes) {
    let bin = "";
    for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(bin);
  }

  function addPortraitOption(name) {
    const select = $("portraitName");
    if ([...select.options].some((o) => o.value === name)) return;
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    select.append(option);
  }

  function showUpload(name) {
    $("upload").textContent = name ? `Uploaded picture in use: ${name}` : "";
  }

  async function load() {
    const s = { ...DEFAULTS, ...(await chrome.storage.local.get(DEFAULTS)) };
    $("serviceUrl").value = s.serviceUrl;
    $("token").value = s.token;
    if (s.portraitName) addPortraitOption(s.portraitName);
    $("portraitName").value = s.portraitName;
    showUpload(s.portraitImage ? s.portraitFileName || "picture" : "");
  }

  $("portraitFile").addEventListener("change", async () => {
    const file = $("portraitFile").files[0];
    if (!file) return;
    if (file.size > MAX_UPLOAD_BYTES) {
      say("That picture is larger than 20 MB.", false);
      return;
    }
    pendingImage = { b64: bytesToBase64(new Uint8Array(await file.arrayBuffer())), name: file.name };
    say(`${file.name} will be used after Save.`, true);
  });

  $("settings").addEventListener("submit", async (event) => {
    event.preventDefault();
    const serviceUrl = $("serviceUrl").value.trim() || DEFAULTS.serviceUrl;
    try {
      const u = new URL(serviceUrl);
      if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error("scheme");
    } catch {
      say("The service URL must look like http://127.0.0.1:8080", false);
      return;
    }
    const values = { serviceUrl, token: $("token").value, portraitName: $("portraitName").value };
    if (pendingImage) {
      values.portraitImage = pendingImage.b64;
      values.portraitFileName = pendingImage.name;
      pendingImage = null;
    } else if (values.portraitName) {
      values.portraitImage = ""; // a built-in name chosen: it replaces the picture
      values.portraitFileName = "";
    }
    await chrome.storage.local.set(values);
    await load();
    say("Saved. New camera sessions use these settings.", true);
  });

  $("clearUpload").addEventListener("click", async () => {
    await chrome.storage.local.set({ portraitImage: "", portraitFileName: "" });
    pendingImage = null;
    $("portraitFile").value = "";
    await load();
    say("The uploaded picture is forgotten.", true);
  });

  $("check").addEventListener("click", async () => {
    say("Checking…", true);
    const r = await chrome.runtime.sendMessage({ type: "check" });
    if (!r.ok) {
      say(r.message, false);
      return;
    }
    for (const name of r.portraits || []) addPortraitOption(name);
    const mark = r.disclosure && r.disclosure.mark ? "labelled" : "NOT labelled by the server";
    say(`Connected: ${r.width}x${r.height} at ${r.fps} fps, ${mark}; portraits: ${(r.portraits || []).join(", ") || "none"}.`, true);
  });

  async function refresh() {
    let status;
    try { status = await chrome.runtime.sendMessage({ type: "status" }); } catch { return; }
    const list = $("sessions");
    list.textContent = "";
    for (const s of status.sessions) {
      const li = document.createElement("li");
      const latency = s.latency_ms == null ? "" : `, latency ${Math.round(s.latency_ms)} ms`;
      const fps = s.fps == null ? "" : `, ${Number(s.fps).toFixed(0)} fps`;
      li.textContent = `${s.page || "a page"}: ${s.state}${s.state === "connected" ? (s.speaking ? ", speaking" : ", listening") : ""}${fps}${latency}`;
      li.dataset.state = s.state;
      list.append(li);
    }
    if (!status.sessions.length) {
      const li = document.createElement("li");
      li.className = "note";
      li.textContent = "None";
      list.append(li);
    }
    const last = $("lastError");
    last.hidden = !status.lastError;
    if (status.lastError) last.textContent = `Last error: ${status.lastError.message}`;
  }

  load();
  refresh();
  setInterval(refresh, 1000);
})();
