"""The kubelet's side of `kubectl port-forward`, as an API server in front of a containerd kubelet shows it.

kubectl 1.32 first asks for a WebSocket carrying SPDY ("SPDY/3.1+portforward.k8s.io", the API server's
tunnelling handler) and falls back to a plain SPDY/3.1 upgrade when that upgrade is refused. Either way
the client opens an "error" and a "data" stream per forwarded connection, and the kubelet copies the data
stream to 127.0.0.1:PORT in the pod. What the tests rely on is modelled on the real code:

* SPDY framing is spdystream's (kubectl's and the kubelet's library): SPDY/3 frames, one zlib context per
  direction for header blocks, and no flow control at all: spdystream neither sends WINDOW_UPDATE nor
  honours it, so windows are not enforced here either (kubectl would stall after 64 KiB if they were).
  Backpressure is TCP's, as in spdystream: reading stops while too much data waits for the pod.
* A refused port: containerd closes the data stream, then the kubelet writes its error text on the error
  stream and closes it (kubectl 1.32 then drops the whole connection: "lost connection to pod"). A deleted
  pod: the port-forward connection stays, but each new stream gets the kubelet's "failed to find sandbox"
  error instead, which kubectl takes the same way.
* No half-close is carried: once either direction ends (the client's FIN on the data stream, or EOF from
  the pod), the other one goes on for `half_close_linger` seconds, then both are closed (containerd's
  forwarder waits one second). The pod never sees a shutdown(SHUT_WR).
* The idle timeout counts every SPDY frame read or written, PINGs included (spdystream's idle-aware
  framer); kubectl pings every 5 s over SPDY and every 10 s over WebSocket. On expiry every open stream
  is reset, a GOAWAY is sent and the connection closed.

Events given to `record` (always with "portforward": "websocket" or "spdy"):
  {"event": "open", "namespace", "pod"}                    upgrade answered with 101
  {"event": "refused", "status": 403, "upgrade": ...}      upgrade refused (Options.websocket is False)
  {"event": "stream", "requestid", "port"}                 a stream pair is complete; forwarding starts
  {"event": "refused", "requestid", "port", "message"}     the pod's port refused, or the pod is gone
                                                           (`dial` raised SandboxGone); message as sent
  {"event": "refused", "stream", "reason"}                 a stream with bad headers was reset
  {"event": "closed", "requestid", "port", "first"}        a pair ended; first: "client" or "pod"
  {"event": "idle-timeout", "idle"}                        the idle timeout fired
  {"event": "closed", "reason"}                            the connection ended (no "requestid")
"""

import base64
import email.utils
import hashlib
import os
import queue
import selectors
import socket
import ssl
import threading
import time
import uuid
import zlib
from dataclasses import dataclass

PROTOCOL = "portforward.k8s.io"
TUNNEL_PREFIX = "SPDY/3.1+"
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

SPDY_VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_CANCEL = 1, 5

WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_NORMAL_CLOSURE = 1000

POD_READ_SIZE = 32 * 1024         # io.Copy's buffer: the most a kubelet DATA frame carries
INBOUND_LIMIT = 4 * 1024 * 1024   # client data waiting for pods before we stop reading the connection
OUTBOUND_LIMIT = 1024 * 1024      # bytes waiting for the client before pod readers wait
FLUSH_SECONDS = 2.0               # how long the last frames (RST, GOAWAY, close) may take to leave


def _spdy_dictionary():
    """SPDY/3's zlib dictionary for header blocks (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1)."""
    words = ("options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
             "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
             "cache-control", "connection", "content-base", "content-encoding", "content-language",
             "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
             "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
             "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
             "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server", "te",
             "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
             "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public",
             "set-cookie", "keep-alive", "origin")
    statuses = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
                "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
                "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
                "503 Service Unavailable")
    dates = "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    values = ("chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
              "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
              "charset=iso-8859-1,utf-,*,enq=0.")
    prefixed = b"".join(len(word).to_bytes(4, "big") + word.encode() for word in words)
    return prefixed + (statuses + dates + values).encode()


SPDY_DICTIONARY = _spdy_dictionary()


