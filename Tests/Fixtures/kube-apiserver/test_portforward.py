#!/usr/bin/env python3
"""Self-test of portforward.py against the real kubectl (/usr/bin/kubectl): run `python3 test_portforward.py`.

A small HTTPS server here answers what `kubectl port-forward pod/p` asks (discovery, the pod, the
port-forward upgrade) and hands the upgrade to portforward.handle_upgrade, whose `dial` reaches servers on
127.0.0.1 standing in for the pod's ports."""

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import portforward  # noqa: E402

KUBECTL = "/usr/bin/kubectl"
TOKEN = "test-token"
NAMESPACE = "default"
POD = "p"
POD_OBJECT = {
    "kind": "Pod", "apiVersion": "v1",
    "metadata": {"name": POD, "namespace": NAMESPACE, "uid": "00000000-0000-0000-0000-000000000001",
                 "resourceVersion": "1", "creationTimestamp": "2024-01-01T00:00:00Z"},
    "spec": {"containers": [{"name": "c", "image": "example"}], "nodeName": "node"},
    "status": {"phase": "Running", "podIP": "10.0.0.2"},
}
DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "shortNames": ["po"],
         "verbs": ["get", "list"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True, "kind": "PodPortForwardOptions",
         "verbs": ["create", "get"]}]},
}


def stop_listening(listener):
    """Closes a listening socket; shutdown first, since close alone does not wake a thread in accept()."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def read_head(conn):
    """The request head, read byte by byte so nothing after it is consumed; None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = conn.recv(1)
        if not byte:
            return None
        head += byte
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def answer(conn, status, payload):
    body = json.dumps(payload).encode()
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)


class PodPorts:
    """Servers on 127.0.0.1 standing in for the pod's ports: echo; answer-at-EOF (replies with the SHA-256
    of everything it got, once the client half-closes); greeting (writes a line and closes at once)."""

    def __init__(self):
        self.listeners = []
        self.echo = self._listen(self._echo)
        self.answer_at_eof = self._listen(self._answer_at_eof)
        self.greeting = self._listen(self._greet)
        self.refused = self._unused_port()

    def _listen(self, serve):
        listener = socket.create_server(("127.0.0.1", 0))
        self.listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener, serve), daemon=True).start()
        return listener.getsockname()[1]

    @staticmethod
    def _unused_port():
        with socket.create_server(("127.0.0.1", 0)) as probe:
            return probe.getsockname()[1]

    @staticmethod
    def _accept(listener, serve):
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    @staticmethod
    def _answer_at_eof(conn):
        with conn:
            digest = hashlib.sha256()
            try:
                while data := conn.recv(65536):
                    digest.update(data)
                conn.sendall(digest.hexdigest().encode())
            except OSError:
                pass

    @staticmethod
    def _greet(conn):
        with conn:
            conn.sendall(b"greeting\n")

    def dial(self, port):
        return socket.create_connection(("127.0.0.1", port))

    def close(self):
        for listener in self.listeners:
            stop_listening(listener)


class ApiServer:
    """HTTPS on 127.0.0.1 with token auth: discovery, the pod, and its port-forward subresource."""

    def __init__(self, directory, pod_ports, options):
        self.options = options
        self.pod_ports = pod_ports
        self.events = []
        self.threads = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(os.path.join(directory, "server.crt"), os.path.join(directory, "server.key"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, raw):
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            while (request := read_head(conn)) is not None:
                method, target, headers = request
                path = target.split("?", 1)[0]
                if headers.get("authorization") != f"Bearer {TOKEN}":
                    answer(conn, "401 Unauthorized", {"kind": "Status", "code": 401})
                elif path.endswith("/portforward"):
                    if not portforward.handle_upgrade(conn, method, target, headers, self.pod_ports.dial,
                                                      self.options, self.events.append):
                        answer(conn, "400 Bad Request", {"kind": "Status", "code": 400})
                    return
                elif path in DISCOVERY:
                    answer(conn, "200 OK", DISCOVERY[path])
                elif path == f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}":
                    answer(conn, "200 OK", POD_OBJECT)
                else:
                    answer(conn, "404 Not Found", {"kind": "Status", "code": 404})
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        stop_listening(self.listener)
        self.acceptor.join()
        for thread in self.threads:
            thread.join(timeout=10)
        leaked = [thread.name for thread in threading.enumerate() if thread.name.startswith("portforward-")]
        if leaked or any(thread.is_alive() for thread in self.threads):
            raise AssertionError(f"threads still running after the connections ended: {leaked}")

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(event) for event in list(self.events)):
                return True
            time.sleep(0.05)
        return False


def make_certificates(directory):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    openssl("req", "-new", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(directory, "san.ext"), "w") as ext:
        ext.write("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext")


