#!/usr/bin/env python3
"""Self-test of delaying_forward.py: `python3 test_delaying_forward.py` (no root needed).

Each test starts the forward on 127.0.0.1 in front of a small server of its own on 127.0.0.1 (or a unix
socket) and checks its timing and its ends. Timing bounds are tight below (a held chunk must never arrive
early) and loose above (a loaded machine runs late). Nothing leaves loopback.
"""

import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
FORWARD = os.path.join(HERE, "delaying_forward.py")
DELAY_MS = 20
SETUP_RTTS = 2
ROUND_TRIP = 2 * DELAY_MS / 1000
EARLY = 0.002       # timer rounding; a chunk may not come sooner than this before its time
LATE = 0.050        # what a busy machine may add


class Echo(socketserver.BaseRequestHandler):
    """Sends back what it reads, until its client ends."""

    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


class AnswerAtEnd(socketserver.BaseRequestHandler):
    """Answers "got N bytes" once its client's input ends; records that the end came."""

    ended = threading.Event()

    def handle(self):
        got = 0
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            got += len(data)
        AnswerAtEnd.ended.set()
        try:
            self.request.sendall(b"got %d bytes" % got)
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Forward:
    """delaying_forward.py in front of `connect`, started and waited for."""

    def __init__(self, connect, delay_ms=DELAY_MS, setup_rtts=SETUP_RTTS):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, FORWARD, "--listen", "127.0.0.1:%d" % self.port, "--connect", connect,
             "--delay-ms", str(delay_ms), "--stream-setup-rtts", str(setup_rtts)],
            stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if line != "listening\n":
            self.process.kill()
            raise AssertionError("the forward said %r" % line)

    def connect(self):
        c = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def stop(self):
        """SIGTERM; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.stdout.close()


def receive_exactly(c, count):
    data = b""
    while len(data) < count:
        chunk = c.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def round_trip(c, payload=b"ping"):
    """Seconds for `payload` to come back through the echo server."""
    start = time.monotonic()
    c.sendall(payload)
    answer = receive_exactly(c, len(payload))
    elapsed = time.monotonic() - start
    if answer != payload:
        raise AssertionError("echo answered %r" % answer[:80])
    return elapsed


class ServerCase(unittest.TestCase):
    handler = Echo

    def setUp(self):
        self.server = Server(("127.0.0.1", 0), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.forward = Forward("127.0.0.1:%d" % self.server.server_address[1])

    def tearDown(self):
        status = self.forward.stop()
        self.server.shutdown()
        self.server.server_close()
        self.assertEqual(status, 0, "the forward's exit status after SIGTERM")


class Timing(ServerCase):
    def test_round_trip_takes_two_delays(self):
        with self.forward.connect() as c:
            round_trip(c)  # the connection's set-up
            times = sorted(round_trip(c, b"request %d" % i) for i in range(9))
        self.assertGreaterEqual(times[0], ROUND_TRIP - EARLY, "fastest round trip %.1f ms" % (times[0] * 1000))
        self.assertLess(times[len(times) // 2], ROUND_TRIP + LATE, "median round trip %.1f ms" % (times[4] * 1000))

    def test_new_connection_waits_for_its_streams(self):
        expected = (SETUP_RTTS + 1) * ROUND_TRIP
        times = []
        for _ in range(3):
            start = time.monotonic()
            with self.forward.connect() as c:
                round_trip(c)
            times.append(time.monotonic() - start)
        times.sort()
        self.assertGreaterEqual(times[0], expected - EARLY, "fastest first answer %.1f ms" % (times[0] * 1000))
        self.assertLess(times[1], expected + LATE, "median first answer %.1f ms" % (times[1] * 1000))

    def test_order_and_content_of_a_large_transfer(self):
        payload = os.urandom(4 << 20)
        with self.forward.connect() as c:
            sender = threading.Thread(target=c.sendall, args=(payload,))
            sender.start()
            answer = receive_exactly(c, len(payload))
            sender.join()
        self.assertEqual(answer, payload)

    def test_fifty_connections_at_once(self):
        count = 50
        answers = [None] * count
        start = threading.Barrier(count)

        def client(index):
            try:
                start.wait()
                with self.forward.connect() as c:
                    payload = b"client %d " % index * 100
                    c.sendall(payload)
                    answers[index] = receive_exactly(c, len(payload)) == payload
            except OSError as error:
                answers[index] = error

        began = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - began
        self.assertEqual(answers, [True] * count)
        # Set up side by side, not one after another (that would take 50 times as long).
        self.assertLess(elapsed, 4 * (SETUP_RTTS + 1) * ROUND_TRIP + 1.0, "%.0f ms for all" % (elapsed * 1000))


class HalfClose(ServerCase):
    handler = AnswerAtEnd

    def setUp(self):
        AnswerAtEnd.ended.clear()
        super().setUp()

    def test_a_half_close_closes_both_ways(self):
        with self.forward.connect() as c:
            start = time.monotonic()
            c.sendall(b"x" * 1000)
            c.shutdown(socket.SHUT_WR)
            answer = receive_exactly(c, 100)
            elapsed = time.monotonic() - start
        # The server's answer, sent after it saw the end, never comes: the forward closed both sides.
        self.assertEqual(answer, b"")
        self.assertTrue(AnswerAtEnd.ended.wait(5), "the server never saw its client end")
        self.assertLess(elapsed, (SETUP_RTTS + 1) * ROUND_TRIP + LATE + 0.1)


class ServerCloses(ServerCase):
    class SendThenClose(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)
            self.request.sendall(b"z" * 300000)

    handler = SendThenClose

    def test_everything_sent_before_the_end_arrives(self):
        with self.forward.connect() as c:
            c.sendall(b"go")
            data = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        self.assertEqual(data, b"z" * 300000)


class NoDelay(unittest.TestCase):
    def test_unix_socket_and_no_delay(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "server.sock")
            server = UnixServer(path, Echo)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            forward = Forward("unix:" + path, delay_ms=0, setup_rtts=0)
            try:
                with forward.connect() as c:
                    round_trip(c)
                    times = sorted(round_trip(c) for _ in range(20))
                self.assertLess(times[10], 0.005, "median round trip %.2f ms" % (times[10] * 1000))
            finally:
                self.assertEqual(forward.stop(), 0)
                server.shutdown()
                server.server_close()

    def test_an_unreachable_server_closes_the_connection(self):
        forward = Forward("127.0.0.1:%d" % free_port(), delay_ms=1, setup_rtts=1)
        try:
            with forward.connect() as c:
                c.sendall(b"anyone?")
                self.assertEqual(c.recv(100), b"")
        finally:
            self.assertEqual(forward.stop(), 0)


if __name__ == "__main__":
    unittest.main()
