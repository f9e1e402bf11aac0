"""Prints which video codecs the installed sora-sdk can encode and decode.

One JSON line: {"event": "codecs", "encoders": {"VP8": true, ...}, "decoders": {...}}
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, exit_now  # noqa: E402


def main():
    import sora_sdk

    enc, dec = {}, {}
    for engine in sora_sdk.get_video_codec_capability().engines:
        for codec in engine.codecs:
            name = codec.type.name
            enc[name] = enc.get(name, False) or codec.encoder
            dec[name] = dec.get(name, False) or codec.decoder
    emit("codecs", encoders=enc, decoders=dec)
    exit_now(0)


if __name__ == "__main__":
    main()
