import AgentLink
import AgentProtocol
import ArgumentParser
import Logging
import Routing
import SystemPackage

extension EnvironmentFile.Format: ExpressibleByArgument {}

struct EnvCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "env",
        abstract: "Print the pod's variables that `trace` gives a program, as a dotenv file or JSON.",
        discussion: """
            For run configurations that cannot wrap their command (docs/debugging.md). These are the pod's \
            variables that trace takes, by the same rules (never PATH, HOME, TERM and the rest of the local \
            set; --env-include, --env-exclude and the config file's env): set over your environment, they give \
            the program what trace gives it. The dotenv file is in python-dotenv's dialect: values of only \
            letters, digits and _-./:,+@%=~^ are bare, others in single quotes with \\ and ' escaped by a \
            backslash and newlines kept (python-dotenv expands ${NAME} in any value unless told \
            interpolate=False); docker compose and VS Code's envFile read it alike except for values that \
            hold a backslash, a single quote or a newline. Names other than [A-Za-z_][A-Za-z0-9_]* and values \
            ending with a backslash are left out of it, with a warning; JSON has them all.
            """
    )

    @OptionGroup var session: SessionOptions

    @OptionGroup var environmentOptions: EnvironmentOptions

    @Option(help: "env: NAME=VALUE lines (a dotenv file); json: one object.")
    var format: EnvironmentFile.Format = .env

    @Option(
        name: .shortAndLong,
        help: ArgumentHelp(
            "Write to FILE (created 0600: the pod's variables may hold secrets) instead of standard output.",
            valueName: "FILE"))
    var output: String?

    @Flag(help: "No notes from sysmirror; errors still show.")
    var quiet = false

    func run() throws {
        Sysmirror.bootstrapLogging(quiet: quiet)
        let logger = Logger(label: "sysmirror")
        try SetupFailure.reported(by: logger, consequence: "") {
            try writeEnvironment(logger: logger)
        }
    }

    func writeEnvironment(logger: Logger) throws {
        let settings = try session.loadSettings()
        let source = try session.agentSource(settings) { _ in SessionOptions.ClusterFeatures() }
        let pod: [String]
        switch source {
        case .none:
            throw ValidationError(
                "sysmirror env reads a pod's environment: add --target KIND/NAME or --agent ADDRESS --token-file FILE (or kubernetes.target or agent.address in --config)."
            )
        case .cluster(let request) where request.target == .targetless:
            throw ValidationError(
                "a targetless agent's pod has no environment of yours: give --target pod/NAME, deployment/NAME or statefulset/NAME."
            )
        case _ where settings.env?.remote == false:
            logger.notice("the config file's env.remote is false: trace takes none of the pod's variables")
            pod = []
        case .given(let address, let tokenFile):
            let (address, token) = try AgentSource.endpoint(address: address, tokenFile: tokenFile)
            pod = try Self.podEnvironment(address: address, token: token, logger: logger)
        case .cluster(let request):
            let cluster = try AgentSource.startCluster(request, environment: currentEnvironment(), logger: logger)
            defer { cluster.end() }
            pod = try Self.podEnvironment(address: cluster.address, token: cluster.token, logger: logger)
        }
        let variables = EnvironmentFile.variables(pod: pod, merge: environmentOptions.merge(settings))
        let text: String
        switch format {
        case .json:
            text = EnvironmentFile.json(variables)
        case .env:
            let (dotenv, leftOut) = EnvironmentFile.dotenv(variables)
            if !leftOut.isEmpty {
                logger.warning(
                    "left out of the dotenv file (a name other than letters, digits and _, or a value ending with a backslash, which dotenv readers misread): \(leftOut.joined(separator: ", ")). --format json has them."
                )
            }
            text = dotenv
        }
        try write(text)
    }

    /// The pod's environment, as the agent reads it (`KEY=VALUE` entries).
    static func podEnvironment(address: AgentAddress, token: [UInt8], logger: Logger) throws -> [String] {
        let client: AgentClient
        let answers: [Result<Response, AgentCallError>]
        do {
            (client, answers) = try AgentClient.connect(
                to: address, token: token, logger: logger, asking: [.environment])
        } catch {
            throw SetupFailure(message: error.description)
        }
        defer { client.close() }
        do {
            guard case .environment(let entries) = try answers[0].get() else {
                throw AgentCallError("an answer that is not an environment")
            }
            return entries.map { String(decoding: $0, as: UTF8.self) }
        } catch {
            throw SetupFailure(message: "the agent at \(address) did not give the pod's environment: \(error).")
        }
    }

    func write(_ text: String) throws {
        do {
            guard let output else {
                _ = try FileDescriptor.standardOutput.writeAll(text.utf8)
                return
            }
            let file = try FileDescriptor.open(
                FilePath(output), .writeOnly, options: [.create, .truncate, .closeOnExec],
                permissions: [.ownerReadWrite])
            try file.closeAfter { _ = try file.writeAll(text.utf8) }
        } catch {
            throw SetupFailure(message: "cannot write \(output ?? "the standard output"): \(error).")
        }
    }
}
