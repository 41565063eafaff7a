// Talking portrait: the page's side of the signaling protocol (DESIGN.md section 3).
// One WebSocket = one server session: hello -> welcome, portrait (by name or uploaded), a complete
// offer (ICE gathered, no trickle) with the microphone (sendrecv: the voice comes back), or with no
// microphone at all for a presenter (recvonly audio: the voice of the speech items still comes back),
// and a recvonly video transceiver -> answer; stats arrive about once a second; Stop sends bye.
// Once answered, the portrait also says what is typed (say), plays an uploaded clip (play, base64)
// and stops speaking on request (clear); speaking/spoken events drive the caption under the video,
// and a bad_speech error refuses only that item (shown beside the box; the session goes on).
// No build step.
//
// The server gives a welcomed socket `offer_timeout_s` to send its offer, so the socket opened at
// load (for the portrait list) is closed with `timeout` if the person waits before pressing Start.
// That is not an error for the person: the page forgets the socket and opens a fresh session when
// it needs one (choosing a portrait, Start), re-applying the chosen portrait before the offer.
// Refusals (busy, rate_limited) and lost connections are retried only after a growing pause.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    frame: $("frame"), video: $("video"), placeholderText: $("placeholder-text"),
    disclosure: $("disclosure"), disclosureText: $("disclosure-text"),
    start: $("start"), stop: $("stop"), state: $("state"), stats: $("stats"),
    builtins: $("builtins"), drop: $("drop"), file: $("file"), portraitStatus: $("portrait-status"),
    error: $("error"), errorText: $("error-text"), errorClose: $("error-close"),
    caption: $("caption"), captionText: $("caption-text"), presenter: $("presenter"),
    sayText: $("say-text"), say: $("say"), clip: $("clip"), clipLabel: $("clip-label"),
    stopSpeaking: $("stop-speaking"), speechStatus: $("speech-status"),
  };

  const ERRORS = {
    busy: "The server is busy right now (all sessions are in use). Please try again in a moment.",
    unauthorized: "This server needs an access token: open the page with ?token=YOUR_TOKEN in the address.",
    rate_limited: "Too many wrong access tokens came from your address, so the server is refusing it for a while",
    timeout: "The session timed out. Press Start to begin a new one.",
    bad_portrait: "That picture cannot be used",
    bad_sdp: "The server could not use this browser's connection offer",
    bad_message: "The server did not understand the page (is the page up to date? try reloading)",
    internal: "The server hit a problem and ended this session. Press Start to try again.",
  };
  const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;
  // The server takes a clip of at most [portrait] max_bytes (20 000 000 by default) before base64;
  // a larger `play` would be refused as a bad message and end the session, so the page refuses it.
  const MAX_CLIP_BYTES = 20 * 1000 * 1000;
  const CLIP_CAPTION = "(audio clip)";
  const MAX_SAY_BYTES = 60 * 1000; // one text message ([server] max_text_message_bytes, 65 536 by default)
  const LOST_RETRY_S = [1.5, 3, 6, 12, 30]; // pauses before reconnecting after a lost connection
  const BUSY_RETRY_S = [3, 6, 12, 30, 60]; // pauses before Start may ask a busy server again

  const app = {
    conn: null, // the current socket and what happened on it: {ws, welcomed, answered, error, onPurpose}
    opening: null, // the promise of the socket being opened (true once welcomed)
    connections: 0, // sockets opened so far (for tests and debugging)
    pc: null, mic: null, welcome: null, choice: null, confirmedChoice: null,
    starting: false, running: false, pendingAnswer: null,
    serverStats: null, videoStats: null, lastVideo: null, statsTimer: null,
    lostCount: 0, busyCount: 0, retryTimer: null, holdTimer: null, connectionBanner: false,
    presenter: false, // this session was started without a microphone (recvonly audio)
    speechReady: false, // answered: say, play and clear may be sent
    speechItems: new Map(), // id -> {kind: "say"|"clip", text} of the items sent and not yet spoken
    speechCount: 0, speakingId: null, // the item heard now (its text is the caption)
    get ws() { return this.conn ? this.conn.ws : null; },
  };
  window.portraitApp = app; // for tests and debugging

  // ---- messages to the person -----------------------------------------------------------------
  function showError(text, aboutConnection = false) {
    ui.errorText.textContent = text;
    ui.error.hidden = false;
    app.connectionBanner = aboutConnection;
  }
  function clearError() {
    ui.error.hidden = true;
    app.connectionBanner = false;
  }
  ui.errorClose.addEventListener("click", clearError);

  function setState(text, speaking = false) {
    ui.state.textContent = text;
    ui.state.classList.toggle("speaking", speaking);
  }

  // Seconds the server asks us to wait ("... try again in 12 s."), or null.
  function retryAfterS(msg) {
    const match = /(\d+(?:\.\d+)?)\s*s\b/.exec(msg.message || "");
    return match ? Math.max(1, Math.ceil(Number(match[1]))) : null;
  }

  function describeError(msg) {
    const base = ERRORS[msg.code] || "Something went wrong";
    if (msg.code === "bad_portrait" || msg.code === "bad_sdp" || msg.code === "bad_message") {
      return `${base}: ${msg.message}`;
    }
    if (msg.code === "unauthorized" && new URLSearchParams(location.search).get("token")) {
      return "The access token in the address (?token=…) is not the one this server needs.";
    }
    if (msg.code === "rate_limited") {
      const wait = retryAfterS(msg);
      return `${base}. Check the token in the address, then try again in ${wait ? `${wait} s` : "a minute"}.`;
    }
    if (msg.code === "timeout" && msg.message) {
      return `${msg.message.replace(/\s*$/, "")} Press Start to begin a new one.`;
    }
    return base;
  }

  // ---- disclosure: the portrait is synthetic, and the page says so whenever a video shows ---------
  // welcome.disclosure says what the server puts into every frame: a visible label (mark) and an
  // invisible watermark. The page's own label does not depend on either.
  function disclosureText(d) {
    if (!d || typeof d.mark !== "boolean" || typeof d.watermark !== "boolean") {
      return "Synthetic video, made from a still photo.";
    }
    if (d.mark && d.watermark) return "Synthetic video, labelled and watermarked.";
    if (d.mark) return "Synthetic video, labelled (this server adds no watermark).";
    if (d.watermark) return "Synthetic video (watermarked). This server draws no label into the frames.";
    return "Synthetic video. This server adds no label and no watermark to the frames.";
  }

  function showDisclosure(visible) {
    ui.disclosureText.textContent = disclosureText(app.welcome && app.welcome.disclosure);
    ui.disclosure.hidden = !visible;
  }

  // ---- the signaling socket -------------------------------------------------------------------
  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  function sessionOpen() {
    const c = app.conn;
    return !!c && c.welcomed && c.ws.readyState === WebSocket.OPEN;
  }

  // A message object goes as JSON text; an ArrayBuffer (an uploaded image) as one binary frame.
  function send(obj) {
    if (!app.ws || app.ws.readyState !== WebSocket.OPEN) return;
    app.ws.send(obj instanceof ArrayBuffer ? obj : JSON.stringify(obj));
  }

  // Resolves true once a welcomed session is open (opening one if needed: hello, then the chosen
  // portrait again), false if none could be opened (the reason is already on screen).
  function ensureSession() {
    if (sessionOpen()) return Promise.resolve(true);
    if (app.retryTimer) clearTimeout(app.retryTimer);
    app.retryTimer = null;
    if (!app.opening) {
      app.opening = openSocket().finally(() => { app.opening = null; });
    }
    return app.opening;
  }

  function openSocket() {
    return new Promise((resolve) => {
      const ws = new WebSocket(socketUrl());
      ws.binaryType = "arraybuffer";
      const conn = { ws, welcomed: false, answered: false, error: null, onPurpose: false };
      app.conn = conn;
      app.connections += 1;
      if (!app.welcome && !app.starting) setState("Connecting…");
      ws.onopen = () => {
        const token = new URLSearchParams(location.search).get("token");
        ws.send(JSON.stringify(token ? { type: "hello", token } : { type: "hello" }));
      };
      ws.onmessage = (event) => {
        if (app.conn !== conn) return;
        let msg;
        try { msg = JSON.parse(event.data); } catch { return; }
        if (msg.type === "welcome") {
          conn.welcomed = true;
          onWelcome(msg);
          resolve(true);
        } else {
          onMessage(conn, msg);
        }
      };
      ws.onclose = () => {
        if (!conn.welcomed) resolve(false);
        if (app.conn === conn) onSocketClosed(conn);
      };
    });
  }

  function onWelcome(msg) {
    app.welcome = msg;
    showDisclosure(!ui.disclosure.hidden); // a fresh session's server may say otherwise
    app.lostCount = 0;
    const names = msg.portraits.join("\n");
    if (ui.builtins.dataset.names !== names) {
      ui.builtins.dataset.names = names;
      ui.builtins.textContent = "";
      for (const name of msg.portraits) {
        const button = document.createElement("button");
        button.textContent = name;
        button.setAttribute("role", "listitem");
        button.addEventListener("click", () => choosePortrait({ name, label: name }));
        ui.builtins.append(button);
      }
    }
    markChosen();
    if (app.connectionBanner) clearError(); // "connection lost" / "busy" no longer holds
    reapplyPortrait(); // a fresh session starts with the default portrait: send the chosen one again
    if (!app.starting && !app.running && !app.holdTimer) {
      ui.start.disabled = false;
      setState("Ready");
    }
  }

  function onMessage(conn, msg) {
    switch (msg.type) {
      case "portrait":
        app.confirmedChoice = app.choice;
        ui.portraitStatus.textContent = `${app.choice && app.choice.label ? app.choice.label : "Portrait"}: face found, ready.`;
        ui.portraitStatus.classList.remove("bad");
        ui.portraitStatus.classList.add("ok");
        markChosen();
        break;
      case "answer":
        conn.answered = true;
        if (app.pendingAnswer) app.pendingAnswer.resolve(msg.sdp);
        break;
      case "stats":
        app.serverStats = msg;
        renderStats();
        break;
      case "speaking":
        onSpeaking(msg);
        break;
      case "spoken":
        onSpoken(msg);
        break;
      case "error":
        onServerError(conn, msg);
        break;
      default:
        break;
    }
  }

  // Every error but bad_portrait and bad_speech is followed by the server closing the socket
  // (onSocketClosed).
  function onServerError(conn, msg) {
    if (msg.code === "bad_speech") { // one speech item refused, shown beside the box: the session goes on
      onSpeechRefused(msg);
      return;
    }
    if (msg.code === "bad_portrait") {
      // Shown beside the portrait controls (not as a banner): the session goes on.
      ui.portraitStatus.textContent = describeError(msg);
      ui.portraitStatus.classList.remove("ok");
      ui.portraitStatus.classList.add("bad");
      app.choice = app.confirmedChoice;
      markChosen();
      return;
    }
    conn.error = msg;
    if (quietEnd(conn)) return;
    showError(describeError(msg), msg.code === "busy");
  }

  // A welcomed session the server ends before its offer because it waited too long for one
  // (timeout), or, while the page is idle, to make room for others (busy): nothing to tell the
  // person. The next action opens a fresh session (start() does so itself if it was starting).
  function quietEnd(conn) {
    const code = conn.error && conn.error.code;
    if (!conn.welcomed || conn.answered) return false;
    return code === "timeout" || (code === "busy" && !app.starting);
  }

  function onSocketClosed(conn) {
    app.conn = null;
    if (app.pendingAnswer) {
      const err = new Error(conn.error ? conn.error.message : "the connection to the server was lost");
      err.retry = !!conn.error && conn.error.code === "timeout"; // the offer came too late: send it again
      app.pendingAnswer.reject(err);
      app.pendingAnswer = null;
    }
    if (conn.onPurpose || quietEnd(conn)) return;
    const code = conn.error && conn.error.code;
    if (conn.answered) {
      // A running session ended: say why (the banner for an error is already up); Start opens a new one.
      stopMedia();
      if (!code) showError("The connection to the server was lost. Press Start to try again.");
      ui.start.disabled = false;
      setState(code === "timeout" ? "Session ended" : "Disconnected");
      return;
    }
    if (code === "busy" || code === "rate_limited") {
      // Refused: Start may ask again only after a pause (growing while the server stays busy).
      const pause = code === "rate_limited"
        ? retryAfterS(conn.error) || 10
        : BUSY_RETRY_S[Math.min(app.busyCount++, BUSY_RETRY_S.length - 1)];
      holdStart(pause, code === "busy" && !app.welcome);
      return;
    }
    if (app.starting) return; // start() reports what went wrong
    if (code) { // unauthorized, bad_message, internal: shown; the person decides what next
      ui.start.disabled = false;
      setState(app.welcome ? "Ready" : "Not connected");
      return;
    }
    // Lost without a word (the server went away, the network): reconnect after a growing pause.
    const pause = LOST_RETRY_S[Math.min(app.lostCount++, LOST_RETRY_S.length - 1)];
    showError(conn.welcomed ? "The connection to the server was lost. Reconnecting…" : "Cannot reach the server; trying again shortly.", true);
    ui.start.disabled = false;
    setState("Disconnected");
    app.retryTimer = setTimeout(() => { app.retryTimer = null; ensureSession(); }, pause * 1000);
  }

  // Keep Start disabled for `seconds`, counting down; then ask again by itself if `retry`.
  function holdStart(seconds, retry) {
    if (app.holdTimer) clearInterval(app.holdTimer);
    const until = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      if (left > 0) {
        ui.start.disabled = true;
        setState(retry ? `Trying again in ${left} s` : `Start again in ${left} s`);
        return;
      }
      clearInterval(app.holdTimer);
      app.holdTimer = null;
      ui.start.disabled = false;
      setState(app.welcome ? "Ready" : "Not connected");
      if (retry) ensureSession();
    };
    app.holdTimer = setInterval(tick, 250);
    tick();
  }

  // ---- portraits -----------------------------------------------------------------------------
  function markChosen() {
    for (const button of ui.builtins.children) {
      button.classList.toggle("chosen", !!app.choice && app.choice.name === button.textContent);
    }
  }

  function sendPortrait(choice) {
    send(choice.name ? { type: "portrait", name: choice.name } : choice.bytes);
  }

  async function choosePortrait(choice) {
    if (app.running || app.starting) return;
    app.choice = choice;
    clearError();
    ui.portraitStatus.classList.remove("ok", "bad");
    ui.portraitStatus.textContent = choice.name ? `Loading ${choice.name}…` : `Looking for a face in ${choice.label}…`;
    markChosen();
    if (sessionOpen()) {
      sendPortrait(choice);
    } else if (app.holdTimer || !(await ensureSession())) {
      // The session could not be opened (the reason is on screen); the choice is sent with the next.
      ui.portraitStatus.textContent = `${choice.label}: chosen, sent when the server answers.`;
    } // else: the fresh session's welcome sent it (reapplyPortrait)
  }

  function reapplyPortrait() {
    if (app.choice) sendPortrait(app.choice);
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

  // Send the offer on an open session and wait for the answer. A session that timed out before
  // the offer reached the server (a slow microphone prompt, say) is replaced once, quietly.
  async function exchangeOffer(sdp) {
    for (let attempt = 0; ; attempt += 1) {
      if (!(await ensureSession())) throw new Error("Cannot reach the server.");
      const answer = new Promise((resolve, reject) => { app.pendingAnswer = { resolve, reject }; });
      send({ type: "offer", sdp });
      try {
        return await answer;
      } catch (err) {
        if (!err.retry || attempt > 0) throw err;
      }
    }
  }

  async function start() {
    if (app.starting || app.running) return;
    clearError();
    app.starting = true;
    app.presenter = ui.presenter.checked;
    ui.start.disabled = true;
    setPresenterEnabled(false);
    const session = ensureSession(); // opened while the person answers the microphone prompt
    if (!app.presenter) {
      setState("Asking for the microphone…");
      try {
        app.mic = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
          video: false,
        });
      } catch (err) {
        app.starting = false;
        ui.start.disabled = false;
        setPresenterEnabled(true);
        setState("Ready");
        const instead = "Or tick “Presenter: no microphone” and press Start: the portrait then says what you type.";
        if (err && (err.name === "NotAllowedError" || err.name === "SecurityError")) {
          showError(`Microphone access was denied. Allow the microphone for this page (the icon in the address bar), then press Start again. ${instead}`);
        } else if (err && err.name === "NotFoundError") {
          showError(`No microphone was found. Plug one in and press Start again. ${instead}`);
        } else {
          showError(`The microphone could not be opened (${err && err.name ? err.name : err}). ${instead}`);
        }
        return;
      }
    }
    app.running = true;
    ui.stop.disabled = false;
    ui.drop.classList.add("disabled");
    setState("Connecting media…");

    const pc = new RTCPeerConnection({ iceServers: [] });
    app.pc = pc;
    if (app.mic) {
      const micTrack = app.mic.getAudioTracks()[0];
      pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [app.mic] });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" }); // a presenter: only the portrait's voice
    }
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
    ui.video.addEventListener("playing", () => {
      ui.frame.classList.add("live");
      showDisclosure(true);
    }, { once: true });
    pc.addEventListener("connectionstatechange", () => {
      const state = pc.connectionState;
      if (state === "connected" && app.pc === pc) setState(liveText());
      if ((state === "failed" || state === "disconnected") && app.pc === pc) {
        showError("The media connection was lost. Press Start to try again.");
        stop();
      }
    });

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      if (!(await session)) throw new Error("Cannot reach the server."); // refused: no second try
      const sdp = await exchangeOffer(pc.localDescription.sdp);
      if (app.pc !== pc) return;
      await pc.setRemoteDescription({ type: "answer", sdp });
      app.busyCount = 0;
      app.statsTimer = setInterval(pollStats, 1000);
      setSpeechReady(true);
    } catch (err) {
      if (app.pc === pc) {
        if (ui.error.hidden) showError(`Could not start the session: ${err.message || err}`);
        stop(app.welcome ? "Ready" : "Not connected");
      }
    } finally {
      app.starting = false;
    }
  }

  function stopMedia() {
    if (app.statsTimer) clearInterval(app.statsTimer);
    app.statsTimer = null;
    if (app.pendingAnswer) app.pendingAnswer.reject(new Error("stopped"));
    app.pendingAnswer = null;
    if (app.pc) app.pc.close();
    app.pc = null;
    if (app.mic) app.mic.getTracks().forEach((t) => t.stop());
    app.mic = null;
    ui.video.srcObject = null;
    ui.frame.classList.remove("live");
    showDisclosure(false);
    app.running = false;
    setSpeechReady(false);
    setPresenterEnabled(true);
    app.serverStats = null;
    app.videoStats = null;
    app.lastVideo = null;
    ui.stop.disabled = true;
    ui.drop.classList.remove("disabled");
    ui.stats.textContent = "\u00a0";
  }

  // End the session (bye: the server closes it); the next Start or portrait opens a fresh one.
  function stop(state = "Stopped") {
    const conn = app.conn;
    stopMedia();
    if (conn) {
      conn.onPurpose = true;
      send({ type: "bye" });
      app.conn = null;
      conn.ws.close();
    }
    if (!app.holdTimer) {
      ui.start.disabled = false;
      setState(state);
    }
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", () => stop());

  // ---- speech items: say, play, clear; the caption ---------------------------------------------
  function liveText() {
    return app.presenter ? "Live: type what it says" : "Live: speak!";
  }

  function setPresenterEnabled(enabled) {
    ui.presenter.disabled = !enabled;
    ui.presenter.closest("label").classList.toggle("disabled", !enabled);
  }

  function setSpeechStatus(text, kind = "") {
    ui.speechStatus.textContent = text || "\u00a0";
    ui.speechStatus.classList.toggle("ok", kind === "ok");
    ui.speechStatus.classList.toggle("bad", kind === "bad");
  }

  // The caption line keeps its place under the video while a session runs (so the buttons below
  // do not jump), empty between items; a long text shows its first lines, all of it on hover.
  function setCaption(text, isClip = false) {
    ui.captionText.textContent = text;
    ui.caption.title = text;
    ui.caption.classList.toggle("clip", isClip);
    ui.caption.classList.toggle("empty", !text);
  }

  // The speech controls work only while a session runs (the server refuses items before its answer).
  function setSpeechReady(ready) {
    app.speechReady = ready;
    for (const el of [ui.sayText, ui.say, ui.clip, ui.stopSpeaking]) el.disabled = !ready;
    ui.clipLabel.classList.toggle("disabled", !ready);
    ui.caption.hidden = !ready;
    if (ready) {
      setSpeechStatus(app.presenter ? "Type a sentence and press Say (or Enter)." : "Type a sentence and press Say, or just speak.");
    } else {
      app.speechItems.clear();
      app.speakingId = null;
      setCaption("");
      setSpeechStatus("Press Start first: the portrait speaks during a session.");
    }
  }

  function sendSpeech(kind, message, text) {
    if (!app.speechReady || !sessionOpen()) return null;
    app.speechCount += 1;
    const id = `${kind}-${app.speechCount}`;
    app.speechItems.set(id, { kind, text });
    send({ ...message, id });
    return id;
  }

  // Sent as typed, even empty: the server says what it cannot speak (bad_speech, shown beside the box).
  // Only a text too long for one message is refused here: the server would end the session for it.
  function say() {
    const text = ui.sayText.value;
    if (new TextEncoder().encode(JSON.stringify({ type: "say", text, id: "say-000000" })).length > MAX_SAY_BYTES) {
      setSpeechStatus("That text is too long to send. Say it in shorter parts.", "bad");
      return;
    }
    if (!sendSpeech("say", { type: "say", text }, text)) return;
    ui.sayText.value = "";
    setSpeechStatus(`Queued: “${text.length > 60 ? `${text.slice(0, 60)}…` : text}”`);
    ui.sayText.focus();
  }

  function readAsBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = String(reader.result);
        resolve(url.slice(url.indexOf(",") + 1)); // data:<type>;base64,<the file>
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function playClip(file) {
    if (!file || !app.speechReady) return;
    if (file.size > MAX_CLIP_BYTES) {
      setSpeechStatus(`That clip is too large (${(file.size / 1e6).toFixed(1)} MB; at most 20 MB). Choose a shorter one.`, "bad");
      return;
    }
    if (file.size === 0) {
      setSpeechStatus("That clip is empty.", "bad");
      return;
    }
    setSpeechStatus(`Sending ${file.name}…`);
    let audio;
    try {
      audio = await readAsBase64(file);
    } catch (err) {
      setSpeechStatus(`${file.name} could not be read (${err && err.name ? err.name : err}).`, "bad");
      return;
    }
    if (sendSpeech("clip", { type: "play", audio }, file.name)) setSpeechStatus(`Queued: ${file.name}`);
  }

  function onSpeaking(msg) {
    const item = app.speechItems.get(msg.id);
    app.speakingId = msg.id;
    const isClip = typeof msg.text !== "string";
    setCaption(isClip ? CLIP_CAPTION : msg.text, isClip);
    if (item && ui.speechStatus.classList.contains("bad") === false) {
      setSpeechStatus(item.kind === "clip" ? `Playing ${item.text}` : "Speaking…", "ok");
    }
  }

  function onSpoken(msg) {
    app.speechItems.delete(msg.id);
    if (msg.id === app.speakingId) {
      app.speakingId = null;
      setCaption("");
      if (!ui.speechStatus.classList.contains("bad")) {
        setSpeechStatus(msg.interrupted ? "Stopped." : app.speechItems.size ? "Next…" : "Done.");
      }
    }
  }

  function onSpeechRefused(msg) {
    const item = msg.id ? app.speechItems.get(msg.id) : null;
    if (msg.id) app.speechItems.delete(msg.id);
    const what = item ? (item.kind === "clip" ? `${item.text} cannot be played` : "That text cannot be spoken") : "That cannot be spoken";
    setSpeechStatus(`${what}: ${msg.message || "the server refused it"}.`.replace(/\.\.$/, "."), "bad");
    if (item && item.kind === "say" && !ui.sayText.value) ui.sayText.value = item.text; // to correct it
  }

  ui.say.addEventListener("click", say);
  ui.sayText.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.isComposing) {
      e.preventDefault();
      say();
    }
  });
  ui.sayText.addEventListener("input", () => {
    if (ui.speechStatus.classList.contains("bad")) setSpeechStatus("");
  });
  ui.clip.addEventListener("change", () => {
    const file = ui.clip.files[0];
    ui.clip.value = ""; // the same file may be chosen again
    playClip(file);
  });
  ui.stopSpeaking.addEventListener("click", () => {
    if (!app.speechReady) return;
    send({ type: "clear" });
  });

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
    if (!app.running) return;
    const parts = [];
    const v = app.videoStats;
    const srv = app.serverStats;
    if (v && v.fps !== null) parts.push(`${v.fps.toFixed(1)} fps`);
    else if (srv) parts.push(`${srv.fps.toFixed(1)} fps`);
    if (srv) {
      parts.push(srv.speaking ? "speaking" : "listening");
      setState(srv.speaking ? "Speaking" : liveText(), !!srv.speaking);
    }
    let latency = srv && typeof srv.latency_ms === "number" ? srv.latency_ms : null;
    if (latency !== null) {
      if (v && v.jitterMs !== null) latency += v.jitterMs;
      if (app.rttMs !== undefined) latency += app.rttMs / 2;
      parts.push(`latency ≈ ${Math.round(latency)} ms`);
    }
    ui.stats.textContent = parts.length ? parts.join(" · ") : "\u00a0";
  }

  // ---- go ----------------------------------------------------------------------------------------
  if (!window.RTCPeerConnection || !navigator.mediaDevices) {
    showError("This browser cannot do WebRTC here (the page needs https, or localhost, and a current browser).");
  }
  ensureSession();
})();
