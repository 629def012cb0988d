"""`gateway` with uvloop's event loop instead of asyncio's, to measure the difference."""

from __future__ import annotations

import asyncio
import sys

import uvloop

from gateway.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main(sys.argv[1:]))