@dataclass
class Options:
    idle_timeout: float | None = None   # seconds with no SPDY frame either way -> close (None or 0: never)
    half_close_linger: float = 1.0      # seconds between one direction ending and closing both
    websocket: bool = True              # False: refuse the WebSocket upgrade so kubectl falls back to SPDY


_record_lock = threading.Lock()


def handle_upgrade(conn, method, path, headers, dial, options, record):
    """Answers a port-forward upgrade on `conn` and serves it until it ends; False if it is none.

    The caller has read the request head from `conn` (header names lower-cased) and authorised it."""
    route = path.split("?", 1)[0].rstrip("/").split("/")
    connection_tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    upgrade = headers.get("upgrade", "").strip().lower()
    if route[-1:] != ["portforward"] or "upgrade" not in connection_tokens:
        return False
    if upgrade == "websocket":
        kind = "websocket"
    elif upgrade == "spdy/3.1":
        kind = "spdy"
    else:
        return False

    def log(entry):
        with _record_lock:
            record({"portforward": kind, **entry})

    namespace, pod = _pod_of(route)
    try:
        if kind == "websocket":
            answered = _answer_websocket(conn, method, headers, options, log)
        else:
            answered = _answer_spdy(conn, headers)
        if answered:
            log({"event": "open", "namespace": namespace, "pod": pod})
            _Session(conn, kind == "websocket", dial, options, log, _Sandbox(namespace, pod)).serve()
    finally:
        conn.close()
    return True


def _pod_of(route):
    """The namespace and pod name in .../namespaces/NS/pods/NAME/portforward."""
    namespace = route[route.index("namespaces") + 1] if "namespaces" in route[:-1] else "default"
    pod = route[-2] if len(route) >= 2 else ""
    return namespace, pod


def _http_answer(conn, status, reason, headers=(), body=b""):
    """Writes a whole HTTP/1.1 answer; the connection is closed afterwards."""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _http_error(conn, status, reason, message):
    """An answer shaped like Go's http.Error."""
    body = (message + "\n").encode()
    _http_answer(conn, status, reason, [("Content-Type", "text/plain; charset=utf-8"),
                                        ("X-Content-Type-Options", "nosniff"),
                                        ("Date", email.utils.formatdate(usegmt=True)),
                                        ("Content-Length", str(len(body))),
                                        ("Connection", "close")], body)


def _split_tokens(value):
    return [token.strip() for token in value.split(",") if token.strip()]


def _negotiate(conn, offered):
    """The kubelet's protocol handshake (httpstream.Handshake); True when portforward.k8s.io is offered."""
    if PROTOCOL in offered:
        return True
    message = (f"unable to upgrade: unable to negotiate protocol: client supports [{' '.join(offered)}], "
               f"server accepts [{PROTOCOL}]")
    body = (message + "\n").encode()
    _http_answer(conn, 403, "Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                          ("X-Accepted-Stream-Protocol-Versions", PROTOCOL),
                                          ("X-Content-Type-Options", "nosniff"),
                                          ("Date", email.utils.formatdate(usegmt=True)),
                                          ("Content-Length", str(len(body)))], body)
    return False


def _answer_spdy(conn, headers):
    """Answers the SPDY/3.1 upgrade as the kubelet does (relayed unchanged by the API server)."""
    offered = _split_tokens(headers.get("x-stream-protocol-version", ""))
    if not offered:
        # The kubelet's handshake fails without writing, so Go's server ends the request with an empty 200.
        _http_answer(conn, 200, "OK", [("Date", email.utils.formatdate(usegmt=True)), ("Content-Length", "0")])
        return False
    if not _negotiate(conn, offered):
        return False
    _http_answer(conn, 101, "Switching Protocols", [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                                    ("X-Stream-Protocol-Version", PROTOCOL),
                                                    ("Date", email.utils.formatdate(usegmt=True))])
    return True


