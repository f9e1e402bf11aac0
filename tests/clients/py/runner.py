"""One sora-sdk connection with JSON-lines reporting, shared by the clients.

publisher.py, subscriber.py and sendrecv.py are thin wrappers around `run`.
What each role does:

  sendonly / sendrecv  paint solid frames whose colour steps through
                       --colours (each for --colour-period seconds, cycling)
                       and send a 440 Hz tone;
  recvonly / sendrecv  decode every received video track, classify each
                       frame's mean colour and report colour changes, and
                       poll every received audio track for samples.

Events (one JSON object per line, see common.emit):
  start, signaling {direction, type, message}, offer, reoffer, set_offer,
  notify {message}, connected, push, track {kind, stream_id},
  colour (publisher: colour now painted), frame {stream_id, colour},
  frames {stream_id, count}, audio {stream_id, samples, rms},
  ws_close {code, reason}, disconnect {error_code, message}, done.
"""

import argparse
import math
import threading
import time

from common import (
    classify_bgr_frame,
    emit,
    exit_now,
    now,
    parse_colours,
    parse_json,
    solid_bgr_frame,
    summarise_message,
)

WIDTH, HEIGHT, FPS = 320, 240, 30
SAMPLE_RATE, TONE_HZ, CHUNK = 48000, 440.0, 480  # 10 ms of mono audio


