import Agent
import AgentLink
import ArgumentParser
import Configuration
import Kubernetes
import Logging
import Routing

#if canImport(Glibc)
    import Glibc
#endif

/// Where the session's agent is, and the settings file: the options `trace` and `env` share.
struct SessionOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The agent serving the pod's files and environment: unix:/path, HOST:PORT or PORT.", valueName: "ADDRESS"))
    var agent: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp("The agent's session token.", valueName: "FILE"))
    var tokenFile: String?

    @Option(
        help: ArgumentHelp(
            "Run as if in this Kubernetes pod: pod/NAME, deployment/NAME or statefulset/NAME, optionally followed by /container/NAME; or targetless (outgoing traffic only). The agent is started through your kubectl (docs/kubernetes.md).",
            valueName: "TARGET"))
    var target: String?

    @Option(name: .shortAndLong, help: "The target's namespace (default: the kubectl context's).")
    var namespace: String?

    @Option(help: "The kubectl context to use (default: the current one).")
    var context: String?

    @Option(
        help: ArgumentHelp("The kubeconfig kubectl reads (default: KUBECONFIG or ~/.kube/config).", valueName: "FILE"))
    var kubeconfig: String?

    @Option(
        name: .customLong("agent-image"),
        help: ArgumentHelp("The agent's container image (default: \(Self.defaultImage)).", valueName: "IMAGE"))
    var agentImage: String?

    @Option(
        name: .customLong("agent-timeout"),
        help: ArgumentHelp(
            "Seconds the agent may take to start and answer (default \(Self.defaultAgentTimeout)).", valueName: "S"))
    var agentTimeout: Int?

    @Option(help: ArgumentHelp("Settings in YAML or JSON (docs/configuration.md); flags win.", valueName: "FILE"))
    var config: String?

    static let defaultImage = "ghcr.io/sysmirror/agent:\(Sysmirror.configuration.version)"
    static let defaultAgentTimeout = 60

    func validate() throws {
        if agent != nil && target != nil {
            throw ValidationError(
                "--agent and --target both say where the agent is: give --agent for one you started, or --target for one sysmirror starts in the cluster."
            )
        }
        if let agentTimeout, agentTimeout <= 0 {
            throw ValidationError("--agent-timeout must be a positive number of seconds.")
        }
    }

    func loadSettings() throws -> SessionConfig {
        do {
            return try config.map { path throws(ConfigError) in try SessionConfig.load(path: path) } ?? SessionConfig()
        } catch {
            throw SetupFailure(message: error.message.hasSuffix(".") ? error.message : error.message + ".")
        }
    }

    /// What an agent started in the cluster must be allowed to do.
    struct ClusterFeatures {
        var writesFiles = false
        var takesIncoming = false
    }

    /// The agent the flags (over the config file) name: one already running, one to start in the cluster,
    /// or none. `features` is asked for a cluster's agent, with whether the target is targetless.
    func agentSource(_ settings: SessionConfig, features: (_ targetless: Bool) -> ClusterFeatures) throws
        -> AgentSource
    {
        let kubernetes = settings.kubernetes
        if let text = target ?? (agent == nil ? kubernetes?.target : nil) {
            if tokenFile != nil {
                throw ValidationError("--token-file goes with --agent; with --target each session makes its own token.")
            }
            do {
                let wanted = features(text == "targetless")
                return .cluster(
                    KubernetesSession.Request(
                        target: try KubernetesTarget(parsing: text),
                        kubectl: Kubectl.Settings(
                            kubeconfig: kubeconfig ?? kubernetes?.kubeconfig, context: context ?? kubernetes?.context,
                            namespace: namespace ?? kubernetes?.namespace),
                        image: agentImage ?? kubernetes?.agentImage ?? Self.defaultImage,
                        readyTimeout: agentTimeout ?? kubernetes?.agentTimeout ?? Self.defaultAgentTimeout,
                        idleTimeout: Int(AgentServer.defaultIdleTimeout), writesFiles: wanted.writesFiles,
                        takesIncoming: wanted.takesIncoming))
            } catch {
                throw ValidationError("\(error)")
            }
        }
        if namespace != nil || context != nil || kubeconfig != nil || agentImage != nil || agentTimeout != nil {
            throw ValidationError(
                "-n/--namespace, --context, --kubeconfig, --agent-image and --agent-timeout go with --target.")
        }
        guard let address = agent ?? settings.agent?.address else { return .none }
        guard let tokenPath = tokenFile ?? settings.agent?.tokenFile else {
            throw ValidationError("--agent needs --token-file FILE, the same token the agent was started with.")
        }
        return .given(address: address, tokenFile: tokenPath)
    }
}

/// Where the session's agent comes from.
enum AgentSource {
    case none
    case given(address: String, tokenFile: String)
    case cluster(KubernetesSession.Request)

    /// An agent the user started: its address and the token it was started with.
    static func endpoint(address text: String, tokenFile: String) throws -> (AgentAddress, [UInt8]) {
        let address: AgentAddress
        do {
            address = try AgentAddress(parsing: text)
        } catch {
            throw ValidationError("\(error)")
        }
        do {
            return (address, try TokenFile.read(tokenFile))
        } catch {
            throw SetupFailure(message: "\(error)")
        }
    }

    /// Starts the agent in the cluster and reaches it (on the main thread: see KubernetesSession). A failure
    /// is said here and ends sysmirror: 130 when the user interrupted it, 1 otherwise.
    static func startCluster(_ request: KubernetesSession.Request, environment: [String], logger: Logger) throws
        -> KubernetesSession
    {
        do {
            return try KubernetesSession.start(request, environment: environment, logger: logger) {
                logger.notice("\($0)")
            }
        } catch {
            logger.error("\(error)")
            throw ExitCode(error == .interrupted ? 130 : 1)
        }
    }
}

/// The pod variables to take (`--env-include`, `--env-exclude`, over the config file's `env`).
struct EnvironmentOptions: ParsableArguments {
    @Option(
        name: .customLong("env-include"),
        help: ArgumentHelp("Take only the pod's variables matching this glob (repeatable).", valueName: "PATTERN"))
    var envInclude: [String] = []

    @Option(
        name: .customLong("env-exclude"),
        help: ArgumentHelp("Do not take the pod's variables matching this glob (repeatable).", valueName: "PATTERN"))
    var envExclude: [String] = []

    var isEmpty: Bool { envInclude.isEmpty && envExclude.isEmpty }

    func merge(_ settings: SessionConfig) -> EnvironmentMerge {
        EnvironmentMerge(
            include: envInclude.isEmpty ? settings.env?.include ?? [] : envInclude,
            exclude: envExclude + (settings.env?.exclude ?? []))
    }
}

/// A problem found before the session starts that is not a misuse of the command line (an unreadable
/// config or token file, an output that cannot be written): said as an error, without the usage.
struct SetupFailure: Error {
    let message: String

    /// Runs `body`; a setup failure is said, followed by `consequence`, and ends sysmirror with status 1.
    static func reported(by logger: Logger, consequence: String, _ body: () throws -> Void) throws {
        do {
            try body()
        } catch let failure as SetupFailure {
            logger.error("\(failure.message)\(consequence)")
            throw ExitCode(1)
        }
    }
}

/// sysmirror's own environment, as the program and kubectl inherit it.
func currentEnvironment() -> [String] {
    var result: [String] = []
    var cursor = environ
    while let entry = cursor.pointee {
        result.append(String(cString: entry))
        cursor += 1
    }
    return result
}
