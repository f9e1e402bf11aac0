"""sora-sdk client, role recvonly: Receives and classifies video, detects audio (recvonly).

Usage: python subscriber.py --url ws://127.0.0.1:5000/signaling --channel ch [options]
Prints JSON lines on stdout; see runner.py for the events.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from runner import main  # noqa: E402

if __name__ == "__main__":
    main("recvonly", "Receives and classifies video, detects audio (recvonly).")