def write_kubeconfig(directory, port):
    path = os.path.join(directory, "kubeconfig")
    with open(path, "w") as config:
        json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "test",
                   "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                             "certificate-authority": os.path.join(directory, "ca.crt")}}],
                   "users": [{"name": "test", "user": {"token": TOKEN}}],
                   "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                             "namespace": NAMESPACE}}]}, config)
    return path


class PortForward:
    """A running `kubectl port-forward pod/p :PORT`; `local` is the port kubectl listens on."""

    def __init__(self, directory, kubeconfig, remote_port, verbosity=None):
        self.stderr_path = os.path.join(directory, f"kubectl-{remote_port}-{time.monotonic_ns()}.err")
        self.stderr = open(self.stderr_path, "w")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": directory, "KUBECONFIG": kubeconfig}
        args = [KUBECTL, "port-forward", f"pod/{POD}", f":{remote_port}", "--address", "127.0.0.1"]
        if verbosity is not None:
            args.append(f"-v={verbosity}")
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.process.stdout.readline()
        match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
        if not match:
            self.close()
            raise AssertionError(f"kubectl did not start forwarding: {line!r}\n{self.errors()}")
        self.local = int(match.group(1))
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.local), timeout=30)

    def errors(self):
        self.stderr.flush()
        with open(self.stderr_path) as stderr:
            return stderr.read()

    def wait(self, timeout):
        return self.process.wait(timeout=timeout)

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.stderr.close()


