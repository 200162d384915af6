import Foundation
import LinuxSystem

/// The user's own kubectl, with the user's `--kubeconfig`, `--context` and `--namespace` (and KUBECONFIG,
/// through the environment): every way of logging in to a cluster that kubectl knows keeps working.
public struct Kubectl: Sendable {
    /// kubectl's own global flags, as the user gave them to sysmirror.
    public struct Settings: Equatable, Sendable {
        public var kubeconfig: String?
        public var context: String?
        public var namespace: String?

        public init(kubeconfig: String? = nil, context: String? = nil, namespace: String? = nil) {
            self.kubeconfig = kubeconfig
            self.context = context
            self.namespace = namespace
        }

        var flags: [String] {
            (kubeconfig.map { ["--kubeconfig", $0] } ?? []) + (context.map { ["--context", $0] } ?? [])
                + (namespace.map { ["--namespace", $0] } ?? [])
        }
    }

    public let path: String
    public let settings: Settings
    let environment: [String]
    /// Asked while a call runs; true ends it (Ctrl-C).
    var shouldStop: @Sendable () -> Bool
    /// No API call waits longer than this for the server.
    static let requestTimeout = "30s"

    /// Finds kubectl on PATH and checks its version.
    public init(settings: Settings, environment: [String], shouldStop: @escaping @Sendable () -> Bool)
        throws(KubernetesFailure)
    {
        let searchPath = environment.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) }
        guard case .found(let path) = ExecutableLookup.resolve("kubectl", searchPath: searchPath),
            access(path, X_OK) == 0
        else { throw .kubectlMissing }
        self.path = path
        self.settings = settings
        self.environment = environment
        self.shouldStop = shouldStop
        let version = try json(ClientVersion.self, ["version", "--client", "-o", "json"], global: false)
        guard let release = version.release else {
            throw .kubectlUnusable("unreadable version \(version.clientVersion.gitVersion.debugDescription)")
        }
        if release < KubernetesFailure.minimumKubectl {
            throw .kubectlTooOld(version: version.clientVersion.gitVersion)
        }
    }

    /// Runs `kubectl FLAGS ARGUMENTS` to its end and returns its standard output; a failure is classified
    /// from its standard error. `object` names what the call is about, for a NotFound.
    public func run(
        _ arguments: [String], input: [UInt8]? = nil, about object: (kind: String, name: String)? = nil,
        global: Bool = true
    ) throws(KubernetesFailure) -> [UInt8] {
        let full = [path] + (global ? settings.flags + ["--request-timeout", Self.requestTimeout] : []) + arguments
        let command = Self.describe(arguments)
        let completion: HelperProcess.Completion
        do {
            completion = try HelperProcess.run(
                path: path, arguments: full, environment: environment, input: input, timeout: .seconds(60),
                shouldStop: shouldStop)
        } catch {
            switch error {
            case .stopped: throw .interrupted
            case .timedOut: throw .kubectl(command: command, message: "no answer within 60 s")
            case .cannotRun(_, let errno): throw .kubectlUnusable("\(path): \(errno)")
            case .system(let error): throw .kubectlUnusable("\(error)")
            }
        }
        guard completion.status == 0 else {
            throw KubernetesFailure.classify(
                errors: String(decoding: completion.errors, as: UTF8.self), command: command, object: object,
                namespace: settings.namespace, context: settings.context)
        }
        return completion.output
    }

    /// Runs a call with `-o json` output and decodes it.
    public func json<T: Decodable>(
        _ type: T.Type, _ arguments: [String], input: [UInt8]? = nil, about object: (kind: String, name: String)? = nil,
        global: Bool = true
    ) throws(KubernetesFailure) -> T {
        let output = try run(arguments, input: input, about: object, global: global)
        do {
            return try JSONDecoder().decode(T.self, from: Data(output))
        } catch {
            throw .kubectl(
                command: Self.describe(arguments),
                message: "unexpected output (\(error)): \(String(decoding: output.prefix(200), as: UTF8.self))")
        }
    }

    /// `kubectl port-forward pod/POD LOCAL:PORT` on 127.0.0.1 (a local port kubectl picks unless given);
    /// returns the process and the local port, once kubectl says it is forwarding.
    public func portForward(pod: String, port: UInt16, localPort: UInt16? = nil) throws(KubernetesFailure)
        -> (HelperProcess, UInt16)
    {
        let arguments =
            [path] + settings.flags + [
                "port-forward", "pod/\(pod)", "\(localPort.map(String.init) ?? ""):\(port)", "--address", "127.0.0.1",
            ]
        let forward: HelperProcess
        do {
            forward = try HelperProcess(path: path, arguments: arguments, environment: environment)
        } catch {
            throw .portForward("\(error)")
        }
        // "Forwarding from 127.0.0.1:41234 -> 28345"
        while let line = forward.readLine(timeout: .seconds(30), shouldStop: shouldStop) {
            if line.hasPrefix("Forwarding from 127.0.0.1:"),
                let local = line.dropFirst("Forwarding from 127.0.0.1:".count).split(separator: " ").first,
                let number = UInt16(local)
            {
                return (forward, number)
            }
        }
        forward.terminate()
        forward.wait()
        if shouldStop() { throw .interrupted }
        let errors = String(decoding: forward.availableErrors(), as: UTF8.self)
        throw KubernetesFailure.classify(
            errors: errors.isEmpty ? "kubectl port-forward said nothing within 30 s" : errors,
            command: "kubectl port-forward", object: ("pod", pod), namespace: settings.namespace,
            context: settings.context)
    }

    /// A call as messages name it: `kubectl get deployment web`.
    static func describe(_ arguments: [String]) -> String {
        (["kubectl"] + arguments.prefix(3)).joined(separator: " ")
    }
}
