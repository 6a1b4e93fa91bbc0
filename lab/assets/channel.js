// The data channel check that lab/browserchannel.py runs in headless Chromium, on the page the
// transceiver serves (for its origin): a call with a fake microphone and an `oai-events` data
// channel, JSON text and binary messages of every size sent one at a time, each echo compared
// byte for byte, while the echoed audio is counted. Resolves to one result object.
async ({ sizes, label, packets }) => {
  const result = { state: "new", sent: 0, echoed: 0, bad: [], rtt_ms: {}, error: null };
  const started = performance.now();
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection();
  // As in OpenAI's WebRTC example: the microphone, then `oai-events`. (Chromium puts the audio
  // m-line first either way; the aiortc tests cover the application m-line first.)
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  const dc = pc.createDataChannel(label);
  dc.binaryType = "arraybuffer";
  const inbound = [];
  const waiting = [];
  dc.onmessage = (ev) => {
    const next = waiting.shift();
    if (next) next(ev.data);
    else inbound.push(ev.data);
  };
  const nextMessage = (ms) =>
    new Promise((resolve, reject) => {
      if (inbound.length) return resolve(inbound.shift());
      const timer = setTimeout(() => reject(new Error("no echo within " + ms + " ms")), ms);
      waiting.push((data) => {
        clearTimeout(timer);
        resolve(data);
      });
    });
  const audioPackets = async () => {
    let n = 0;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") n += r.packetsReceived || 0;
    });
    return n;
  };
  const opened = new Promise((resolve, reject) => {
    dc.onopen = resolve;
    setTimeout(() => reject(new Error("data channel did not open")), 20000);
  });
  let location = null;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    result.first_mline = (pc.localDescription.sdp.match(/^m=(\w+)/m) || [])[1] || null;
    // No trickle ICE: the server wants our (host) candidates in the offer.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
    });
    // A single-use client token from the embedding page (lab.browsercall.mint_token), if any.
    const headers = { "Content-Type": "application/sdp" };
    if (typeof window.getEdgeToken === "function")
      headers["Authorization"] = "Bearer " + (await window.getEdgeToken());
    const resp = await fetch("/v1/calls", { method: "POST", headers, body: pc.localDescription.sdp });
    const answer = await resp.text();
    if (resp.status !== 201) throw new Error("POST answered " + resp.status + ": " + answer);
    location = resp.headers.get("Location");
    result.max_message_size = (answer.match(/a=max-message-size:(\d+)/) || [])[1] || null;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    await opened;
    result.state = pc.connectionState;
    result.setup_ms = performance.now() - started;
    // Audio first: the messages go back and forth while the echo is flowing.
    const audioDeadline = performance.now() + 10000;
    while ((await audioPackets()) < 10 && performance.now() < audioDeadline)
      await new Promise((r) => setTimeout(r, 50));
    result.audio_before = await audioPackets();
    const messages = ["", new ArrayBuffer(0)];
    sizes.forEach((n, i) => {
      // JSON text of exactly n bytes (ASCII): a number when short, else an event object.
      const head = '{"type":"browser.event","seq":' + i + ',"pad":"';
      messages.push(n < 64 ? "1".repeat(n) : head + "x".repeat(n - head.length - 2) + '"}');
      const bin = new Uint8Array(n);
      for (let off = 0; off < n; off += 65536) crypto.getRandomValues(bin.subarray(off, off + 65536));
      messages.push(bin.buffer);
    });
    for (const msg of messages) {
      const t0 = performance.now();
      dc.send(msg);
      result.sent++;
      const back = await nextMessage(10000);
      const ms = performance.now() - t0;
      const isText = typeof msg === "string";
      const size = isText ? new TextEncoder().encode(msg).length : msg.byteLength;
      let same;
      if (isText) same = back === msg;
      else if (!(back instanceof ArrayBuffer) || back.byteLength !== size) same = false;
      else {
        const a = new Uint8Array(msg), b = new Uint8Array(back);
        same = a.every((v, k) => v === b[k]);
      }
      if (!same) result.bad.push((isText ? "text " : "binary ") + size);
      else result.echoed++;
      (result.rtt_ms[size] = result.rtt_ms[size] || []).push(Math.round(ms * 1000) / 1000);
    }
    // The audio echo kept coming while (and after) the messages went back and forth.
    const deadline = performance.now() + 10000;
    while ((await audioPackets()) < result.audio_before + packets && performance.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    result.audio_after = await audioPackets();
  } catch (err) {
    result.error = String(err);
    result.state = pc.connectionState === "connected" ? "error" : "failed";
  } finally {
    if (location) await fetch(location, { method: "DELETE" }).catch(() => null);
    pc.close();
    stream.getTracks().forEach((t) => t.stop());
  }
  return result;
}
