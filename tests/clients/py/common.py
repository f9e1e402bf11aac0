"""Shared pieces of the Python test clients.

Every client prints one JSON object per line on stdout, each with an "event"
name and "t", the seconds since the client started. The Rust harness
(tests/src/lib.rs) reads these lines while the client runs.

The sora-sdk process must end with os._exit(): letting the interpreter tear
down the connection objects crashes now and then.
"""

import json
import os
import sys
import threading
import time

T0 = time.monotonic()
_out_lock = threading.Lock()

# Colours the publishers paint and the subscribers recognise, as RGB.
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

# A decoded solid frame lands within a few units of the colour that was
# painted; anything farther than this (in RGB distance) is a blend or a
# corrupt frame and is reported as "unknown".
MAX_COLOUR_DISTANCE = 80.0


def now():
    return round(time.monotonic() - T0, 3)


def emit(event, **fields):
    """Prints one JSON line on stdout and flushes it at once."""
    rec = {"event": event, "t": now()}
    rec.update(fields)
    line = json.dumps(rec, default=str, allow_nan=False)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def exit_now(code=0):
    """Ends the process without running the sora-sdk destructors."""
    with _out_lock:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def classify_rgb(r, g, b):
    best, best_d = "unknown", None
    for name, (pr, pg, pb) in PALETTE.items():
        d = ((r - pr) ** 2 + (g - pg) ** 2 + (b - pb) ** 2) ** 0.5
        if best_d is None or d < best_d:
            best, best_d = name, d
    if best_d is None or best_d > MAX_COLOUR_DISTANCE:
        return "unknown"
    return best


def classify_bgr_frame(frame):
    """Classifies an HxWx3 uint8 BGR ndarray by the mean of a sparse grid."""
    sample = frame[::8, ::8, :]
    b, g, r = (float(sample[:, :, i].mean()) for i in range(3))
    return classify_rgb(r, g, b), (round(r), round(g), round(b))


def parse_colours(text):
    colours = [c.strip() for c in text.split(",") if c.strip()]
    for c in colours:
        if c not in PALETTE:
            raise SystemExit(f"unknown colour {c!r}; known: {', '.join(PALETTE)}")
    if not colours:
        raise SystemExit("--colours needs at least one colour")
    return colours


def solid_bgr_frame(np, colour, width, height):
    r, g, b = PALETTE[colour]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, :] = (b, g, r)
    return frame


def parse_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def summarise_message(msg):
    """A signaling message without its bulky fields (SDP, stats)."""
    if not isinstance(msg, dict):
        return msg
    out = {}
    for k, v in msg.items():
        if k == "sdp" and isinstance(v, str):
            out["sdp_len"] = len(v)
        elif k == "stats":
            out["stats_len"] = len(v) if isinstance(v, list) else None
        else:
            out[k] = v
    return out
