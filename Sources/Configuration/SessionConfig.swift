import Foundation
import Routing
import Yams

/// The config file (`--config FILE`), YAML or JSON with one schema (docs/configuration.md). Every field is
/// optional; flags given on the command line win over it.
public struct SessionConfig: Decodable, Equatable, Sendable {
    public struct Agent: Decodable, Equatable, Sendable {
        public var address: String?
        public var tokenFile: String?
        static let keys = ["address", "token_file"]
        enum CodingKeys: String, CodingKey {
            case address
            case tokenFile = "token_file"
        }
    }

    public struct Files: Decodable, Equatable, Sendable {
        public var mode: String?
        public var local: [String]?
        public var readOnly: [String]?
        public var readWrite: [String]?
        public var notFound: [String]?
        /// Whether the pod's file answers are kept (default true).
        public var cache: Bool?
        static let keys = ["mode", "local", "read_only", "read_write", "not_found", "cache"]
        enum CodingKeys: String, CodingKey {
            case mode, local, cache
            case readOnly = "read_only"
            case readWrite = "read_write"
            case notFound = "not_found"
        }

        /// The lists as rules take them.
        public var overrides: FileOverrides {
            FileOverrides(
                local: local ?? [], readOnly: readOnly ?? [], readWrite: readWrite ?? [], notFound: notFound ?? [])
        }
    }

    public struct Environment: Decodable, Equatable, Sendable {
        /// false: the pod's environment is not merged (`--no-remote-env`).
        public var remote: Bool?
        public var include: [String]?
        public var exclude: [String]?
        static let keys = ["remote", "include", "exclude"]
    }

    public struct Outgoing: Decodable, Equatable, Sendable {
        /// false: as `--no-outgoing`.
        public var enabled: Bool?
        public var local: [String]?
        public var remote: [String]?
        static let keys = ["enabled", "local", "remote"]
    }

    /// `trace --target` and its kubectl settings (docs/kubernetes.md).
    public struct Kubernetes: Decodable, Equatable, Sendable {
        public var target: String?
        public var namespace: String?
        public var context: String?
        public var kubeconfig: String?
        public var agentImage: String?
        /// Seconds the agent may take to answer.
        public var agentTimeout: Int?
        static let keys = ["target", "namespace", "context", "kubeconfig", "agent_image", "agent_timeout"]
        enum CodingKeys: String, CodingKey {
            case target, namespace, context, kubeconfig
            case agentImage = "agent_image"
            case agentTimeout = "agent_timeout"
        }
    }

    /// The pod's incoming traffic to the program's listening ports (docs/incoming.md).
    public struct Incoming: Decodable, Equatable, Sendable {
        /// off, mirror or steal.
        public var mode: String?
        public var ports: [UInt16]?
        public var ignorePorts: [UInt16]?
        /// `LOCAL:REMOTE` entries.
        public var portMapping: [String]?
        public var httpFilter: HTTPFilter?
        static let keys = ["mode", "ports", "ignore_ports", "port_mapping", "http_filter"]
        enum CodingKeys: String, CodingKey {
            case mode, ports
            case ignorePorts = "ignore_ports"
            case portMapping = "port_mapping"
            case httpFilter = "http_filter"
        }
    }

    /// Which stolen HTTP requests go to the program.
    public struct HTTPFilter: Decodable, Equatable, Sendable {
        public var header: String?
        public var path: String?

        public init(header: String?, path: String?) {
            self.header = header
            self.path = path
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case header, path }

        public init(from decoder: any Decoder) throws {
            let loose = try decoder.container(keyedBy: Loose.AnyKey.self)
            if let unknown = loose.allKeys.first(where: { CodingKeys(rawValue: $0.stringValue) == nil }) {
                throw ConfigError(
                    "unknown key \("incoming.http_filter.\(unknown.stringValue)".debugDescription) (known: header, path)")
            }
            let container = try decoder.container(keyedBy: CodingKeys.self)
            header = try container.decodeIfPresent(String.self, forKey: .header)
            path = try container.decodeIfPresent(String.self, forKey: .path)
        }
    }

    public var agent: Agent?
    public var fs: Files?
    public var env: Environment?
    public var outgoing: Outgoing?
    public var kubernetes: Kubernetes?
    public var incoming: Incoming?
    static let keys = ["agent", "fs", "env", "outgoing", "kubernetes", "incoming"]

    public init(
        agent: Agent? = nil, fs: Files? = nil, env: Environment? = nil, outgoing: Outgoing? = nil,
        kubernetes: Kubernetes? = nil, incoming: Incoming? = nil
    ) {
        self.incoming = incoming
        self.agent = agent
        self.fs = fs
        self.env = env
        self.outgoing = outgoing
        self.kubernetes = kubernetes
    }