def _answer_websocket(conn, method, headers, options, log):
    """Answers the tunnelling WebSocket upgrade as the API server (gorilla's upgrader) does."""
    if not options.websocket:
        # An API server without WebSocket port-forward passes the request to the kubelet, whose old
        # WebSocket port-forward (golang.org/x/net/websocket) rejects the unknown subprotocol with a bare 403;
        # the proxies relay it as read. gorilla reports a bad handshake, and kubectl falls back to SPDY.
        _http_answer(conn, 403, "Forbidden", [("Connection", "close")])
        log({"event": "refused", "status": 403, "upgrade": "websocket"})
        return False
    offered = [protocol[len(TUNNEL_PREFIX):] for protocol in _split_tokens(headers.get("sec-websocket-protocol", ""))
               if protocol.startswith(TUNNEL_PREFIX) and protocol.endswith(".k8s.io")]
    if not offered:
        _http_error(conn, 400, "Bad Request", "unable to upgrade: no tunneling spdy protocols provided")
        return False
    if not _negotiate(conn, offered):
        return False
    key = headers.get("sec-websocket-key", "").strip()
    if method != "GET" or headers.get("sec-websocket-version", "").strip() != "13" or not _valid_key(key):
        _http_error(conn, 400, "Bad Request", "websocket: the client is not using the websocket protocol")
        return False
    accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
    _http_answer(conn, 101, "Switching Protocols", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                    ("Sec-WebSocket-Accept", accept),
                                                    ("Sec-WebSocket-Protocol", TUNNEL_PREFIX + PROTOCOL)])
    return True


def _valid_key(key):
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


class SandboxGone(Exception):
    """What `dial` raises once the pod is deleted: containerd no longer has its sandbox."""


class _Sandbox:
    """The containerd names the kubelet's error text shows: the pod sandbox id and its network namespace."""

    def __init__(self, namespace, pod):
        digest = hashlib.sha256(f"{namespace}/{pod}".encode()).digest()
        self.id = digest.hex()
        self.netns = f"/var/run/netns/cni-{uuid.UUID(bytes=digest[:16], version=4)}"

    def gone(self, port):
        """The kubelet's error text for a stream to a pod whose sandbox containerd has removed."""
        return (f"error forwarding port {port} to pod {self.id}, uid : failed to find sandbox \"{self.id}\" in "
                f"store: not found")

    def refusal(self, port, error):
        """The text the kubelet writes on the error stream when containerd cannot connect to the port."""
        cause = _go_errno_text(error)
        return (f"error forwarding port {port} to pod {self.id}, uid : failed to execute portforward in network "
                f"namespace \"{self.netns}\": failed to connect to localhost:{port} inside namespace "
                f"\"{self.id}\", IPv4: dial tcp4 127.0.0.1:{port}: {cause} "
                f"IPv6 dial tcp6 [::1]:{port}: {cause} ")


def _go_errno_text(error):
    """How Go's net package words a failed dial's cause."""
    if isinstance(error, TimeoutError) or error.errno is None:
        return "i/o timeout"
    text = os.strerror(error.errno)
    return "connect: " + text[:1].lower() + text[1:]


def _control_frame(kind, flags, payload):
    return (bytes([0x80 | (SPDY_VERSION >> 8), SPDY_VERSION & 0xFF, kind >> 8, kind & 0xFF, flags])
            + len(payload).to_bytes(3, "big") + payload)


def _data_frame(stream_id, flags, payload):
    return stream_id.to_bytes(4, "big") + bytes([flags]) + len(payload).to_bytes(3, "big") + payload


def _encode_header_block(headers):
    block = len(headers).to_bytes(4, "big")
    for name, value in headers.items():
        block += len(name).to_bytes(4, "big") + name.encode() + len(value).to_bytes(4, "big") + value.encode()
    return block


def _decode_header_block(block):
    """Header name -> first value (a value list is NUL-separated)."""
    count, offset, headers = int.from_bytes(block[:4], "big"), 4, {}
    for _ in range(count):
        size = int.from_bytes(block[offset:offset + 4], "big")
        name = block[offset + 4:offset + 4 + size].decode("latin-1").lower()
        offset += 4 + size
        size = int.from_bytes(block[offset:offset + 4], "big")
        value = block[offset + 4:offset + 4 + size].decode("latin-1")
        offset += 4 + size
        headers.setdefault(name, value.split("\0")[0])
    return headers


