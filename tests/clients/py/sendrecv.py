"""sora-sdk client, role sendrecv: Sends and receives (sendrecv), for multi-party tests.

Usage: python sendrecv.py --url ws://127.0.0.1:5000/signaling --channel ch [options]
Prints JSON lines on stdout; see runner.py for the events.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from runner import main  # noqa: E402

if __name__ == "__main__":
    main("sendrecv", "Sends and receives (sendrecv), for multi-party tests.")
