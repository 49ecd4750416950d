#!/usr/bin/env python3
"""HTTP/1.1 keep-alive upstream for build/profile-sidecars.sh: 200 with 1 KiB to every request."""
import asyncio, sys
BODY = b"x" * 1024
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\ncontent-type: text/plain\r\n\r\n" + BODY
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            cl = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    cl = int(line.split(b":")[1])
            if cl: await r.readexactly(cl)
            w.write(RESP)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    s = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    await s.serve_forever()
asyncio.run(main())
