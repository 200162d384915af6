#!/usr/bin/env python3
"""The client of `sysmirror-bench --only cluster`: one operation of a program in a pod, timed.

    cluster-link.py ROOT OPERATION TRIES [--first]
    cluster-link.py ROOT spawn TRIES -- COMMAND...
    cluster-link.py / roundtrip TRIES --port PORT

ROOT is where the pod's files are as this process sees them: "/" under sysmirror, the container's root
folder when run beside it in the pod's namespace. Prints "ms T1 T2 ..." (each try, in milliseconds), or
"fails: WHY" when the operation fails. One untimed try comes first, so that what a process sets up once
(the supervisor's first stream, Python's imports) is not counted; with --first, only the first try of the
process is timed (a lookup no cache of this process can answer). `spawn` times COMMAND's wall time;
`roundtrip`, one byte there and back through the delaying stand-in on 127.0.0.1:PORT to an echo: the link's
own round trip, the table's unit.
"""

import errno
import http.client
import os
import socket
import subprocess
import sys
import threading
import time

WEB = ("10.96.0.20", 8080)
ECHO = ("10.96.0.40", 7)
FULL_NAME = "web.default.svc.cluster.local"
SHORT_NAME = "web"
SMALL_FILE = "data/small"       # 2 KiB
DIRECTORY = "data/dir"          # 20 files
BURST = 20


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def read_file(root):
    with open(os.path.join(root, SMALL_FILE), "rb") as f:
        check(len(f.read()) == 2048, "short read")


def stat_file(root):
    check(os.stat(os.path.join(root, SMALL_FILE)).st_size == 2048, "wrong size")


def list_directory(root):
    check(len(os.listdir(os.path.join(root, DIRECTORY))) == 20, "wrong entry count")


def lookup(name):
    def run(_root):
        answers = socket.getaddrinfo(name, WEB[1], 0, socket.SOCK_STREAM)
        check(any(address[4][0] == WEB[0] for address in answers), "answer %r" % answers)
    return run


def connect(_root):
    with socket.socket() as s:
        s.connect(WEB)


def request_on(connection):
    connection.request("GET", "/")
    response = connection.getresponse()
    body = response.read()
    check(response.status == 200 and body == b"pod\n", "answer %d %r" % (response.status, body[:40]))


class KeptAlive:
    """Requests on one kept-alive connection, made (and warmed) before the first try."""

    def __init__(self):
        self.connection = None

    def __call__(self, _root):
        if self.connection is None:
            self.connection = http.client.HTTPConnection(*WEB, timeout=10)
        request_on(self.connection)


def get_by_name(_root):
    """GET http://web:8080/ on a new connection: the lookup, the connect and the request."""
    connection = http.client.HTTPConnection(SHORT_NAME, WEB[1], timeout=10)
    try:
        request_on(connection)
    finally:
        connection.close()


def burst(_root):
    """BURST connects at once, from a thread each, as a pool warming up: milliseconds from the start signal
    until the last is done (thread start-up not counted)."""
    sockets = [socket.socket() for _ in range(BURST)]
    go = threading.Event()
    failures = []

    def connect_one(s):
        go.wait()
        try:
            s.connect(WEB)
        except OSError as error:
            failures.append(error)

    threads = [threading.Thread(target=connect_one, args=(s,)) for s in sockets]
    for thread in threads:
        thread.start()
    time.sleep(0.01)  # every thread waiting
    start = time.perf_counter_ns()
    go.set()
    for thread in threads:
        thread.join()
    elapsed = (time.perf_counter_ns() - start) / 1e6
    for s in sockets:
        s.close()
    if failures:
        raise failures[0]
    return elapsed


def udp_echo(_root):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"ping", ECHO)
        answer, peer = s.recvfrom(100)
        check(answer == b"echo ping" and peer == ECHO, "answer %r from %r" % (answer, peer))


class RoundTrip:
    """One byte there and back on a kept connection to an echo behind the stand-in on `port`."""

    def __init__(self, port):
        self.port = port
        self.connection = None

    def __call__(self, _root):
        if self.connection is None:
            self.connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.sendall(b"x")
        check(self.connection.recv(1) == b"x", "no echo")


def spawn(command):
    """Start-up: COMMAND run to its end."""
    def run(_root):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


OPERATIONS = {
    "read": read_file, "stat": stat_file, "listdir": list_directory,
    "lookup-full": lookup(FULL_NAME), "lookup-short": lookup(SHORT_NAME),
    "connect": connect, "request": KeptAlive(), "get-by-name": get_by_name, "burst": burst, "udp": udp_echo,
}


def why(error):
    """A failure as a user would name it: the errno's name, or the resolver's EAI_ code."""
    if isinstance(error, socket.gaierror):
        names = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}
        return names.get(error.errno, str(error))
    if isinstance(error, TimeoutError):
        return "no answer in 2 s"
    if isinstance(error, subprocess.CalledProcessError):
        return "exit status %d" % error.returncode
    if isinstance(error, OSError) and error.errno in errno.errorcode:
        return errno.errorcode[error.errno]
    return str(error)


def timed(function, *arguments):
    """Milliseconds `function` took, or what it says it took (when it times a part of itself)."""
    start = time.perf_counter_ns()
    own = function(*arguments)
    return own if own is not None else (time.perf_counter_ns() - start) / 1e6


def main():
    root, operation, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    if operation == "spawn":
        function = spawn(rest[rest.index("--") + 1:])
    elif operation == "roundtrip":
        function = RoundTrip(int(rest[rest.index("--port") + 1]))
    else:
        function = OPERATIONS[operation]
    try:
        if "--first" in rest:
            times = [timed(function, root)]
        else:
            function(root)
            times = [timed(function, root) for _ in range(tries)]
    except (OSError, Failed, subprocess.CalledProcessError) as error:
        print("fails: " + why(error))
        return
    print("ms " + " ".join("%.3f" % t for t in times))


if __name__ == "__main__":
    main()
