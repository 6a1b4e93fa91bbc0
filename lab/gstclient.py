"""A WHIP call on GStreamer's webrtcbin (libnice ICE, GStreamer's DTLS/SRTP): a second client
stack besides aiortc and Chromium (run in a client netns, with Debian's /usr/bin/python3).

    /usr/bin/python3 -m lab.gstclient [--api-keys FILE] [--packets N] [--timeout S] URL

An Opus tone (audiotestsrc ! opusenc ! rtpopuspay) goes out on a max-bundle, non-trickle offer
(posted once ICE gathering is complete); the echoed RTP packets are counted at the depayloader.
After N packets (default 50) or the timeout it hangs up with DELETE and prints one JSON line:
{"state", "packets", "setup_ms", "error"}; exit 1 when the call did not connect.

Only stdlib, gi and transceiver.auth (stdlib only): Debian's GStreamer bindings are not in the
project's venv, so lab.peer (aiohttp, aiortc) cannot be imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

from transceiver.auth import read_key_file  # noqa: E402

CALLS_PATH = "/v1/calls"  # transceiver.server.CALLS_PATH (not importable without the venv)
TOKENS_PATH = "/v1/tokens"
PIPELINE = (
    "webrtcbin name=rtc bundle-policy=max-bundle "
    "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! "
    "opusenc ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,"
    "clock-rate=48000,payload=111 ! rtc."
)


def http(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
    """One request: (status, headers-and-body); error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, (resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, (exc.headers, exc.read())


def client_token(url: str, api_key: str) -> str:
    """lab.peer.client_token in urllib: mint a single-use client token as an app server does."""
    status, (_, body) = http("POST", url + TOKENS_PATH, b"", {"Authorization": f"Bearer {api_key}"})
    if status != 201:
        raise RuntimeError(f"POST {TOKENS_PATH} answered {status}: {body[:200]!r}")
    return str(json.loads(body)["value"])


class GstCall:
    def __init__(self, url: str, token: str | None, want: int) -> None:
        self.url, self.token, self.want = url, token, want
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(PIPELINE)
        self.rtc = self.pipe.get_by_name("rtc")
        self.packets = 0
        self.state = "new"
        self.error: str | None = None
        self.location: str | None = None
        self.t0 = time.monotonic()
        self.setup_ms: float | None = None
        self.rtc.connect("on-negotiation-needed", self._negotiate)
        self.rtc.connect("pad-added", self._echo_pad)
        self.rtc.connect("notify::ice-gathering-state", self._gathered)
        self.rtc.connect("notify::connection-state", self._connection)
        self.pipe.get_bus().add_signal_watch()
        self.pipe.get_bus().connect("message::error", self._bus_error)

    def run(self, timeout: float) -> dict[str, Any]:
        GLib.timeout_add(int(timeout * 1000), self._stop, "timeout")
        self.pipe.set_state(Gst.State.PLAYING)
        self.loop.run()
        state = self.state  # the call's state at the end, before teardown closes it
        self.pipe.set_state(Gst.State.NULL)
        if self.location:
            status, _ = http("DELETE", self.location, None, self._auth())
            if status not in (200, 204) and not self.error:
                self.error = f"DELETE answered {status}"
        return {
            "state": state,
            "packets": self.packets,
            "setup_ms": self.setup_ms,
            "error": self.error,
        }

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _stop(self, why: str | None = None) -> bool:
        if why and self.packets < self.want and not self.error:
            self.error = f"{why}: {self.packets} of {self.want} echoed packets"
        self.loop.quit()
        return False

    def _fail(self, error: str) -> None:
        self.error = self.error or error
        self._stop()

    def _bus_error(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        err, debug = msg.parse_error()
        self._fail(f"{err.message} ({debug})")

    def _negotiate(self, rtc: Gst.Element) -> None:
        rtc.emit("create-offer", None, Gst.Promise.new_with_change_func(self._offered, None))

    def _offered(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply and reply.has_field("offer") else None
        if offer is None:
            GLib.idle_add(self._fail, f"create-offer failed: {reply and reply.to_string()}")
            return
        self.rtc.emit("set-local-description", offer, Gst.Promise.new())

    def _gathered(self, rtc: Gst.Element, _pspec: object) -> None:
        # non-trickle: the offer is posted once, with every candidate in it
        if rtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        sdp = rtc.get_property("local-description").sdp.as_text()
        threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, sdp: str) -> None:
        headers = {"Content-Type": "application/sdp", **self._auth()}
        try:
            status, (hdrs, body) = http("POST", self.url + CALLS_PATH, sdp.encode(), headers)
        except OSError as exc:
            GLib.idle_add(self._fail, f"POST {CALLS_PATH}: {exc}")
            return
        if status != 201:
            GLib.idle_add(self._fail, f"POST {CALLS_PATH} answered {status}: {body[:200]!r}")
            return
        location = hdrs.get("Location", "")
        self.location = location if "://" in location else self.url + location
        GLib.idle_add(self._answer, body.decode())

    def _answer(self, text: str) -> bool:
        ok, msg = GstSdp.SDPMessage.new_from_text(text)
        if ok != GstSdp.SDPResult.OK:
            self._fail("the answer is not SDP")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.rtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def _connection(self, rtc: Gst.Element, _pspec: object) -> None:
        state = rtc.get_property("connection-state")
        self.state = state.value_nick
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and self.setup_ms is None:
            self.setup_ms = round((time.monotonic() - self.t0) * 1000, 1)
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self._fail("connection failed")

    def _echo_pad(self, _rtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        # the echo: depayload (proves it is Opus RTP) and count each packet at the depayloader
        depay = Gst.ElementFactory.make("rtpopusdepay")
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        for element in (depay, sink):
            self.pipe.add(element)
            element.sync_state_with_parent()
        depay.link(sink)
        depay.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._counted)
        pad.link(depay.get_static_pad("sink"))

    def _counted(self, _pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        self.packets += 1
        if self.packets == self.want:
            GLib.idle_add(self._stop)
        return Gst.PadProbeReturn.OK


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.gstclient", description=__doc__)
    # lab.peer.add_api_keys_option's flag; lab.peer needs the venv, so it is declared here
    parser.add_argument("--api-keys", metavar="FILE", default=os.environ.get("TXR_API_KEYS_FILE"))
    parser.add_argument("--packets", type=int, default=50, help="echoed packets to wait for")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole call")
    parser.add_argument("url", help="the transceiver's base URL (http://host:port)")
    args = parser.parse_args(argv)
    Gst.init(None)
    result: dict[str, Any]
    try:
        token = client_token(args.url, read_key_file(args.api_keys)[0]) if args.api_keys else None
        result = GstCall(args.url.rstrip("/"), token, args.packets).run(args.timeout)
    except Exception as exc:  # reported as the JSON line: the caller reads one document
        result = {"state": "failed", "packets": 0, "setup_ms": None, "error": str(exc)}
    print(json.dumps(result), flush=True)
    return 0 if result["state"] == "connected" and result["setup_ms"] is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
