// Talking portrait: the page's side of the signaling protocol (DESIGN.md section 3).
// One WebSocket session per run: hello -> welcome, portrait (by name or uploaded), a complete offer
// (ICE gathered, no trickle) with the microphone (sendrecv: the voice comes back) and a recvonly
// video transceiver -> answer; stats arrive about once a second; Stop sends bye. No build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    frame: $("frame"), video: $("video"), placeholderText: $("placeholder-text"),
    start: $("start"), stop: $("stop"), state: $("state"), stats: $("stats"),
    builtins: $("builtins"), drop: $("drop"), file: $("file"), portraitStatus: $("portrait-status"),
    error: $("error"), errorText: $("error-text"), errorClose: $("error-close"),
  };

  const ERRORS = {
    busy: "The server is busy right now (all sessions are in use). Please try again in a moment.",
    unauthorized: "This server needs an access token: open the page with ?token=YOUR_TOKEN in the address.",
    bad_portrait: "That picture cannot be used",
    bad_sdp: "The server could not use this browser's connection offer",
    bad_message: "The server did not understand the page (is the page up to date? try reloading)",
    internal: "The server hit a problem and ended this session. Press Start to try again.",
  };
  const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;

  const app = {
    ws: null, pc: null, mic: null, welcome: null, choice: null, running: false,
    serverStats: null, videoStats: null, lastVideo: null, statsTimer: null, closingOnPurpose: false,
    pendingAnswer: null,
  };
  window.portraitApp = app; // for tests and debugging

  // ---- messages to the person -----------------------------------------------------------------
  function showError(text) {
    ui.errorText.textContent = text;
    ui.error.hidden = false;
  }
  function clearError() { ui.error.hidden = true; }
  ui.errorClose.addEventListener("click", clearError);

  function setState(text, speaking = false) {
    ui.state.textContent = text;
    ui.state.classList.toggle("speaking", speaking);
  }

  function describeError(msg) {
    const base = ERRORS[msg.code] || "Something went wrong";
    if (msg.code === "bad_portrait" || msg.code === "bad_sdp" || msg.code === "bad_message") {
      return `${base}: ${msg.message}`;
    }
    return base;
  }

  // ---- the signaling socket -------------------------------------------------------------------
  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  // A message object goes as JSON text; an ArrayBuffer (an uploaded image) as one binary frame.
  function send(obj) {
    if (!app.ws || app.ws.readyState !== WebSocket.OPEN) return;
    app.ws.send(obj instanceof ArrayBuffer ? obj : JSON.stringify(obj));
  }

  function connect() {
    return new Promise((resolve) => {
      const ws = new WebSocket(socketUrl());
      ws.binaryType = "arraybuffer";
      app.ws = ws;
      app.closingOnPurpose = false;
      let welcomed = false;
      ws.onopen = () => {
        const token = new URLSearchParams(location.search).get("token");
        send(token ? { type: "hello", token } : { type: "hello" });
      };
      ws.onmessage = (event) => {
        let msg;
        try { msg = JSON.parse(event.data); } catch { return; }
        if (msg.type === "welcome") {
          welcomed = true;
          onWelcome(msg);
          resolve(true);
        } else {
          onMessage(msg);
        }
      };
      ws.onclose = () => {
        if (app.ws !== ws) return;
        app.ws = null;
        if (!welcomed) resolve(false);
        const wasRunning = app.running;
        stopMedia();
        ui.start.disabled = false; // Start opens a new session
        if (!app.closingOnPurpose) {
          if (ui.error.hidden) showError(welcomed ? "The connection to the server was lost." : "Cannot reach the server.");
          setState("Disconnected");
          setTimeout(reconnect, wasRunning ? 1500 : 3000);
        }
      };
    });
  }

  // A fresh session (after Stop, or after the connection was lost: then the error goes away).
  async function reconnect(afterLoss = true) {
    if (app.ws) return;
    setState("Connecting…");
    if (await connect()) {
      if (afterLoss) clearError();
      await reapplyPortrait();
    }
  }

  function onWelcome(msg) {
    app.welcome = msg;
    ui.builtins.textContent = "";
    for (const name of msg.portraits) {
      const button = document.createElement("button");
      button.textContent = name;
      button.setAttribute("role", "listitem");
      button.addEventListener("click", () => choosePortrait({ name }));
      ui.builtins.append(button);
    }
    markChosen();
    ui.start.disabled = false;
    setState("Ready");
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "portrait":
        ui.portraitStatus.textContent = `${app.choice && app.choice.label ? app.choice.label : "Portrait"}: face found, ready.`;
        ui.portraitStatus.classList.remove("bad");
        ui.portraitStatus.classList.add("ok");
        markChosen();
        break;
      case "answer":
        if (app.pendingAnswer) app.pendingAnswer.resolve(msg.sdp);
        break;
      case "stats":
        app.serverStats = msg;
        renderStats();
        break;
      case "error":
        onServerError(msg);
        break;
      default:
        break;
    }
  }

  function onServerError(msg) {
    if (msg.code === "bad_portrait") {
      // Shown beside the portrait controls (not as a banner): the session goes on.
      ui.portraitStatus.textContent = describeError(msg);
      ui.portraitStatus.classList.remove("ok");
      ui.portraitStatus.classList.add("bad");
      app.choice = app.confirmedChoice || null;
      markChosen();
      return;
    }
    showError(describeError(msg));
    if (app.pendingAnswer) app.pendingAnswer.reject(new Error(msg.message));
    if (msg.code === "busy" || msg.code === "unauthorized") app.closingOnPurpose = true;
  }

  // ---- portraits -----------------------------------------------------------------------------
  function markChosen() {
    for (const button of ui.builtins.children) {
      button.classList.toggle("chosen", !!app.choice && app.choice.name === button.textContent);
    }
  }

  function choosePortrait(choice) {
    if (app.running) return;
    app.confirmedChoice = app.choice;
    app.choice = choice;
    clearError();
    ui.portraitStatus.classList.remove("ok", "bad");
    ui.portraitStatus.textContent = choice.name ? `Loading ${choice.name}…` : `Looking for a face in ${choice.label}…`;
    if (choice.name) {
      choice.label = choice.name;
      send({ type: "portrait", name: choice.name });
    } else {
      send(choice.bytes);
    }
  }

  async function reapplyPortrait() {
    if (!app.choice) return;
    if (app.choice.name) send({ type: "portrait", name: app.choice.name });
    else send(app.choice.bytes);
  }

  async function uploadFile(file) {
    if (!file) return;
    if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
      showError("Please choose a PNG, JPEG or WebP image.");
      return;
    }
    if (file.size > MAX_UPLOAD_BYTES) {
      showError("That image is too large (more than 20 MB).");
      return;
    }
    const bytes = await file.arrayBuffer();
    choosePortrait({ bytes, label: file.name });
  }

  ui.file.addEventListener("change", () => uploadFile(ui.file.files[0]));
  ui.drop.addEventListener("dragover", (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
  ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
  ui.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    ui.drop.classList.remove("over");
    if (e.dataTransfer.files.length) uploadFile(e.dataTransfer.files[0]);
  });

  // ---- media ---------------------------------------------------------------------------------
  function waitForIceGathering(pc, timeoutMs = 5000) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, timeoutMs); // send what we have: the offer is still usable
    });
  }

  async function start() {
    clearError();
    if (!app.ws) await reconnect(false);
    if (!app.ws) return;
    ui.start.disabled = true;
    setState("Asking for the microphone…");
    try {
      app.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
    } catch (err) {
      ui.start.disabled = false;
      setState("Ready");
      if (err && (err.name === "NotAllowedError" || err.name === "SecurityError")) {
        showError("Microphone access was denied. Allow the microphone for this page (the icon in the address bar), then press Start again.");
      } else if (err && err.name === "NotFoundError") {
        showError("No microphone was found. Plug one in and press Start again.");
      } else {
        showError(`The microphone could not be opened (${err && err.name ? err.name : err}).`);
      }
      return;
    }
    app.running = true;
    ui.stop.disabled = false;
    ui.drop.classList.add("disabled");
    setState("Connecting media…");

    const pc = new RTCPeerConnection({ iceServers: [] });
    app.pc = pc;
    const micTrack = app.mic.getAudioTracks()[0];
    pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [app.mic] });
    pc.addTransceiver("video", { direction: "recvonly" });
    const remote = new MediaStream();
    pc.addEventListener("track", (event) => {
      const stream = event.streams && event.streams[0];
      if (stream) {
        ui.video.srcObject = stream;
      } else {
        remote.addTrack(event.track);
        ui.video.srcObject = remote;
      }
      ui.video.play().catch(() => {});
    });
    ui.video.addEventListener("playing", () => ui.frame.classList.add("live"), { once: true });
    pc.addEventListener("connectionstatechange", () => {
      const state = pc.connectionState;
      if (state === "connected") setState("Live: speak!");
      if ((state === "failed" || state === "disconnected") && app.pc === pc) {
        showError("The media connection was lost. Press Start to try again.");
        stop();
      }
    });

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const answer = new Promise((resolve, reject) => { app.pendingAnswer = { resolve, reject }; });
      send({ type: "offer", sdp: pc.localDescription.sdp });
      const sdp = await answer;
      app.pendingAnswer = null;
      if (app.pc !== pc) return;
      await pc.setRemoteDescription({ type: "answer", sdp });
      app.statsTimer = setInterval(pollStats, 1000);
    } catch (err) {
      app.pendingAnswer = null;
      if (app.pc === pc) {
        if (ui.error.hidden) showError(`Could not start the session: ${err.message || err}`);
        stop();
      }
    }
  }

  function stopMedia() {
    if (app.statsTimer) clearInterval(app.statsTimer);
    app.statsTimer = null;
    if (app.pc) app.pc.close();
    app.pc = null;
    if (app.mic) app.mic.getTracks().forEach((t) => t.stop());
    app.mic = null;
    ui.video.srcObject = null;
    ui.frame.classList.remove("live");
    app.running = false;
    app.serverStats = null;
    app.videoStats = null;
    app.lastVideo = null;
    ui.stop.disabled = true;
    ui.drop.classList.remove("disabled");
    ui.stats.innerHTML = "&nbsp;";
  }

  async function stop() {
    const wasConnected = !!app.ws;
    stopMedia();
    if (wasConnected) {
      // The server ends the session on bye; a fresh session is opened for the next Start.
      app.closingOnPurpose = true;
      send({ type: "bye" });
      const old = app.ws;
      app.ws = null;
      if (old) old.close();
    }
    setState("Stopped");
    await reconnect(false);
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);

  // ---- stats -----------------------------------------------------------------------------------
  async function pollStats() {
    if (!app.pc) return;
    const report = await app.pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        const previous = app.lastVideo;
        app.lastVideo = { t: s.timestamp, frames: s.framesDecoded || 0 };
        const fps = previous ? ((app.lastVideo.frames - previous.frames) * 1000) / (s.timestamp - previous.t) : null;
        const jitterMs = s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : null;
        app.videoStats = { fps, jitterMs, framesDecoded: s.framesDecoded || 0 };
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        app.rttMs = s.currentRoundTripTime * 1000;
      }
    });
    renderStats();
  }

  function renderStats() {
    const parts = [];
    const v = app.videoStats;
    const srv = app.serverStats;
    if (v && v.fps !== null) parts.push(`${v.fps.toFixed(1)} fps`);
    else if (srv) parts.push(`${srv.fps.toFixed(1)} fps`);
    if (srv) {
      parts.push(srv.speaking ? "speaking" : "listening");
      setState(srv.speaking ? "Speaking" : "Live: speak!", !!srv.speaking);
    }
    let latency = srv && typeof srv.latency_ms === "number" ? srv.latency_ms : null;
    if (latency !== null) {
      if (v && v.jitterMs !== null) latency += v.jitterMs;
      if (app.rttMs !== undefined) latency += app.rttMs / 2;
      parts.push(`latency ≈ ${Math.round(latency)} ms`);
    }
    ui.stats.textContent = parts.length ? parts.join(" · ") : " ";
  }

  // ---- go ----------------------------------------------------------------------------------------
  if (!window.RTCPeerConnection || !navigator.mediaDevices) {
    showError("This browser cannot do WebRTC here (the page needs https, or localhost, and a current browser).");
  }
  connect().then((ok) => { if (!ok && ui.error.hidden) showError("Cannot reach the server."); });
})();