def _websocket_frame(opcode, payload):
    """A final, unmasked frame (the server side of RFC 6455)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return head + payload


def _unmask(payload, key):
    size = len(payload)
    mask = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(size, "little")


class _WebSocketReader:
    """Splits the client's WebSocket bytes into frames: (opcode, payload), continuations as binary."""

    def __init__(self):
        self.buffer = bytearray()

    def feed(self, data):
        self.buffer += data
        frames = []
        while len(self.buffer) >= 2:
            opcode, size, offset = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if size == 126:
                size, offset = int.from_bytes(self.buffer[2:4], "big"), 4
            elif size == 127:
                size, offset = int.from_bytes(self.buffer[2:10], "big"), 10
            masked = self.buffer[1] & 0x80
            end = offset + (4 if masked else 0) + size
            if len(self.buffer) < end:
                break
            payload = bytes(self.buffer[end - size:end])
            if masked:
                payload = _unmask(payload, bytes(self.buffer[offset:offset + 4]))
            del self.buffer[:end]
            frames.append((WS_BINARY if opcode == WS_CONTINUATION else opcode, payload))
        return frames


class _Stream:
    """One SPDY stream the client opened; `inbound` carries its DATA to the pod, None when it ends."""

    def __init__(self, stream_id, headers, remote_done):
        self.id = stream_id
        self.headers = headers
        self.inbound = queue.Queue()
        self.local_done = False   # we sent FIN or RST
        self.remote_done = remote_done
        self.discarding = False   # nobody reads `inbound` any more
        if remote_done:  # a SYN_STREAM with FIN: the client sends nothing on it
            self.inbound.put(None)


class _Pair:
    def __init__(self, request_id):
        self.request_id = request_id
        self.error = None
        self.data = None


