import AgentProtocol
import Incoming
import NIOCore

/// A stolen connection under HTTP filters: each request goes to the session of the first claim of the port
/// whose filter it matches (this agent's or another's: `PortShares`), else to the pod's application, as
/// sent; the answers come back to the client in order, also when several kinds share one keep-alive
/// connection. Requests are passed one at a time: the next one leaves when the answer to the last is
/// complete (pipelined requests wait here). Something that is not HTTP/1.x, and what follows an upgrade
/// (101), is relayed whole to where it was going. (A connection whose first request is for another agent's
/// session went to that agent whole before it got here: `IncomingSession.sort`.)
final class HTTPSplitter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Route: Hashable {
        case pod
        /// A developer's session, by its claim.
        case claim(PortClaim)
    }

    enum Upstream {
        /// Writes wait for the connection.
        case connecting([ByteBuffer])
        case open(any RelaySide)
    }

    /// The request on its way and its answer.
    struct Exchange {
        var route: Route
        let method: [UInt8]
        var request: BodyReader
        var requestDone = false
        /// Nil until the answer's head is in.
        var response: BodyReader?
        var responseDone = false
    }

    let session: IncomingSession
    let podPort: UInt16
    let client: Endpoint
    private var context: ChannelHandlerContext?
    private var pending: [UInt8] = []
    private var answer: [UInt8] = []
    private var exchange: Exchange?
    /// After an upgrade, or when the client does not speak HTTP/1.x: bytes go through as they are.
    private var tunnel: Route?
    private var upstreams: [Route: Upstream] = [:]
    private var clientEnded = false
    private var counts: [Route: Int] = [:]

    /// `read`: what was read of the connection before it came here.
    init(session: IncomingSession, podPort: UInt16, client: Endpoint, read: [UInt8]) {
        self.session = session
        self.podPort = podPort
        self.client = client
        pending = read
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !pending.isEmpty { advance() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pending += unwrapInboundIn(data).readableBytesView
        advance()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            clientEnded = true
            if let tunnel, case .open(let end) = upstreams[tunnel] { end.closeOutput() }
            advance()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        for case .open(let end) in upstreams.values { end.close() }
        upstreams = [:]
        let passed = counts[.pod] ?? 0
        session.logger.info(
            "incoming connection from \(client) to port \(podPort): HTTP, \(counts.values.reduce(0, +) - passed) request(s) stolen, \(passed) passed through"
        )
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }

    // MARK: Requests

    /// Routes what the client sent, as far as the exchanges allow.
    private func advance() {
        while true {
            if let tunnel {
                if !pending.isEmpty { send(pending[...], to: tunnel) }
                pending = []
                return
            }
            if exchange == nil {
                if pending.isEmpty {
                    if clientEnded { context?.close(promise: nil) }
                    return
                }
                guard startExchange() else { return }
            }
            guard var current = exchange else { return }
            if !current.requestDone {
                do {
                    let taken = try current.request.consume(pending[...])
                    if taken > 0 {
                        send(pending[..<taken], to: current.route)
                        pending.removeFirst(taken)
                    }
                } catch {
                    return fail("the request's body: \(error)")
                }
                current.requestDone = current.request.isComplete
                exchange = current
                if !current.requestDone { return }
            }
            if !current.responseDone { return }
            exchange = nil
        }
    }

    /// Reads the next request's head and sends it on its way; false while the head is incomplete.
    private func startExchange() -> Bool {
        let head: HTTPHead
        let body: BodyFraming
        do {
            guard let parsed = try HTTPHead.parse(pending[...]) else { return false }
            head = parsed
            body = try head.requestBody()
        } catch {
            // Not HTTP as the filter can follow it: the rest of the connection is the pod application's.
            session.logger.info("incoming connection from \(client) to port \(podPort): \(error); passed through whole")
            tunnel = .pod
            return true
        }
        let (winner, missed) = session.registry.shares.route(podPort, head)
        let route: Route = winner.map(Route.claim) ?? .pod
        if let winner, !missed.isEmpty {
            let request = String(decoding: head.method + [0x20] + head.path, as: UTF8.self)
            session.registry.shares.tellMissed(
                missed,
                "\(request) from \(client) matched your filter and went to \(winner.developer)'s session, which stole port \(podPort) first"
            )
        }
        counts[route, default: 0] += 1
        exchange = Exchange(route: route, method: head.method, request: BodyReader(body))
        send(pending[..<head.length], to: route)
        pending.removeFirst(head.length)
        return true
    }

    private func send(_ bytes: ArraySlice<UInt8>, to route: Route) {
        let buffer = ByteBuffer(bytes: bytes)
        switch upstreams[route] {
        case .open(let end)?:
            end.write(buffer, flush: true)
        case .connecting(let queued)?:
            upstreams[route] = .connecting(queued + [buffer])
        case nil:
            upstreams[route] = .connecting([buffer])
            open(route)
        }
    }

    private func open(_ route: Route) {
        guard let channel = context?.channel else { return }
        let loop = channel.eventLoop
        switch route {
        case .pod:
            let splitter = NIOLoopBound(self, eventLoop: loop)  // the connection completes on this loop
            session.connectToPod(from: channel, podPort: podPort).whenComplete { result in
                switch result {
                case .success(let upstream): splitter.value.connected(.pod, StreamEnd.hold(upstream))
                case .failure(let error): splitter.value.fail("cannot reach the pod's application: \(error)")
                }
            }
        case .claim(let claim):
            // Taken or abandoned on another thread: back on this loop, where the splitter lives.
            let splitter = NIOLoopBound(self, eventLoop: loop)
            session.registry.shares.open(
                claim, client: client, on: loop,
                connected: { side in loop.execute { splitter.value.connected(route, side) } },
                failed: { loop.execute { splitter.value.didNotTake(route) } })
        }
    }

    /// `upstream` holds what came before: the pod's application may speak first, and the program's stream
    /// may have bytes already.
    private func connected(_ route: Route, _ upstream: any RelaySide) {
        guard context != nil, case .connecting(let queued)? = upstreams[route] else {
            upstream.close()
            return
        }
        let loop = context!.eventLoop
        let splitter = NIOLoopBound(self, eventLoop: loop)
        upstream.start { event in
            if loop.inEventLoop {
                splitter.value.upstream(route, event)
            } else {
                loop.execute { splitter.value.upstream(route, event) }
            }
        }
        upstreams[route] = .open(upstream)
        for buffer in queued { upstream.write(buffer, flush: false) }
        upstream.flush()
    }

    /// A developer's session did not take the connection (in time, or at all: it ended): its requests go to
    /// the pod's application instead.
    private func didNotTake(_ route: Route) {
        guard case .claim(let claim) = route, case .connecting(let queued)? = upstreams[route] else { return }
        upstreams[route] = nil
        session.logger.warning(
            "incoming connection from \(client) to port \(podPort): \(claim.developer)'s session did not take it; its requests go to the pod's application"
        )
        if exchange?.route == route { exchange?.route = .pod }
        if tunnel == route { tunnel = .pod }
        for buffer in queued { send(Array(buffer.readableBytesView)[...], to: .pod) }
    }

    // MARK: Answers

    private func upstream(_ route: Route, _ event: RelayEvent) {
        switch event {
        case .bytes(let buffer): received(Array(buffer.readableBytesView), from: route)
        case .readComplete: context?.flush()
        case .inputClosed, .cut, .closed: ended(route)
        case .writable: break
        }
    }

    private func received(_ bytes: [UInt8], from route: Route) {
        guard let context else { return }
        if let tunnel {
            if tunnel == route { context.write(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil) }
            return
        }
        guard var current = exchange, current.route == route, !current.responseDone else { return }
        answer += bytes
        do {
            while !answer.isEmpty && !current.responseDone {
                if var body = current.response {
                    let taken = try body.consume(answer[...])
                    pass(answer[..<taken])
                    answer.removeFirst(taken)
                    current.response = body
                    current.responseDone = body.isComplete
                    continue
                }
                guard let head = try HTTPHead.parse(answer[...]) else { break }
                pass(answer[..<head.length])
                answer.removeFirst(head.length)
                let status = head.status ?? 0
                if status == 101 {
                    // Upgraded (WebSocket, h2c): from here on, bytes as they are.
                    tunnel = route
                    pass(answer[...])
                    answer = []
                    exchange = nil
                    return advance()
                }
                if (100..<200).contains(status) { continue }  // an interim answer; the real one follows
                let body = BodyReader(try head.responseBody(requestMethod: current.method))
                current.response = body
                current.responseDone = body.isComplete
            }
        } catch {
            return fail("the answer: \(error)")
        }
        exchange = current
        if current.responseDone {
            answer = []
            advance()
        }
    }

    private func pass(_ bytes: ArraySlice<UInt8>) {
        guard !bytes.isEmpty else { return }
        context?.write(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil)
    }

    /// An upstream connection ended: an answer that runs until the close is complete, and the client's
    /// connection ends with it; any other unfinished exchange is lost, and so is the connection.
    private func ended(_ route: Route) {
        if case .open(let end)? = upstreams[route] { end.close() }
        upstreams[route] = nil
        guard let context else { return }
        if tunnel == route || (exchange?.route == route && exchange?.responseDone == false) {
            context.flush()
            context.close(promise: nil)
        }
    }

    private func fail(_ reason: String) {
        session.logger.warning("incoming connection from \(client) to port \(podPort) closed: \(reason)")
        context?.close(promise: nil)
    }
}