    /// The file system mode the file names, checked.
    public func fileSystemMode() throws(ConfigError) -> FileSystemMode? {
        guard let name = fs?.mode else { return nil }
        guard let mode = FileSystemMode(rawValue: name) else {
            throw ConfigError(
                "fs.mode: \(name.debugDescription) is not one of \(FileSystemMode.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        return mode
    }

    /// The incoming rules the file and the flags give (flags win): `mode` from --incoming, `portMap` from
    /// --port-map, the filter from --steal-header and --steal-path. A filter without a mode means steal.
    public func incomingRules(
        mode flagMode: IncomingRules.Mode?, portMap flagMap: [String], header flagHeader: String?,
        path flagPath: String?
    ) throws(ConfigError) -> IncomingRules {
        let section = incoming
        var mode = flagMode
        if mode == nil, let name = section?.mode {
            guard let parsed = IncomingRules.Mode(rawValue: name) else {
                throw ConfigError(
                    "incoming.mode: \(name.debugDescription) is not one of \(IncomingRules.Mode.allCases.map(\.rawValue).joined(separator: ", "))"
                )
            }
            mode = parsed
        }
        let header = flagHeader ?? section?.httpFilter?.header ?? ""
        let path = flagPath ?? section?.httpFilter?.path ?? ""
        let filtered = !header.isEmpty || !path.isEmpty
        if filtered && mode != nil && mode != .steal {
            throw ConfigError(
                "--steal-header, --steal-path and incoming.http_filter choose which requests are stolen: they go with --incoming steal, not \(mode!.rawValue)"
            )
        }
        var portMap: [UInt16: UInt16] = [:]
        for (index, text) in (section?.portMapping ?? []).enumerated() {
            guard let (local, remote) = IncomingRules.parseMapping(text) else {
                throw ConfigError("incoming.port_mapping[\(index)]: \(text.debugDescription) is not LOCAL:REMOTE (two ports)")
            }
            portMap[local] = remote
        }
        for text in flagMap {
            guard let (local, remote) = IncomingRules.parseMapping(text) else {
                throw ConfigError("--port-map \(text.debugDescription): expected LOCAL:REMOTE, two ports (1-65535)")
            }
            portMap[local] = remote
        }
        return IncomingRules(
            mode: mode ?? (filtered ? .steal : .mirror), portMap: portMap, ports: Set(section?.ports ?? []),
            ignoredPorts: Set(section?.ignorePorts ?? []), headerPattern: header, pathPattern: path)
    }

    /// Reads `path`: JSON when it ends in `.json` or starts with `{`, YAML otherwise. Unknown keys are errors,
    /// so that a misspelt setting is not silently ignored.
    public static func load(path: String) throws(ConfigError) -> SessionConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError("cannot read the config file \(path): \((error as NSError).localizedDescription)")
        }
        do {
            return try parse(text, json: path.hasSuffix(".json"))
        } catch {
            throw ConfigError("config file \(path): \(error.message)")
        }
    }

    public static func parse(_ text: String, json: Bool = false) throws(ConfigError) -> SessionConfig {
        let isJSON = json || text.drop { $0.isWhitespace }.first == "{"
        if text.allSatisfy(\.isWhitespace) { return SessionConfig() }
        do {
            let raw: Loose
            let config: SessionConfig
            if isJSON {
                let data = Data(text.utf8)
                raw = try JSONDecoder().decode(Loose.self, from: data)
                config = try JSONDecoder().decode(SessionConfig.self, from: data)
            } else {
                raw = try YAMLDecoder().decode(Loose.self, from: text)
                config = try YAMLDecoder().decode(SessionConfig.self, from: text)
            }
            try raw.checkKeys(
                Self.keys, at: "",
                sections: [
                    "agent": Agent.keys, "fs": Files.keys, "env": Environment.keys, "outgoing": Outgoing.keys,
                    "kubernetes": Kubernetes.keys, "incoming": Incoming.keys,
                ])
            return config
        } catch let error as ConfigError {
            throw error
        } catch let error as DecodingError {
            throw ConfigError(describe(error))
        } catch {
            throw ConfigError("\(error)")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let joined = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(
                separator: ".")
            return joined.isEmpty ? "" : "\(joined): "
        }
        switch error {
        case .typeMismatch(let type, let context):
            return
                "\(path(context))expected \(type == String.self ? "a string" : type == Bool.self ? "true or false" : type == Int.self ? "a number" : "a list of strings")"
        case .valueNotFound(_, let context), .keyNotFound(_, let context), .dataCorrupted(let context):
            let underlying = context.underlyingError.map { ": \($0)" } ?? ""
            return "\(path(context))\(context.debugDescription)\(underlying)"
        @unknown default:
            return "\(error)"
        }
    }
}

/// A config error, in words for the user.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The file's top level as keys only, to find unknown ones.
struct Loose: Decodable {
    let keys: [String: [String]]

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        var keys: [String: [String]] = [:]
        for key in container.allKeys {
            let section = try? container.nestedContainer(keyedBy: AnyKey.self, forKey: key)
            keys[key.stringValue] = section?.allKeys.map(\.stringValue) ?? []
        }
        self.keys = keys
    }

    func checkKeys(_ known: [String], at prefix: String, sections: [String: [String]]) throws(ConfigError) {
        for (key, inner) in keys.sorted(by: { $0.key < $1.key }) {
            guard known.contains(key) else {
                throw ConfigError("unknown key \(key.debugDescription) (known: \(known.joined(separator: ", ")))")
            }
            let allowed = sections[key] ?? []
            for name in inner.sorted() where !allowed.contains(name) {
                throw ConfigError(
                    "unknown key \("\(key).\(name)".debugDescription) (known in \(key): \(allowed.joined(separator: ", ")))"
                )
            }
        }
    }
}
