#!/usr/bin/env python3
"""A port-forward stand-in whose link holds every chunk for a set time (this kernel has no netem qdisc).

    delaying_forward.py --listen 127.0.0.1:PORT --connect HOST:PORT|unix:PATH --delay-ms N [--stream-setup-rtts K]

What it keeps of `kubectl port-forward` (1.32) between a laptop and a pod N ms away each way:

* Latency: every chunk read from either side is written to the other N ms after it was read, in order per
  direction. Nothing limits throughput but a bound on the chunks waiting in each direction (QUEUED_CHUNKS,
  against memory), past which reading pauses and the sender's socket fills, as TCP would do. A chunk is
  never early, and late by up to a millisecond (asyncio waits in epoll, whose timeouts are whole
  milliseconds, rounded up): a 20 ms round trip measures about 21 ms.
* Stream set-up: kubectl accepts a local connection at once, then creates an error stream and a data stream
  on its SPDY (or WebSocket-tunnelled SPDY) connection, one after the other, and copies nothing before both
  are answered (client-go tools/portforward/portforward.go, handleConnection; apimachinery
  pkg/util/httpstream/spdy/connection.go, CreateStream waits for the stream's reply). So a new connection
  waits K round trips (K x 2N ms; K=2 by default) before it is connected onward, and what its client sends
  meanwhile waits in the client's socket: the first answer on a new connection comes (K+1) x 2N ms after
  the connect.
* No half-close, as the kubelet: when either side ends (EOF or an error), what was read before is delivered
  (each chunk at its time), then both sides are closed. A client's shutdown(SHUT_WR) closes the connection.

Prints "listening" on stdout once it accepts; SIGTERM or SIGINT end it, and every connection, with status 0.
Python 3.11 standard library only.
"""

import argparse
import asyncio
import signal
import socket
import sys

READ_SIZE = 64 * 1024
QUEUED_CHUNKS = 1024    # per direction: at most 64 MiB held
LISTEN_BACKLOG = 1024   # hundreds of connects at once must not overflow it (the default drops SYNs)

END = b""               # a direction's last item: the side it was read from has ended


def parse_address(text):
    """("unix", PATH) or ("tcp", (HOST, PORT)); HOST may be a bracketed IPv6 address."""
    if text.startswith("unix:"):
        return "unix", text[len("unix:"):]
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT or unix:PATH, not %r" % text)
    return "tcp", (host.strip("[]"), int(port))


def set_no_delay(writer):
    """TCP_NODELAY on a TCP stream: small requests go out at once rather than waiting for an ACK."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Forward:
    def __init__(self, onward, delay, setup):
        self.onward = onward
        self.delay = delay      # seconds each way
        self.setup = setup      # seconds before a new connection is connected onward
        self.connections = set()

    async def connect_onward(self):
        kind, where = self.onward
        if kind == "unix":
            return await asyncio.open_unix_connection(where)
        reader, writer = await asyncio.open_connection(*where)
        set_no_delay(writer)
        return reader, writer

    async def read_into(self, reader, queue):
        """Reads chunks into `queue`, each with the time it is due on the other side, then END."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                await queue.put((loop.time() + self.delay, data))
        except OSError:
            pass
        await queue.put((loop.time() + self.delay, END))

    async def deliver(self, queue, writer):
        """Writes each chunk of `queue` when it is due; returns at END or when the side cannot take more."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is END:
                return
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return

    async def carry(self, client_reader, client_writer):
        """One forwarded connection, from its accept to both sides' close."""
        task = asyncio.current_task()
        self.connections.add(task)
        server_writer = None
        tasks = []
        try:
            set_no_delay(client_writer)
            if self.setup > 0:
                await asyncio.sleep(self.setup)
            try:
                server_reader, server_writer = await self.connect_onward()
            except OSError:
                return
            upstream = asyncio.Queue(QUEUED_CHUNKS)
            downstream = asyncio.Queue(QUEUED_CHUNKS)
            readers = {
                "up": asyncio.create_task(self.read_into(client_reader, upstream)),
                "down": asyncio.create_task(self.read_into(server_reader, downstream)),
            }
            deliveries = {
                asyncio.create_task(self.deliver(upstream, server_writer)): "up",
                asyncio.create_task(self.deliver(downstream, client_writer)): "down",
            }
            tasks = list(readers.values()) + list(deliveries)
            ended, still = await asyncio.wait(deliveries, return_when=asyncio.FIRST_COMPLETED)
            if still:
                # One direction has ended: the other reads no more, and delivers what it already holds. Its
                # END goes in from a task of its own, since a full queue only drains while that delivery lives.
                other = deliveries[next(iter(still))]
                readers[other].cancel()
                await asyncio.gather(readers[other], return_exceptions=True)
                queue = upstream if other == "up" else downstream
                tasks.append(asyncio.create_task(queue.put((asyncio.get_running_loop().time(), END))))
                await asyncio.wait(still)
        except asyncio.CancelledError:
            pass  # SIGTERM: asyncio's server would log a connection task that ends cancelled
        finally:
            for pending in tasks:
                pending.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (client_writer, server_writer):
                if writer is not None:
                    writer.close()
            self.connections.discard(task)

    async def serve(self, listen):
        _, (host, port) = listen
        server = await asyncio.start_server(self.carry, host, port, backlog=LISTEN_BACKLOG, reuse_address=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        # A test runner's children inherit its threads' mask, which blocks nearly everything (see
        # Tests/Fixtures/unblocked.c): the signals that end this must get through.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        print("listening", flush=True)
        async with server:
            await stop.wait()
            server.close()
            for connection in list(self.connections):
                connection.cancel()
            await asyncio.gather(*self.connections, return_exceptions=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, type=parse_address, help="HOST:PORT to accept on")
    parser.add_argument("--connect", required=True, type=parse_address, help="HOST:PORT or unix:PATH")
    parser.add_argument("--delay-ms", required=True, type=float, help="how long each chunk is held, each way")
    parser.add_argument("--stream-setup-rtts", type=int, default=2,
                        help="round trips a new connection waits before it is connected onward (default 2)")
    options = parser.parse_args()
    if options.listen[0] != "tcp":
        parser.error("--listen takes HOST:PORT")
    delay = options.delay_ms / 1000
    forward = Forward(options.connect, delay, options.stream_setup_rtts * 2 * delay)
    asyncio.run(forward.serve(options.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
