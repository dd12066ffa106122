"""Echo server for the integration tests: asyncio, many thousands of connections.

Usage: echo_server.py HOST PORT. Prints "ready" once listening. Echoes every byte back, and
closes its side when the client half-closes (so half-close propagation is observable).
"""
import asyncio
import resource
import sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(echo, sys.argv[1], int(sys.argv[2]), backlog=8192)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
