/// Which of the program's listening ports take the pod's incoming traffic, at which port in the pod, and
/// how (`--incoming`, `--port-map`, config `incoming:`).
public struct IncomingRules: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable {
        /// The program's listening ports stay local only.
        case off
        /// The pod's application serves; the program gets a copy of each new connection's requests.
        case mirror
        /// New connections (or, with an HTTP filter, matching requests) go to the program instead.
        case steal
    }

    public var mode: Mode
    /// Local port → port in the pod; a port not listed is the same port in the pod.
    public var portMap: [UInt16: UInt16]
    /// When not empty, only these local ports are subscribed.
    public var ports: Set<UInt16>
    /// Local ports never subscribed.
    public var ignoredPorts: Set<UInt16>
    /// With steal: the HTTP filter's patterns (empty: none).
    public var headerPattern: String
    public var pathPattern: String

    public init(
        mode: Mode = .mirror, portMap: [UInt16: UInt16] = [:], ports: Set<UInt16> = [], ignoredPorts: Set<UInt16> = [],
        headerPattern: String = "", pathPattern: String = ""
    ) {
        self.mode = mode
        self.portMap = portMap
        self.ports = ports
        self.ignoredPorts = ignoredPorts
        self.headerPattern = headerPattern
        self.pathPattern = pathPattern
    }

    public static let off = IncomingRules(mode: .off)

    /// The port in the pod that a listen on `localPort` takes over; nil when it stays local.
    public func podPort(forLocal localPort: UInt16) -> UInt16? {
        guard mode != .off, localPort != 0, !ignoredPorts.contains(localPort),
            ports.isEmpty || ports.contains(localPort)
        else { return nil }
        return portMap[localPort] ?? localPort
    }

    /// Parses `LOCAL:REMOTE` (`--port-map`).
    public static func parseMapping(_ text: String) -> (local: UInt16, remote: UInt16)? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let local = UInt16(parts[0]), let remote = UInt16(parts[1]), local > 0, remote > 0
        else { return nil }
        return (local, remote)
    }
}
