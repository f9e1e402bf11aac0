"""A stand-in signaling server that only checks how far a client gets.

It accepts WebSocket connections on /signaling, records the first message of
each (the SDK's `connect`) and closes with --close-code/--close-reason.
That is how the client programs are checked without a real node: each must
get as far as sending `connect` and then report the close.

Prints JSON lines: {"event":"listening","port":N}, then for each client
{"event":"connect","path":...,"message":{...}} and {"event":"closed",...}.
With --record FILE the connect messages are also appended to FILE.
"""

import argparse
import asyncio
import json
import sys
import time

import websockets

T0 = time.monotonic()


def emit(event, **fields):
    rec = {"event": event, "t": round(time.monotonic() - T0, 3)}
    rec.update(fields)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--close-code", type=int, default=4001)
    p.add_argument("--close-reason", default="FAKE-SIGNALING-SERVER")
    p.add_argument("--record", default=None, help="append connect messages to this file")
    p.add_argument("--lifetime", type=float, default=120.0, help="seconds before exiting")
    args = p.parse_args()

    async def handler(ws):
        path = ws.request.path if ws.request is not None else None
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=30)
        except Exception as e:  # the client went away before connect
            emit("no_connect", path=path, error=repr(e))
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = {"unparsed": str(raw)[:2000]}
        if isinstance(msg, dict) and isinstance(msg.get("sdp"), str):
            # The JS SDK sends a throwaway offer; keep its size, not the text.
            msg = dict(msg, sdp="<%d bytes of SDP>" % len(msg["sdp"]))
        emit("connect", path=path, binary=isinstance(raw, bytes), message=msg)
        if args.record:
            with open(args.record, "a") as f:
                f.write(json.dumps(msg) + "\n")
        await ws.close(code=args.close_code, reason=args.close_reason)
        emit("closed", code=args.close_code, reason=args.close_reason)

    async with websockets.serve(handler, args.host, args.port) as server:
        port = server.sockets[0].getsockname()[1]
        emit("listening", host=args.host, port=port)
        await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    asyncio.run(main())