def receive_exactly(conn, size):
    chunks, got = [], 0
    while got < size:
        chunk = conn.recv(min(65536, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive_all(conn):
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@unittest.skipUnless(os.access(KUBECTL, os.X_OK) and shutil.which("openssl"), "needs /usr/bin/kubectl and openssl")
class PortForwardTest(unittest.TestCase):
    options = portforward.Options()

    def setUp(self):
        descriptors = set(os.listdir("/proc/self/fd"))
        self.addCleanup(self.assert_no_descriptor_leaks, descriptors)
        self.directory = tempfile.mkdtemp(prefix="portforward-test-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        make_certificates(self.directory)
        self.pod = PodPorts()
        self.addCleanup(self.pod.close)
        self.server = ApiServer(self.directory, self.pod, self.options)
        self.addCleanup(self.server.close)
        self.kubeconfig = write_kubeconfig(self.directory, self.server.port)

    def assert_no_descriptor_leaks(self, before):
        deadline = time.monotonic() + 5
        while (leaked := set(os.listdir("/proc/self/fd")) - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(leaked, set(), "file descriptors left open")

    def forward(self, remote_port):
        forward = PortForward(self.directory, self.kubeconfig, remote_port)
        self.addCleanup(forward.close)
        return forward

    def transports(self):
        return {event["portforward"] for event in self.server.events if event["event"] == "open"}

    def echo_once(self, forward, payload=b"hello through the pod\n"):
        with forward.connect() as conn:
            conn.sendall(payload)
            self.assertEqual(receive_exactly(conn, len(payload)), payload)


class WebSocketPathTest(PortForwardTest):
    def test_echo(self):
        forward = self.forward(self.pod.echo)
        self.echo_once(forward)
        self.assertEqual(self.transports(), {"websocket"})

    def test_twenty_concurrent_connections(self):
        forward = self.forward(self.pod.echo)
        failures = []

        def one(index):
            try:
                payload = os.urandom(200_000) + f"connection {index}".encode()
                with forward.connect() as conn:
                    sender = threading.Thread(target=conn.sendall, args=(payload,))
                    sender.start()
                    received = receive_exactly(conn, len(payload))
                    sender.join()
                if received != payload:
                    failures.append(index)
            except OSError as error:
                failures.append((index, error))
        threads = [threading.Thread(target=one, args=(index,)) for index in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(failures, [])
        self.assertEqual(sum(1 for event in self.server.events if event["event"] == "stream"), 20)

    def test_fifty_megabytes_each_way(self):
        forward = self.forward(self.pod.echo)
        size = 50 * 1024 * 1024
        block = os.urandom(1024 * 1024)
        sent = hashlib.sha256()

        def send(conn):
            for index in range(size // len(block)):
                chunk = block[index:] + block[:index]
                sent.update(chunk)
                conn.sendall(chunk)
        with forward.connect() as conn:
            sender = threading.Thread(target=send, args=(conn,))
            sender.start()
            received, got = hashlib.sha256(), 0
            while got < size:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                received.update(chunk)
                got += len(chunk)
            sender.join()
        self.assertEqual(got, size)
        self.assertEqual(received.hexdigest(), sent.hexdigest())

    def test_refused_port_ends_the_forwarding(self):
        forward = self.forward(self.pod.refused)
        with forward.connect() as conn:
            self.assertEqual(receive_all(conn), b"")
        self.assertEqual(forward.wait(timeout=20), 1)
        errors = forward.errors()
        self.assertIn(f"an error occurred forwarding {forward.local} -> {self.pod.refused}: error forwarding port "
                      f"{self.pod.refused} to pod ", errors)
        self.assertIn(f"failed to connect to localhost:{self.pod.refused} inside namespace", errors)
        self.assertIn(f"IPv4: dial tcp4 127.0.0.1:{self.pod.refused}: connect: connection refused", errors)
        self.assertIn("error: lost connection to pod", errors)
        self.assertTrue(self.server.wait_for(lambda event: event["event"] == "refused"))

    def test_half_close_is_not_passed_on(self):
        forward = self.forward(self.pod.answer_at_eof)
        with forward.connect() as conn:
            conn.sendall(b"question")
            conn.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            self.assertEqual(receive_all(conn), b"")  # the pod never saw EOF, so never answered
            elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 3.0)
        self.assertTrue(self.server.wait_for(lambda event: event["event"] == "closed" and event.get("first") == "client"))
        self.assertIsNone(forward.process.poll())  # the forwarding itself goes on

    def test_echo_flows_while_the_half_close_lingers(self):
        forward = self.forward(self.pod.echo)
        with forward.connect() as conn:
            conn.sendall(b"ping")
            conn.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            self.assertEqual(receive_all(conn), b"ping")
            self.assertGreater(time.monotonic() - started, 0.8)


    def test_pod_closing_first_reaches_the_client_a_second_later(self):
        forward = self.forward(self.pod.greeting)
        with forward.connect() as conn:
            self.assertEqual(receive_exactly(conn, 9), b"greeting\n")
            started = time.monotonic()
            self.assertEqual(receive_all(conn), b"")
            elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 3.0)
        self.assertTrue(self.server.wait_for(lambda event: event["event"] == "closed" and event.get("first") == "pod"))


class SpdyPathTest(WebSocketPathTest):
    options = portforward.Options(websocket=False)

    def test_echo(self):
        forward = self.forward(self.pod.echo)
        self.echo_once(forward)
        self.assertEqual(self.transports(), {"spdy"})
        self.assertTrue(any(event["event"] == "refused" and event.get("status") == 403
                            for event in self.server.events))


class IdleTimeoutTest(PortForwardTest):
    options = portforward.Options(idle_timeout=2.0)

    def test_idle_connection_is_closed(self):
        # kubectl pings every 10 s over WebSocket, and pings count as activity, so 2 s of silence ends it.
        forward = self.forward(self.pod.echo)
        conn = forward.connect()
        self.addCleanup(conn.close)
        conn.sendall(b"x")
        self.assertEqual(receive_exactly(conn, 1), b"x")
        started = time.monotonic()
        self.assertEqual(receive_all(conn), b"")
        self.assertLess(time.monotonic() - started, 6)
        self.assertEqual(forward.wait(timeout=10), 1)
        self.assertIn("lost connection to pod", forward.errors())
        self.assertTrue(any(event["event"] == "idle-timeout" for event in self.server.events))


class SpdyIdleTimeoutTest(IdleTimeoutTest):
    options = portforward.Options(idle_timeout=2.0, websocket=False)


class SpdyPingsKeepAliveTest(PortForwardTest):
    options = portforward.Options(idle_timeout=7.0, websocket=False)

    def test_pings_count_as_activity(self):
        # kubectl's SPDY connection pings every 5 s: a 7 s idle timeout never fires while it runs.
        forward = self.forward(self.pod.echo)
        time.sleep(12)
        self.echo_once(forward)
        self.assertFalse(any(event["event"] == "idle-timeout" for event in self.server.events))


class FramingTest(unittest.TestCase):
    def test_dictionary_is_spdy3s(self):
        self.assertEqual(len(portforward.SPDY_DICTIONARY), 1423)
        self.assertEqual(hashlib.sha256(portforward.SPDY_DICTIONARY).hexdigest(),
                         "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")

    def test_header_block_round_trip(self):
        deflate = portforward.zlib.compressobj(9, portforward.zlib.DEFLATED, 15, 8,
                                               portforward.zlib.Z_DEFAULT_STRATEGY, portforward.SPDY_DICTIONARY)
        inflate = portforward.zlib.decompressobj(zdict=portforward.SPDY_DICTIONARY)
        for headers in ({"streamtype": "error", "port": "80", "requestid": "0"}, {}):
            block = deflate.compress(portforward._encode_header_block(headers)) + deflate.flush(
                portforward.zlib.Z_SYNC_FLUSH)
            self.assertEqual(portforward._decode_header_block(inflate.decompress(block)), headers)


if __name__ == "__main__":
    unittest.main()