class _Session:
    """One upgraded connection: SPDY frames (optionally inside WebSocket messages) and its stream pairs.

    One thread, the caller's, does every read and write on the TLS socket (an SSL object must not be used
    from two threads at once); each pair's threads hand it frames through `outbound`."""

    def __init__(self, conn, websocket, dial, options, log, sandbox):
        self.conn = conn
        self.websocket = _WebSocketReader() if websocket else None
        self.dial = dial
        self.options = options
        self.log = log
        self.sandbox = sandbox
        self.lock = threading.Condition()
        self.outbound = bytearray()
        self.closed = False
        self.backlog = 0
        self.streams = {}
        self.pairs = {}
        self.threads = []
        self.next_client_stream = 1
        self.last_client_stream = 0
        self.last_activity = time.monotonic()
        self.spdy_bytes = bytearray()
        self.inflate = zlib.decompressobj(zdict=SPDY_DICTIONARY)
        self.deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                        SPDY_DICTIONARY)
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.wake_writer.setblocking(False)

    # The connection's loop.

    def serve(self):
        selector = selectors.DefaultSelector()
        selector.register(self.wake_reader, selectors.EVENT_READ)
        self.conn.setblocking(False)
        registered, reason, deadline = 0, None, None
        try:
            while True:
                with self.lock:
                    writing = bool(self.outbound)
                    reading = reason is None and self.backlog <= INBOUND_LIMIT
                now = time.monotonic()
                if reason is not None and (not writing or now >= deadline):
                    break
                wanted = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if writing else 0)
                registered = self._watch(selector, registered, wanted)
                timeout = None
                if reason is not None:
                    timeout = deadline - now
                elif self.options.idle_timeout:
                    timeout = max(0.0, self.last_activity + self.options.idle_timeout - now)
                if reading and self.conn.pending():
                    timeout = 0
                ready = {key.fileobj: events for key, events in selector.select(timeout)}
                if self.wake_reader in ready:
                    self._drain_wakes()
                if reading and (self.conn in ready or self.conn.pending()):
                    reason = self._read()
                if writing and not self._write():
                    reason, deadline = reason or "eof", time.monotonic()
                if reason is None and self._idle_expired():
                    reason = "idle-timeout"
                if reason is not None and deadline is None:
                    deadline = time.monotonic() + FLUSH_SECONDS
                    self._begin_close(reason)
        finally:
            selector.close()
            self._end(reason or "error")

    def _watch(self, selector, registered, wanted):
        if wanted == registered:
            return wanted
        if not registered:
            selector.register(self.conn, wanted)
        elif not wanted:
            selector.unregister(self.conn)
        else:
            selector.modify(self.conn, wanted)
        return wanted

    def _drain_wakes(self):
        try:
            while self.wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _wake(self):
        try:
            self.wake_writer.send(b"\0")
        except OSError:
            pass  # a full pair already holds a wake-up; a closed one means the loop has ended

    def _read(self):
        """Reads what the socket has; returns why the connection ends, or None."""
        while True:
            try:
                data = self.conn.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return None
            except OSError:
                return "eof"
            if not data:
                return "eof"
            reason = self._feed(data)
            if reason is not None:
                return reason
            with self.lock:
                if self.backlog > INBOUND_LIMIT:
                    return None

    def _write(self):
        """Sends what it can of `outbound`; False when the socket is gone."""
        with self.lock:
            chunk = bytes(self.outbound[:65536])
        try:
            sent = self.conn.send(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True
        except OSError:
            with self.lock:
                self.outbound.clear()
                self.lock.notify_all()
            return False
        with self.lock:
            del self.outbound[:sent]
            self.lock.notify_all()
        return True

    def _idle_expired(self):
        idle = self.options.idle_timeout
        return bool(idle) and time.monotonic() - self.last_activity >= idle

    def _begin_close(self, reason):
        """What the kubelet sends last: on idle timeout RST for every open stream, then GOAWAY."""
        if reason == "idle-timeout":
            self.log({"event": "idle-timeout", "idle": self.options.idle_timeout})
            with self.lock:
                for stream in self.streams.values():
                    if not stream.local_done:
                        stream.local_done = True
                        self._queue_frame(_control_frame(RST_STREAM, 0, stream.id.to_bytes(4, "big")
                                                         + RST_CANCEL.to_bytes(4, "big")))
                self._queue_frame(_control_frame(GOAWAY, 0, self.last_client_stream.to_bytes(4, "big")
                                                 + bytes(4)))
        with self.lock:
            if self.websocket is not None and reason != "websocket-close":
                self._queue_raw(_websocket_frame(WS_CLOSE, WS_NORMAL_CLOSURE.to_bytes(2, "big")))
            self.closed = True
            self.lock.notify_all()

    def _end(self, reason):
        """Ends every pair (their streams read EOF, as the kubelet's do) and waits for their threads."""
        with self.lock:
            self.closed = True
            streams = list(self.streams.values())
            self.lock.notify_all()
        for stream in streams:
            stream.inbound.put(None)
        self.conn.close()
        for thread in list(self.threads):
            thread.join()
        self.wake_reader.close()
        self.wake_writer.close()
        self.log({"event": "closed", "reason": reason})

    # Frames from the client.

    def _feed(self, data):
        if self.websocket is None:
            self.spdy_bytes += data
        else:
            for opcode, payload in self.websocket.feed(data):
                if opcode == WS_BINARY:
                    self.spdy_bytes += payload
                elif opcode == WS_PING:
                    with self.lock:
                        self._queue_raw(_websocket_frame(WS_PONG, payload))
                elif opcode == WS_CLOSE:
                    with self.lock:
                        self._queue_raw(_websocket_frame(WS_CLOSE, payload[:2]))
                    return "websocket-close"
                elif opcode != WS_PONG:
                    return "protocol-error"  # the tunnel carries binary messages only
        while len(self.spdy_bytes) >= 8:
            end = 8 + int.from_bytes(self.spdy_bytes[5:8], "big")
            if len(self.spdy_bytes) < end:
                break
            frame = bytes(self.spdy_bytes[:end])
            del self.spdy_bytes[:end]
            self.last_activity = time.monotonic()
            try:
                reason = self._dispatch(frame[:8], frame[8:])
            except (zlib.error, ValueError, IndexError):
                reason = "protocol-error"  # spdystream drops a connection whose frames it cannot read
            if reason is not None:
                return reason
        return None

    def _dispatch(self, head, body):
        if not head[0] & 0x80:
            self._on_data(int.from_bytes(head[:4], "big") & 0x7FFFFFFF, head[4], body)
            return None
        version, kind, flags = ((head[0] & 0x7F) << 8) | head[1], (head[2] << 8) | head[3], head[4]
        if version != SPDY_VERSION:
            return "protocol-error"
        if kind == SYN_STREAM:
            self._on_syn_stream(flags, body)
        elif kind in (SYN_REPLY, HEADERS):
            self._inflate(body[4:])  # unused, but the shared zlib context must see every header block
        elif kind == RST_STREAM:
            self._on_reset(int.from_bytes(body[:4], "big") & 0x7FFFFFFF)
        elif kind == PING:
            if int.from_bytes(body[:4], "big") & 1:  # odd ids are the client's; even ones would be replies
                with self.lock:
                    self._queue_frame(_control_frame(PING, 0, body[:4]))
        elif kind == GOAWAY:
            return "goaway"
        elif kind not in (SETTINGS, WINDOW_UPDATE):  # spdystream leaves these two unhandled
            return "protocol-error"
        return None

    def _inflate(self, block):
        return _decode_header_block(self.inflate.decompress(block))

    def _on_syn_stream(self, flags, body):
        stream_id = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
        headers = self._inflate(body[10:])
        with self.lock:
            if stream_id < self.next_client_stream:
                self._queue_frame(_control_frame(RST_STREAM, 0, stream_id.to_bytes(4, "big")
                                                 + RST_PROTOCOL_ERROR.to_bytes(4, "big")))
                return
            self.next_client_stream = stream_id + 2
            self.last_client_stream = stream_id
            problem = _header_problem(headers)
            if problem is not None:
                self._queue_frame(_control_frame(RST_STREAM, 0, stream_id.to_bytes(4, "big")
                                                 + RST_CANCEL.to_bytes(4, "big")))
            else:
                stream = _Stream(stream_id, headers, remote_done=bool(flags & FLAG_FIN))
                self.streams[stream_id] = stream
                self._queue_frame(_control_frame(SYN_REPLY, 0, stream_id.to_bytes(4, "big")
                                                 + self._deflate(_encode_header_block({}))))
        if problem is not None:
            self.log({"event": "refused", "stream": stream_id, "reason": problem})
            return
        self._pair_up(stream)

    def _pair_up(self, stream):
        """Files the stream under its request id; a complete pair starts forwarding."""
        kind = stream.headers["streamtype"]
        request_id = stream.headers.get("requestid", "")
        if not request_id:  # clients before request ids: consecutive stream ids make a pair
            request_id = str(stream.id if kind == "error" else stream.id - 2)
        pair = self.pairs.setdefault(request_id, _Pair(request_id))
        if getattr(pair, kind) is not None:
            if pair.error is not None:
                message = f"error processing stream for request {request_id}: {kind} stream already assigned"
                with self.lock:  # this thread must not wait for room, so no self.send
                    self._queue_frame(_data_frame(pair.error.id, 0, message.encode()))
            return
        setattr(pair, kind, stream)
        if pair.error is not None and pair.data is not None:
            del self.pairs[request_id]
            thread = threading.Thread(target=self._forward, args=(pair,), daemon=True,
                                      name=f"portforward-{request_id}")
            with self.lock:
                self.threads.append(thread)
            thread.start()

    def _on_data(self, stream_id, flags, body):
        with self.lock:
            stream = self.streams.get(stream_id)
            if stream is None or stream.remote_done:
                return
            if body and stream.headers["streamtype"] == "data" and not stream.discarding:
                self.backlog += len(body)
                stream.inbound.put(body)
            if flags & FLAG_FIN:
                stream.remote_done = True
                stream.inbound.put(None)
                self._forget_if_done(stream)

    def _on_reset(self, stream_id):
        with self.lock:
            stream = self.streams.pop(stream_id, None)
            if stream is None:
                return
            stream.remote_done = stream.local_done = True
            self.lock.notify_all()
        stream.inbound.put(None)

    # Frames to the client (callers hold self.lock, which keeps zlib's context in wire order).

    def _deflate(self, block):
        return self.deflate.compress(block) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def _queue_frame(self, frame):
        self.last_activity = time.monotonic()
        self._queue_raw(_websocket_frame(WS_BINARY, frame) if self.websocket is not None else frame)

    def _queue_raw(self, data):
        self.outbound += data
        self._wake()

    def _forget_if_done(self, stream):
        if stream.local_done and stream.remote_done:
            self.streams.pop(stream.id, None)

    # What the pair threads use.

    def send(self, stream, data):
        """Queues a DATA frame; waits while too much is queued. False once the connection is closed."""
        with self.lock:
            while len(self.outbound) > OUTBOUND_LIMIT and not self.closed and not stream.local_done:
                self.lock.wait()
            if self.closed:
                return False
            if not stream.local_done:  # after a reset the kubelet's writes go nowhere
                self._queue_frame(_data_frame(stream.id, 0, data))
            return True

    def finish(self, stream):
        """Half-closes our side of the stream (an empty DATA frame with FIN), once."""
        with self.lock:
            if stream.local_done or self.closed:
                return
            stream.local_done = True
            self._queue_frame(_data_frame(stream.id, FLAG_FIN, b""))
            self._forget_if_done(stream)
            self.lock.notify_all()

    def receive(self, stream):
        """The next bytes the client sent on the stream; None when its side has ended."""
        chunk = stream.inbound.get()
        if chunk is None:
            stream.inbound.put(None)  # later readers see the end too
            return None
        with self.lock:
            was_paused = self.backlog > INBOUND_LIMIT
            self.backlog -= len(chunk)
            if was_paused and self.backlog <= INBOUND_LIMIT:
                self._wake()
        return chunk

    def discard(self, stream):
        """Drops what the client still sends on a stream nobody forwards any more."""
        with self.lock:
            stream.discarding = True
            while not stream.inbound.empty():
                chunk = stream.inbound.get_nowait()
                self.backlog -= len(chunk or b"")
            stream.inbound.put(None)
            self._wake()

    # The forwarder (containerd's portForward, called by the kubelet's stream-pair handler).

    def _forward(self, pair):
        port = int(pair.data.headers["port"])
        self.log({"event": "stream", "requestid": pair.request_id, "port": port})
        try:
            pod = self.dial(port)
        except SandboxGone:
            # The kubelet writes the error, then closes the error stream and the data stream.
            self.send(pair.error, self.sandbox.gone(port).encode())
            self.finish(pair.error)
            self.finish(pair.data)
            self.discard(pair.data)
            self.log({"event": "refused", "requestid": pair.request_id, "port": port,
                      "message": self.sandbox.gone(port)})
            return
        except OSError as error:
            message = self.sandbox.refusal(port, error)
            self.finish(pair.data)  # containerd closes the data stream before the error is reported
            self.send(pair.error, message.encode())
            self.finish(pair.error)
            self.discard(pair.data)
            self.log({"event": "refused", "requestid": pair.request_id, "port": port, "message": message})
            return
        ended = queue.Queue()
        directions = [threading.Thread(target=self._client_to_pod, args=(pair.data, pod, ended), daemon=True),
                      threading.Thread(target=self._pod_to_client, args=(pod, pair.data, ended), daemon=True)]
        for thread in directions:
            thread.start()
        first = ended.get()
        try:
            ended.get(timeout=self.options.half_close_linger)
        except queue.Empty:
            pass
        try:
            pod.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        pair.data.inbound.put(None)
        for thread in directions:
            thread.join()
        pod.close()
        self.finish(pair.data)
        self.finish(pair.error)
        self.discard(pair.data)
        self.log({"event": "closed", "requestid": pair.request_id, "port": port, "first": first})

    def _client_to_pod(self, stream, pod, ended):
        """Copies the client's bytes to the pod; the client's FIN is not passed on (no SHUT_WR)."""
        try:
            while (chunk := self.receive(stream)) is not None:
                pod.sendall(chunk)
        except OSError:
            pass
        ended.put("client")

    def _pod_to_client(self, pod, stream, ended):
        try:
            while (chunk := pod.recv(POD_READ_SIZE)) and self.send(stream, chunk):
                pass
        except OSError:
            pass
        ended.put("pod")


def _header_problem(headers):
    """Why the kubelet rejects a new stream (httpStreamReceived), or None."""
    port = headers.get("port", "")
    if not port:
        return '"port" header is required'
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return f'unable to parse "{port}" as a port'
    if int(port) < 1:
        return f'port "{port}" must be > 0'
    kind = headers.get("streamtype", "")
    if not kind:
        return '"streamtype" header is required'
    if kind not in ("error", "data"):
        return f'invalid stream type "{kind}"'
    return None
