// Call set-up timed phase by phase, for lab/browsersetup.py, in headless Chromium on the page the
// transceiver serves (for its origin). Gathering happens before the clock starts (no trickle:
// the offer carries the host candidates); then, from the POST: the answer, ICE connected, DTLS
// connected (RTCPeerConnection "connected"), the first packet of the server's own audio (a
// greet-echo app's greeting: its Opus payload F8 FF FE) and the first echo of ours (any other
// payload), both seen as encoded frames as they arrive (encoded insertable streams), before any
// jitter buffer. Resolves to {answer_ms, ice_ms, dtls_ms, greeting_ms, echo_ms, error}.
async ({ greeting }) => {
  const result = { error: null };
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  for (const sender of pc.getSenders()) {
    const { readable, writable } = sender.createEncodedStreams();
    readable.pipeTo(writable); // untouched: the API needs both ends wired once enabled
  }
  let t0 = 0;
  const since = () => performance.now() - t0;
  let echoed;
  const echo = new Promise((resolve) => (echoed = resolve));
  pc.ontrack = (ev) => {
    const { readable, writable } = ev.receiver.createEncodedStreams();
    const isGreeting = (data) => {
      const b = new Uint8Array(data);
      return b.length === greeting.length && greeting.every((x, i) => b[i] === x);
    };
    const tap = new TransformStream({
      transform(frame, controller) {
        if (t0 && result.echo_ms === undefined) {
          if (isGreeting(frame.data)) {
            if (result.greeting_ms === undefined) result.greeting_ms = since();
          } else {
            result.echo_ms = since();
            echoed();
          }
        }
        controller.enqueue(frame);
      },
    });
    readable.pipeThrough(tap).pipeTo(writable);
  };
  pc.oniceconnectionstatechange = () => {
    if (pc.iceConnectionState === "connected" && result.ice_ms === undefined) result.ice_ms = since();
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected" && result.dtls_ms === undefined) result.dtls_ms = since();
  };
  let location = null;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
    });
    const headers = { "Content-Type": "application/sdp" };
    if (typeof window.getEdgeToken === "function")
      headers["Authorization"] = "Bearer " + (await window.getEdgeToken());
    await (await fetch("/healthz")).text(); // the HTTP connection is open before the clock starts
    t0 = performance.now();
    const resp = await fetch("/v1/calls", { method: "POST", headers, body: pc.localDescription.sdp });
    const answer = await resp.text();
    if (resp.status !== 201) throw new Error("POST answered " + resp.status + ": " + answer);
    result.answer_ms = since();
    location = resp.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    await Promise.race([
      echo,
      new Promise((_, reject) => setTimeout(() => reject(new Error("no echo within 10 s")), 10000)),
    ]);
  } catch (e) {
    result.error = String(e);
  } finally {
    if (location) await fetch(location, { method: "DELETE" }).catch(() => {});
    pc.close();
    stream.getTracks().forEach((t) => t.stop());
  }
  return result;
};