def parse_args(role_default, description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", required=True, help="signaling URL, ws://host:port/signaling")
    p.add_argument("--channel", required=True, help="channel_id")
    p.add_argument("--role", default=role_default, choices=["sendonly", "recvonly", "sendrecv"])
    p.add_argument("--video-codec", default=None, help="VP8, VP9, AV1 or H264")
    p.add_argument("--duration", type=float, default=15.0, help="seconds before disconnecting")
    p.add_argument("--colours", default="red,green,blue,yellow", help="comma separated")
    p.add_argument("--colour-period", type=float, default=1.0, help="seconds per colour")
    p.add_argument("--client-id", default=None)
    p.add_argument("--metadata", default=None, help="JSON for the connect message's metadata")
    p.add_argument("--no-audio", action="store_true")
    p.add_argument("--no-video", action="store_true")
    return p.parse_args()


class Client:
    def __init__(self, args):
        import numpy
        import sora_sdk

        self.np = numpy
        self.sdk = sora_sdk
        self.args = args
        self.colours = parse_colours(args.colours)
        self.sends = args.role in ("sendonly", "sendrecv")
        self.stop = threading.Event()
        self.disconnected = threading.Event()
        self.connection_id = None
        self.sinks = []  # keep sinks (and so their tracks) alive
        self.audio_sinks = []  # (stream_id, sink)
        self.audio_lock = threading.Lock()
        self.video_state = {}  # stream_id -> [last colour, frame count]
        self.video_lock = threading.Lock()

        self.sora = sora_sdk.Sora()
        self.video_source = None
        self.audio_source = None
        if self.sends:
            if not args.no_video:
                self.video_source = self.sora.create_video_source()
            if not args.no_audio:
                self.audio_source = self.sora.create_audio_source(1, SAMPLE_RATE)

        kwargs = dict(
            signaling_urls=[args.url],
            role=args.role,
            channel_id=args.channel,
            audio=not args.no_audio,
            video=not args.no_video,
        )
        if self.video_source is not None:
            kwargs["video_source"] = self.video_source
        if self.audio_source is not None:
            kwargs["audio_source"] = self.audio_source
        if args.video_codec:
            kwargs["video_codec_type"] = args.video_codec
        if args.client_id:
            kwargs["client_id"] = args.client_id
        if args.metadata:
            kwargs["metadata"] = parse_json(args.metadata)
        self.conn = self.sora.create_connection(**kwargs)
        c = self.conn
        c.on_signaling_message = self.on_signaling_message
        c.on_set_offer = self.on_set_offer
        c.on_notify = self.on_notify
        c.on_push = self.on_push
        c.on_ws_close = self.on_ws_close
        c.on_disconnect = self.on_disconnect
        c.on_track = self.on_track

    # --- callbacks (run on sora-sdk's threads) --------------------------------

    def on_signaling_message(self, sig_type, direction, message):
        msg = parse_json(message)
        mtype = msg.get("type") if isinstance(msg, dict) else None
        dirname = "sent" if direction == self.sdk.SoraSignalingDirection.SENT else "received"
        emit(
            "signaling",
            direction=dirname,
            transport="websocket" if sig_type == self.sdk.SoraSignalingType.WEBSOCKET else "datachannel",
            type=mtype,
            message=summarise_message(msg) if msg is not None else message[:2000],
        )
        if dirname == "received" and mtype == "offer":
            self.connection_id = msg.get("connection_id")
            emit("offer", connection_id=self.connection_id, mid=msg.get("mid"))
        elif dirname == "received" and mtype == "re-offer":
            emit("reoffer", sdp_len=len(msg.get("sdp", "")))

    def on_set_offer(self, offer):
        emit("set_offer")

    def on_notify(self, text):
        msg = parse_json(text)
        emit("notify", event_type=(msg or {}).get("event_type"), message=msg)
        if (
            isinstance(msg, dict)
            and msg.get("event_type") == "connection.created"
            and msg.get("connection_id") == self.connection_id
        ):
            emit("connected", connection_id=self.connection_id)

    def on_push(self, text):
        emit("push", message=parse_json(text))

    def on_ws_close(self, code, reason):
        emit("ws_close", code=code, reason=reason)

    def on_disconnect(self, error_code, message):
        emit("disconnect", error_code=getattr(error_code, "name", str(error_code)), message=message)
        self.disconnected.set()
        self.stop.set()

    def on_track(self, track):
        kind, stream_id = track.kind, track.stream_id
        emit("track", kind=kind, stream_id=stream_id, track_id=track.id)
        if kind == "video":
            sink = self.sdk.SoraVideoSink(track)
            sink.on_frame = lambda frame, sid=stream_id: self.on_frame(sid, frame)
            self.sinks.append(sink)
        elif kind == "audio":
            sink = self.sdk.SoraAudioSink(track, SAMPLE_RATE, 1)
            self.sinks.append(sink)
            with self.audio_lock:
                self.audio_sinks.append([stream_id, sink, 0, 0.0])

    def on_frame(self, stream_id, frame):
        data = frame.data()
        colour, rgb = classify_bgr_frame(data)
        with self.video_lock:
            state = self.video_state.setdefault(stream_id, [None, 0, 0.0])
            state[1] += 1
            changed = colour != state[0]
            state[0] = colour
            count = state[1]
            report_count = time.monotonic() - state[2] >= 1.0
            if report_count:
                state[2] = time.monotonic()
        if changed:
            h, w = data.shape[0], data.shape[1]
            emit("frame", stream_id=stream_id, colour=colour, rgb=rgb, n=count, width=w, height=h)
        if report_count:
            emit("frames", stream_id=stream_id, count=count)

    # --- threads ---------------------------------------------------------------

    def poll_audio(self):
        """Polls the non-blocking read(0) of each audio sink every ~20 ms."""
        last_report = 0.0
        while not self.stop.is_set():
            with self.audio_lock:
                sinks = list(self.audio_sinks)
            for entry in sinks:
                stream_id, sink = entry[0], entry[1]
                ok, data = sink.read(0)
                if ok and data is not None and data.size > 0:
                    first = entry[2] == 0
                    entry[2] += int(data.shape[0])
                    rms = float(self.np.sqrt(self.np.mean(data.astype(self.np.float64) ** 2)))
                    entry[3] = max(entry[3] * 0.9, rms)
                    if first:
                        emit("audio", stream_id=stream_id, samples=entry[2], rms=round(rms, 1))
            if time.monotonic() - last_report >= 1.0 and sinks:
                last_report = time.monotonic()
                for stream_id, _sink, samples, rms in sinks:
                    if samples:
                        emit("audio", stream_id=stream_id, samples=samples, rms=round(rms, 1))
            time.sleep(0.02)

    def feed_audio(self):
        """Sends a 440 Hz tone in 10 ms chunks, paced by the clock."""
        np = self.np
        phase = 0
        start = time.monotonic()
        sent = 0
        while not self.stop.is_set():
            t = (np.arange(CHUNK) + phase) / SAMPLE_RATE
            chunk = (np.sin(2 * math.pi * TONE_HZ * t) * 8000).astype(np.int16).reshape(CHUNK, 1)
            self.audio_source.on_data(chunk)
            phase += CHUNK
            sent += 1
            delay = start + sent * CHUNK / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def feed_video(self):
        """Paints solid frames at FPS, stepping through the colours."""
        frames = {c: solid_bgr_frame(self.np, c, WIDTH, HEIGHT) for c in self.colours}
        start = time.monotonic()
        n = 0
        current = None
        while not self.stop.is_set():
            elapsed = time.monotonic() - start
            colour = self.colours[int(elapsed / self.args.colour_period) % len(self.colours)]
            if colour != current:
                current = colour
                emit("colour", colour=colour)
            self.video_source.on_captured(frames[colour])
            n += 1
            delay = start + n / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    # --- main --------------------------------------------------------------------

    def run(self):
        emit(
            "start",
            role=self.args.role,
            channel_id=self.args.channel,
            url=self.args.url,
            video_codec=self.args.video_codec,
            colours=self.colours,
            colour_period=self.args.colour_period,
            sdk_version=getattr(self.sdk, "__version__", None),
        )
        threads = []
        if self.video_source is not None:
            threads.append(threading.Thread(target=self.feed_video, daemon=True))
        if self.audio_source is not None:
            threads.append(threading.Thread(target=self.feed_audio, daemon=True))
        if self.args.role in ("recvonly", "sendrecv"):
            threads.append(threading.Thread(target=self.poll_audio, daemon=True))
        self.conn.connect()
        for th in threads:
            th.start()
        self.stop.wait(self.args.duration)
        reason = "server" if self.disconnected.is_set() else "duration"
        if not self.disconnected.is_set():
            # disconnect() waits for the server's close; never let it hang us.
            closer = threading.Thread(target=self.conn.disconnect, daemon=True)
            closer.start()
            self.disconnected.wait(5.0)
        self.stop.set()
        emit("done", reason=reason, connection_id=self.connection_id)
        exit_now(0)


def main(role_default, description):
    args = parse_args(role_default, description)
    try:
        Client(args).run()
    except BaseException as e:  # report, then leave without sora-sdk teardown
        emit("error", error=repr(e))
        exit_now(1)
