// Talking portrait: the MAIN-world content script (runs at document_start, before the page).
// It adds a camera "Talking portrait" to navigator.mediaDevices.enumerateDevices(), and answers a
// getUserMedia() that asks for it with a MediaStream whose video is the portrait received from the
// service and, when audio was asked for, whose audio is the voice the service returns (in sync).
// Everything else goes to the browser's own getUserMedia unchanged.
//
// The RTCPeerConnection lives here, in the page, so that its received tracks can be handed to the
// page. Signalling goes through bridge.js (ISOLATED world) to the service worker, which holds the
// WebSocket and the token: see README.md for why.
"use strict";

(() => {
  const md = navigator.mediaDevices;
  if (!md || typeof md.getUserMedia !== "function" || md.__talkingPortrait) return;
  Object.defineProperty(md, "__talkingPortrait", { value: true });

  const DEVICE_ID = "talking-portrait-camera";
  const GROUP_ID = "talking-portrait";
  const LABEL = "Talking portrait";
  const TO_EXT = "talking-portrait:to-extension";
  const TO_PAGE = "talking-portrait:to-page";
  const READY_TIMEOUT_MS = 15000; // the service worker's own timeouts are shorter: its message wins
  const ANSWER_TIMEOUT_MS = 20000;
  const ICE_GATHER_TIMEOUT_MS = 5000;
  const CONNECT_TIMEOUT_MS = 10000;

  const originalEnumerate = md.enumerateDevices.bind(md);
  const originalGetUserMedia = md.getUserMedia.bind(md);
  const sessions = new Map(); // id -> {onMessage}

  window.addEventListener("message", (event) => {
    if (event.source !== window || !event.data || event.data.channel !== TO_PAGE) return;
    const session = sessions.get(event.data.id);
    if (session) session.onMessage(event.data.msg || {});
  });

  function toExtension(id, msg) {
    window.postMessage({ channel: TO_EXT, id, msg }, "*");
  }

  function fakeDevice() {
    const proto = typeof InputDeviceInfo === "function" ? InputDeviceInfo.prototype : MediaDeviceInfo.prototype;
    const info = Object.create(proto);
    const fields = { deviceId: DEVICE_ID, groupId: GROUP_ID, kind: "videoinput", label: LABEL };
    for (const [key, value] of Object.entries(fields)) {
      Object.defineProperty(info, key, { value, enumerable: true });
    }
    Object.defineProperty(info, "toJSON", { value: () => ({ ...fields }) });
    Object.defineProperty(info, "getCapabilities", {
      value: () => ({ deviceId: DEVICE_ID, groupId: GROUP_ID, width: { min: 1, max: 1024 }, height: { min: 1, max: 1024 } }),
    });
    return info;
  }

  md.enumerateDevices = async function enumerateDevices() {
    const devices = await originalEnumerate();
    // After the other cameras, so that a page which takes the first camera keeps its own.
    const lastVideo = devices.map((d) => d.kind).lastIndexOf("videoinput");
    const at = lastVideo >= 0 ? lastVideo + 1 : devices.length;
    return [...devices.slice(0, at), fakeDevice(), ...devices.slice(at)];
  };

  // Does this video constraint ask for the portrait? A string, {exact}, {ideal}, or a list of them.
  function asksForPortrait(video) {
    if (!video || typeof video !== "object") return false;
    const matches = (v) => v === DEVICE_ID || (Array.isArray(v) && v.includes(DEVICE_ID));
    const id = video.deviceId;
    if (id === undefined) {
      return Array.isArray(video.advanced) && video.advanced.some((c) => c && asksForPortrait(c));
    }
    if (matches(id)) return true;
    return !!id && typeof id === "object" && (matches(id.exact) || matches(id.ideal));
  }

  function notReadable(message) {
    return new DOMException(message, "NotReadableError");
  }

  function withTimeout(promise, ms, message) {
    let timer;
    return Promise.race([
      promise,
      new Promise((_, reject) => { timer = setTimeout(() => reject(notReadable(message)), ms); }),
    ]).finally(() => clearTimeout(timer));
  }

  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, ICE_GATHER_TIMEOUT_MS); // send what was gathered so far
    });
  }

  function connected(pc) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pc.connectionState === "connected") resolve();
        else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          reject(notReadable("Talking portrait: the media connection to the service failed (ICE). Is the service reachable from this browser?"));
        }
      };
      pc.addEventListener("connectionstatechange", check);
      check();
    });
  }

  async function portraitStream(constraints) {
    const wantAudio = !!constraints.audio;
    // The real microphone, through the browser's own getUserMedia (its errors are the page's to see).
    const mic = await originalGetUserMedia({ audio: wantAudio ? constraints.audio : true });
    const id = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2);
    let pc = null;
    let ended = false;
    let waiting = null; // {type, resolve, reject}
    let failure = null;

    const end = () => {
      if (ended) return;
      ended = true;
      sessions.delete(id);
      toExtension(id, { type: "close" });
      if (pc) pc.close();
      for (const t of mic.getTracks()) t.stop();
    };
    sessions.set(id, {
      onMessage(msg) {
        if (msg.type === "error" || msg.type === "closed") {
          failure = notReadable(msg.message || "Talking portrait: the extension ended the session.");
          if (waiting) waiting.reject(failure);
          waiting = null;
          if (msg.type === "closed" || msg.type === "error") end();
        } else if (waiting && msg.type === waiting.type) {
          waiting.resolve(msg);
          waiting = null;
        }
      },
    });
    const next = (type) => (failure ? Promise.reject(failure) : new Promise((resolve, reject) => { waiting = { type, resolve, reject }; }));

    try {
      const ready = next("ready");
      toExtension(id, { type: "open", audio: wantAudio });
      await withTimeout(ready, READY_TIMEOUT_MS, "Talking portrait: the extension got no session from the service in time.");

      pc = new RTCPeerConnection();
      const micTrack = mic.getAudioTracks()[0];
      pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [mic] });
      const video = pc.addTransceiver("video", { direction: "recvonly" });
      const audio = pc.getTransceivers()[0];
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const answer = next("answer");
      toExtension(id, { type: "offer", sdp: pc.localDescription.sdp });
      const { sdp } = await withTimeout(answer, ANSWER_TIMEOUT_MS, "Talking portrait: the service did not answer the connection offer in time.");
      await pc.setRemoteDescription({ type: "answer", sdp });
      await withTimeout(connected(pc), CONNECT_TIMEOUT_MS, "Talking portrait: the media connection to the service did not come up in time.");

      const tracks = [video.receiver.track];
      if (wantAudio) tracks.push(audio.receiver.track);
      const live = new Set(tracks);
      for (const track of tracks) {
        const stop = track.stop.bind(track);
        Object.defineProperty(track, "stop", {
          value: function stopTrack() {
            stop();
            live.delete(track);
            if (live.size === 0) end(); // every returned track stopped: the session ends now
          },
        });
        Object.defineProperty(track, "label", { value: track.kind === "video" ? LABEL : `${LABEL} (voice)` });
        if (track.kind === "video") {
          const settingsOf = track.getSettings.bind(track);
          Object.defineProperty(track, "getSettings", {
            value: () => ({ ...settingsOf(), deviceId: DEVICE_ID, groupId: GROUP_ID }),
          });
        }
      }
      window.addEventListener("pagehide", end, { once: true });
      return new MediaStream(tracks);
    } catch (err) {
      end();
      if (err instanceof DOMException) throw err;
      throw notReadable(`Talking portrait: ${err && err.message ? err.message : err}`);
    }
  }

  md.getUserMedia = function getUserMedia(constraints) {
    if (constraints && asksForPortrait(constraints.video)) return portraitStream(constraints);
    return originalGetUserMedia(constraints);
  };
})();
