import Foundation
import Testing

/// `sysmirror trace --target` against a cluster stand-in: everything but the API server and the kubelet is
/// real (the machine's kubectl, talking HTTPS to the double, the agent as an ephemeral container in the
/// pod's network and process namespaces, a port-forward over WebSocket or SPDY that forwards).
@Suite("Kubernetes targets", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"), .serialized)
final class KubernetesTests {
    let cluster: ClusterStandIn
    let fixtures = Fixtures.shared

    init() throws { cluster = try ClusterStandIn() }
    deinit { cluster.tearDown() }

    @Test("deployment/web: a static Go program reads the pod's files, hostname and environment through the cluster")
    func deployment() throws {
        let program = [fixtures.path("gofixture"), "pod", "/config/app.yaml", "/data"]
        let (outcome, log) = try cluster.trace(program, target: "deployment/web")
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(
            outcome.stdout == """
                config: listen: 8080
                mode: pod
                token: eyJhbGciOiJSUzI1NiJ9.pod-token
                entries: a.txt:file b.txt:file nested:dir
                size: 23 mode: -rw-r--r--
                hostname: \(PodStandIn.hostname)
                DB_HOST: db.default.svc.cluster.local

                """)
        #expect(log.contains { $0.contains(#""/config/app.yaml""#) && $0.contains("→ remote") })
        // Progress, step by step, with the elapsed time.
        for step in [
            "finding deployment/web", "pod default/\(ClusterStandIn.readyPod), container app",
            "ephemeral container sysmirror-agent-", "agent answering at 127.0.0.1:",
        ] {
            #expect(outcome.stderr.contains(step), "\(outcome.stderr)")
        }
        #expect(outcome.stderr.contains("sysmirror: [  0."))

        // The ready pod (not the newer unready one), its application container (not the mesh sidecar), and
        // only the capabilities reading files and mirroring its ports (on by default) need; the pod spec
        // holds the token's digest, not the token.
        let added = try #require(cluster.recorded.first { $0["ephemeral_container"] != nil })
        #expect(added["pod"] as? String == ClusterStandIn.readyPod)
        let container = try #require(added["ephemeral_container"] as? [String: Any])
        #expect(container["targetContainerName"] as? String == "app")
        let security = try #require(container["securityContext"] as? [String: Any])
        let capabilities = try #require(security["capabilities"] as? [String: [String]])
        #expect(capabilities == ["drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"]])
        let command = try #require(container["command"] as? [String])
        #expect(command.starts(with: ["/usr/local/bin/sysmirror", "agent", "--listen"]))
        #expect(command[3].hasPrefix("127.0.0.1:"))
        let digest = try #require(command.firstIndex(of: "--token-sha256").map { command[$0 + 1] })
        #expect(digest.count == 64)

        // One connection through the port-forward in all: the one that found the agent answering is the
        // session's link, so the session does not pay kubectl's stream set-up and a hello a second time.
        let connections = cluster.recorded.filter { $0["event"] as? String == "stream" }
        #expect(connections.count == 1, "\(connections)")

        // Nothing lingers: the port-forward ended with sysmirror.
        let forwards = cluster.portForwards
        #expect(forwards.count == 1)
        for pid in forwards { #expect(exits(pid, within: 5), "port-forward \(pid) still runs") }
        // Without sysmirror the same program finds none of it.
        #expect(try cluster.pod.direct(program).status != 0)
    }

    @Test("targetless: a pod of its own, no capabilities, a deadline; deleted when the program ends")
    func targetless() throws {
        let (outcome, log) = try cluster.trace(
            ["/bin/busybox", "sh", "-c", "/bin/busybox cat /etc/resolv.conf > /dev/null && /bin/busybox hostname"],
            target: "targetless", options: ["--quiet"])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stderr.isEmpty, "--quiet: no progress")
        // The agent's pod is not the program's: the hostname stays this machine's.
        #expect(outcome.stdout == (try Run.process(["hostname"]).stdout))
        // The pod's resolv.conf: asked for, or kept from the session's start (the file cache fetches it).
        #expect(
            log.contains { $0.contains(#""/etc/resolv.conf""#) && ($0.contains("→ remote") || $0.contains("→ cached")) }
        )
        let created = try #require(
            cluster.recorded.first { $0["created_pod"] != nil }?["created_pod"] as? [String: Any])
        let spec = try #require(created["spec"] as? [String: Any])
        #expect(spec["activeDeadlineSeconds"] as? Int == 12 * 3600)
        #expect(spec["automountServiceAccountToken"] as? Bool == false)
        let agent = try #require((spec["containers"] as? [[String: Any]])?.first)
        let security = try #require(agent["securityContext"] as? [String: Any])
        #expect(security["runAsUser"] as? Int == 65534)
        #expect((security["capabilities"] as? [String: [String]]) == ["drop": ["ALL"]])
        let name = try #require((created["metadata"] as? [String: Any])?["name"] as? String)
        #expect(cluster.recorded.contains { $0["deleted_pod"] as? String == name })
        for pid in cluster.portForwards { #expect(exits(pid, within: 5)) }
    }

    @Test(
        "Each failure says what failed and what to do; the program never starts and nothing is left running",
        arguments: [
            (["--namespace", "nope"], "deployment/web", "the namespace \"nope\" does not exist"),
            ([], "deployment/nope", "deployment \"nope\" was not found in the current context's namespace"),
            ([], "deployment/api", "deployment/api has no ready pod (api-5c6d7e-aaaaa: Running, CrashLoopBackOff)"),
            ([], "pod/\(ClusterStandIn.unreadyPod)", "the pod \(ClusterStandIn.unreadyPod) is not ready"),
            (
                [], "pod/\(ClusterStandIn.readyPod)/container/nope",
                "has no container \"nope\"; its containers are istio-proxy, app"
            ),
            (["--context", "nope"], "deployment/web", "the context \"nope\" is not in your kubeconfig"),
            (["--context", ClusterStandIn.Context.offline], "deployment/web", "cannot reach the cluster's API server"),
            (
                ["--kubeconfig", "/nope"], "deployment/web",
                "kubectl cannot read its kubeconfig: error: stat /nope: no such file or directory"
            ),
            (
                ["--context", ClusterStandIn.Context.viewer], "deployment/web",
                "does not let user \"viewer\" patch pods/ephemeralcontainers in the namespace \"default\""
            ),
            (
                ["--context", ClusterStandIn.Context.noForward], "deployment/web",
                "does not let user \"no-forward\" create pods/portforward in the namespace \"default\""
            ),
            (
                ["--context", ClusterStandIn.Context.expired], "deployment/web",
                "the cluster refused your credentials (Unauthorized)"
            ),
            (
                ["--context", ClusterStandIn.Context.legacy], "deployment/web",
                "this cluster does not accept ephemeral containers"
            ),
            (
                ["-n", "secure"], "statefulset/vault",
                "Pod Security admission refused the agent container: violates PodSecurity \"baseline:latest\""
            ),
            (
                ["--agent-image", "registry.example/missing:1"], "deployment/web",
                "the agent image registry.example/missing:1 could not be pulled (ErrImagePull): Failed to pull image"
            ),
            (
                ["--agent-image", ClusterStandIn.slowImage, "--agent-timeout", "2"], "deployment/web",
                "the agent was not ready after 2 s (ContainerCreating)"
            ),
            ([], "job/web", "--target job/web: \"job\" is not a kind sysmirror can target"),
        ])
    func failures(options: [String], target: String, message: String) throws {
        let marker = fixtures.path("ran-\(UUID().uuidString)")
        let (outcome, _) = try cluster.trace(["/bin/busybox", "touch", marker], target: target, options: options)
        #expect(outcome.status != 0)
        #expect(outcome.stderr.contains(message), "\(outcome.stderr)")
        #expect(!FileManager.default.fileExists(atPath: marker), "the program ran")
        #expect(cluster.portForwards.allSatisfy { exits($0, within: 5) })
    }

    @Test("No kubectl, or one too old: said at once, with what to do")
    func kubectl() throws {
        let program = ["/bin/busybox", "true"]
        let (missing, _) = try cluster.trace(
            program, target: "deployment/web", path: cluster.directory.appendingPathComponent("empty").path)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("kubectl was not found on PATH"), "\(missing.stderr)")
        let old = cluster.directory.appendingPathComponent("old-bin").path
        let (tooOld, _) = try cluster.trace(program, target: "deployment/web", path: old)
        #expect(tooOld.status == 1)
        #expect(tooOld.stderr.contains("kubectl v1.29.4 is too old: sysmirror needs 1.31 or later"), "\(tooOld.stderr)")
    }

    @Test(
        "The RBAC hint's own command, run as the denied user, answers no",
        arguments: [
            (
                ClusterStandIn.Context.viewer,
                "kubectl auth can-i patch pods --subresource=ephemeralcontainers -n default"
            ),
            (ClusterStandIn.Context.noForward, "kubectl auth can-i create pods --subresource=portforward -n default"),
        ])
    func rbacHint(context: String, hint: String) throws {
        let (outcome, _) = try cluster.trace(
            ["/bin/busybox", "true"], target: "deployment/web", options: ["--context", context])
        #expect(outcome.status == 1)
        let said = try #require(
            outcome.stderr.components(separatedBy: "`").first { $0.hasPrefix("kubectl auth can-i ") },
            "\(outcome.stderr)")
        #expect(said == hint)
        let command = said.split(separator: " ").map(String.init) + ["--context", context]
        let answer = try cluster.asDeveloper(command)
        #expect(answer.stdout == "no\n", "\(answer.stderr)")
        #expect(answer.status == 1)
        // The same question for the developer, who may: the command tells them apart.
        let allowed = try cluster.asDeveloper(Array(command.dropLast(2)))
        #expect(allowed.stdout == "yes\n", "\(allowed.stderr)")
    }

    @Test(
        "A session's port-forward over WebSocket, and over SPDY where the cluster refuses WebSocket",
        arguments: [(ClusterStandIn.Context.dev, "websocket"), (ClusterStandIn.Context.spdy, "spdy")])
    func portForwardTransport(context: String, transport: String) throws {
        let (outcome, log) = try cluster.trace(
            ["/bin/busybox", "cat", "/config/app.yaml"], target: "deployment/web", options: ["--context", context])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout == "listen: 8080\nmode: pod\n")
        #expect(log.contains { $0.contains(#""/config/app.yaml""#) && $0.contains("→ remote") })
        let transports = cluster.portForwardTransports
        #expect(!transports.isEmpty && transports.allSatisfy { $0 == transport }, "\(transports)")
        if transport == "spdy" {
            // kubectl asked for a WebSocket first, and fell back when it was refused.
            #expect(
                cluster.recorded.contains {
                    $0["portforward"] as? String == "websocket" && $0["event"] as? String == "refused"
                })
        }
    }

    @Test("A port-forward that ends mid-session is started again on the same port, and the session goes on")
    func portForwardEnds() throws {
        let output = fixtures.path("forward-ends-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let trace = try cluster.startTrace(
            [
                "--target", "deployment/web", "--", "/bin/busybox", "sh", "-c",
                "sleep 3; /bin/busybox cat /config/app.yaml; echo status $?",
            ], output: output)
        try PodStandIn.waitUntil("the port-forward") { !cluster.portForwards.isEmpty }
        usleep(300_000)
        let first = cluster.portForwards
        for pid in first { kill(pid, SIGKILL) }
        trace.waitUntilExit()
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(trace.terminationStatus == 0, "\(text)")
        #expect(
            text.contains("kubectl port-forward to the agent in default/\(ClusterStandIn.readyPod) ended"), "\(text)")
        #expect(text.contains("starting it again on 127.0.0.1:") && text.contains("is back"), "\(text)")
        #expect(text.contains("listen: 8080") && text.contains("status 0"), "\(text)")
        #expect(cluster.portForwards.count > first.count, "a new port-forward: \(cluster.portForwards)")
        for pid in cluster.portForwards { #expect(exits(pid, within: 5), "port-forward \(pid) outlived sysmirror") }
    }

    @Test("An agent that listens two seconds after its container runs: the port-forward kubectl ends is started again")
    func agentListensLate() throws {
        let (outcome, log) = try cluster.trace(
            ["/bin/busybox", "cat", "/config/app.yaml"], target: "deployment/web",
            options: ["--agent-image", ClusterStandIn.lateImage])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.contains("listen: 8080"), "\(outcome.stdout)")
        #expect(log.contains { $0.contains(#""/config/app.yaml""#) && $0.contains("→ remote") })
        // kubectl ended the first port-forward at the stream the pod refused.
        #expect(cluster.recorded.contains { $0["portforward"] != nil && $0["event"] as? String == "refused" })
        #expect(cluster.portForwards.count >= 2, "\(cluster.portForwards)")
        for pid in cluster.portForwards { #expect(exits(pid, within: 5)) }
    }

    @Test("A session longer than the kubelet's stream idle timeout: each quiet port-forward that ends comes back")
    func idleTimeout() throws {
        let (outcome, _) = try cluster.trace(
            [
                "/bin/busybox", "sh", "-c",
                "for i in 1 2; do sleep \(ClusterStandIn.idleTimeout + 2); /bin/busybox cat /config/app.yaml || echo failed; done",
            ], target: "deployment/web", options: ["--context", ClusterStandIn.Context.idle])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout.components(separatedBy: "listen: 8080").count == 3, "\(outcome.stdout)")
        #expect(!outcome.stdout.contains("failed"), "\(outcome.stdout)")
        #expect(cluster.recorded.contains { $0["event"] as? String == "idle-timeout" }, "the kubelet's timeout struck")
        #expect(outcome.stderr.contains("is back"), "\(outcome.stderr)")
    }

    @Test("Ctrl-C while the agent starts, and a killed sysmirror: no port-forward or program left behind")
    func interruptions() throws {
        let trace = try cluster.startTrace(
            ["--target", "deployment/web", "--agent-image", ClusterStandIn.slowImage, "--", "/bin/busybox", "true"],
            output: nil)
        // The slow image's container never starts: the request is the moment to interrupt.
        try PodStandIn.waitUntil("the agent to be requested") {
            cluster.recorded.contains { $0["ephemeral_container"] != nil }
        }
        kill(trace.processIdentifier, SIGINT)
        trace.waitUntilExit()
        #expect(trace.terminationStatus == 130)

        let sleeper = try cluster.startTrace(
            ["--target", "deployment/web", "--", "/bin/busybox", "sleep", "600"], output: nil)
        try PodStandIn.waitUntil("the port-forward") { !cluster.portForwards.isEmpty }
        var program: Int32 = 0
        try PodStandIn.waitUntil("the program") {
            let children =
                (try? String(
                    contentsOfFile: "/proc/\(sleeper.processIdentifier)/task/\(sleeper.processIdentifier)/children",
                    encoding: .utf8)) ?? ""
            program =
                children.split(separator: " ").compactMap { Int32($0) }.first {
                    (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) == "busybox\n"
                } ?? 0
            return program > 0
        }
        kill(sleeper.processIdentifier, SIGKILL)
        for pid in cluster.portForwards { #expect(exits(pid, within: 5), "port-forward \(pid) outlived sysmirror") }
        // A killed supervisor leaves its program running (as without --target); Process would wait for it.
        kill(program, SIGKILL)
        sleeper.waitUntilExit()
    }
}

/// The target pod replaced or deleted mid-session (a rollout, a `kubectl delete`): the cluster stand-in's
/// second pod and its deletion, as kubectl sees them. Each test has a cluster of its own.
@Suite(
    "Kubernetes targets: the pod replaced mid-session", .enabled(if: PodStandIn.isAvailable, "needs root"),
    .serialized)
final class KubernetesRolloutTests {
    let cluster: ClusterStandIn
    let fixtures = Fixtures.shared

    init() throws { cluster = try ClusterStandIn() }
    deinit { cluster.tearDown() }

    @Test("deployment/web follows a rollout to the new ready pod: the next remote read comes from there")
    func rollout() throws {
        let name = "rollout-\(UUID().uuidString)"
        let output = fixtures.path("\(name).out"), errors = fixtures.path("\(name).err")
        let log = fixtures.path("\(name).log")
        defer { for file in [output, errors, log] { try? FileManager.default.removeItem(atPath: file) } }
        let trace = try cluster.startTrace(
            ["--target", "deployment/web", "--log", log, "--"] + Self.generationReader(endingAtAnError: false),
            output: output, errors: errors)
        defer { Self.stop(trace) }
        try Self.waitForLine("1", in: output, errors: errors, of: trace)
        try cluster.rollOut()
        let ended = Self.ends(trace, within: 60)
        let said = Self.text(errors)
        #expect(ended, "the trace still ran 60 s after the rollout: \(said)")
        #expect(Self.text(output) == "1\n2\n", "\(said)")
        if ended { #expect(trace.terminationStatus == 0, "\(said)") }
        #expect(said.contains(ClusterStandIn.replacementPod) && said.contains("replaced"), "\(said)")
        // A new agent, added to the new pod.
        #expect(
            cluster.recorded.contains {
                $0["ephemeral_container"] != nil && $0["pod"] as? String == ClusterStandIn.replacementPod
            })
        for pid in cluster.portForwards { #expect(exits(pid, within: 5), "port-forward \(pid) outlived sysmirror") }
    }

    @Test("pod/NAME whose pod is deleted: the program's next remote read fails with EIO, and sysmirror says why")
    func podDeleted() throws {
        let name = "deleted-\(UUID().uuidString)"
        let output = fixtures.path("\(name).out"), errors = fixtures.path("\(name).err")
        let log = fixtures.path("\(name).log")
        defer { for file in [output, errors, log] { try? FileManager.default.removeItem(atPath: file) } }
        let trace = try cluster.startTrace(
            ["--target", "pod/\(ClusterStandIn.readyPod)", "--log", log, "--"]
                + Self.generationReader(endingAtAnError: true),
            output: output, errors: errors)
        defer { Self.stop(trace) }
        try Self.waitForLine("1", in: output, errors: errors, of: trace)
        try cluster.deletePod()
        // sysmirror gives the link up at once: the next read fails with EIO.
        let ended = Self.ends(trace, within: 40)
        let said = Self.text(errors)
        #expect(ended, "the trace still ran 40 s after the pod was deleted: \(said)")
        #expect(Self.text(output) == "1\nEIO\n", "\(said)")
        if ended { #expect(trace.terminationStatus == 3, "the program's own status: \(said)") }
        #expect(said.contains("is gone") && said.contains("deployment/"), "\(said)")
        for pid in cluster.portForwards { #expect(exits(pid, within: 5), "port-forward \(pid) outlived sysmirror") }
    }

    /// Python: reads the pod's generation file every 100 ms for up to 40 s and prints each value that differs
    /// from the one before (a failed read as its errno's name). Exits 0 once it read 2, 1 at 40 s, and with
    /// `endingAtAnError` 3 at the first failed read.
    static func generationReader(endingAtAnError: Bool) -> [String] {
        let script = """
            import errno, sys, time
            seen, deadline = None, time.monotonic() + 40
            while time.monotonic() < deadline:
                try:
                    with open('\(ClusterStandIn.generationFile)') as f:
                        value = f.read().strip()
                except OSError as error:
                    value = errno.errorcode.get(error.errno, str(error.errno))
                    if \(endingAtAnError ? "True" : "False"):
                        print(value, flush=True)
                        sys.exit(3)
                if value != seen:
                    print(value, flush=True)
                    seen = value
                if value == '2':
                    sys.exit(0)
                time.sleep(0.1)
            sys.exit(1)
            """
        return ["/usr/bin/python3", "-c", script]
    }

    static func text(_ file: String) -> String { (try? String(contentsOfFile: file, encoding: .utf8)) ?? "" }

    /// Waits up to 60 s until the program printed `line`; throws (with what sysmirror said) if it does not.
    static func waitForLine(_ line: String, in output: String, errors: String, of trace: Process) throws {
        let printed = { text(output).split(separator: "\n").contains(Substring(line)) }
        try? PodStandIn.waitUntil("the program's \(line)", timeout: 60) { printed() || !trace.isRunning }
        guard printed() else {
            throw FixtureError(description: "the program never printed \(line): \(text(output))\(text(errors))")
        }
    }

    /// Whether a started trace ends within `seconds`.
    static func ends(_ trace: Process, within seconds: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while trace.isRunning && Date() < deadline { usleep(50_000) }
        return !trace.isRunning
    }

    /// Ends a trace that still runs (a failed test): its children (the program, kubectl) and sysmirror.
    static func stop(_ trace: Process) {
        guard trace.isRunning else { return }
        let pid = trace.processIdentifier
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        for task in tasks {
            let children = text("/proc/\(pid)/task/\(task)/children")
            for child in children.split(separator: " ").compactMap({ Int32($0) }) { kill(child, SIGKILL) }
        }
        kill(pid, SIGKILL)
        trace.waitUntilExit()
    }
}

/// Outgoing connections through the port-forward: the agent connects from the pod and relays.
@Suite("Kubernetes targets: outgoing TCP", .enabled(if: PodStandIn.isAvailable, "needs root for namespaces"))
final class KubernetesOutgoingTests {
    let cluster: ClusterStandIn
    let fixtures = Fixtures.shared

    init() throws { cluster = try ClusterStandIn(network: true) }
    deinit { cluster.tearDown() }

    @Test("A client's half-close reaches the pod through the port-forward, and the answer comes back")
    func halfClose() throws {
        let program = ["/usr/bin/python3", "-c", PodStandIn.halfClosingClient(PodStandIn.Service.echo, 7)]
        let (outcome, log) = try cluster.trace(program, target: "deployment/web", timeout: 30)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(outcome.stdout == "got 1000 bytes\n", "\(outcome.stdout)\(outcome.stderr)")
        #expect(
            log.contains { $0.contains("connect(") && $0.contains("10.96.0.40:7") && $0.contains("through 127.0.0.1:") }
        )
        #expect(try cluster.pod.direct(program).status != 0)
    }

    @Test("HTTP from static Go, redis-cli SET/GET, a refused port, cluster names in Go and glibc, UDP")
    func outgoing() throws {
        let web = "http://\(PodStandIn.Service.web):8080/index.html"
        let script = """
            \(fixtures.path("gofixture")) get \(web) && \
            redis-cli -h \(PodStandIn.Service.redis) SET greeting hello && redis-cli -h \(PodStandIn.Service.redis) GET greeting; \
            \(fixtures.path("gofixture")) get http://\(PodStandIn.Service.web):9/ 2>&1 | grep -o 'connection refused'; \
            python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.sendto(b'x', ('\(PodStandIn.Service.echo)', 7)); data, peer = s.recvfrom(9); print(data.decode(), peer[0])"; \
            \(fixtures.path("gofixture")) get http://web:8080/index.html; \
            python3 -c "import socket; print(socket.gethostbyname('redis.default.svc.cluster.local'))"
            """
        let (outcome, log) = try cluster.trace(["/bin/sh", "-c", script], target: "deployment/web")
        #expect(
            outcome.stdout
                == (PodStandIn.Service.webBody + "OK\nhello\nconnection refused\necho x \(PodStandIn.Service.echo)\n"
                    + PodStandIn.Service.webBody + "\(PodStandIn.Service.redis)\n"),
            "\(outcome.stderr)\n\(log.filter { $0.contains(":53") || $0.contains("resolv") }.joined(separator: "\n"))")
        #expect(
            log.contains {
                $0.contains("connect(") && $0.contains("10.96.0.20:8080") && $0.contains("through 127.0.0.1:")
            })
        #expect(log.contains { $0.contains("recvfrom(") && $0.contains("→ remote") })
        #expect(log.contains { $0.contains("\(PodStandIn.Service.dns):53") && $0.contains("through 127.0.0.1:") })
        #expect(try cluster.pod.direct(["/bin/sh", "-c", "\(fixtures.path("gofixture")) get \(web)"]).status != 0)
    }
}

@Suite("Kubernetes: incoming traffic through the port-forward", .enabled(if: PodStandIn.isAvailable, "needs root"))
final class KubernetesIncomingTests {
    let cluster: ClusterStandIn

    init() throws { cluster = try ClusterStandIn(incoming: true) }
    deinit { cluster.tearDown() }

    @Test("steal with --target: each pod connection comes through a port-forward stream of its own")
    func steal() throws {
        let traced = Box<(Outcome, [String])>()
        let ended = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { [cluster] in
            traced.value = try? cluster.trace(
                PodStandIn.answeringOnce(), target: "deployment/web", options: ["--incoming", "steal"])
            ended.signal()
        }
        var answer = ""
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && !answer.hasPrefix("local") {
            answer = (try? cluster.pod.client(["GET /x"]))?.first ?? ""
            usleep(50_000)
        }
        #expect(answer.hasPrefix("local \(PodStandIn.clientAddress)"), "\(answer)")
        #expect(ended.wait(timeout: .now() + 60) == .success)
        let (outcome, log) = try #require(traced.value)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        #expect(log.contains { $0.contains("listen(") && $0.contains("port 8080 of the pod: stolen") })
        #expect(log.contains { $0.contains("incoming connection from \(PodStandIn.clientAddress):") })
        // The agent was given what taking a port needs.
        let added = try #require(cluster.recorded.first { $0["ephemeral_container"] != nil })
        let container = try #require(added["ephemeral_container"] as? [String: Any])
        let security = try #require(container["securityContext"] as? [String: Any])
        #expect((security["capabilities"] as? [String: [String]])?["add"]?.contains("NET_ADMIN") == true)
    }

    @Test("steal with --target: the pod client's half-close reaches the local program, and its answer comes back")
    func stealHalfClose() throws {
        // The local program answers once its client's input ends.
        let local = [
            "/usr/bin/python3", "-c", PodStandIn.answeringAtEndOfInput("127.0.0.1", 8080, prefix: "local ", once: true),
        ]
        let client = PodStandIn.halfClosingClient(PodStandIn.podAddress, 8080)
        let traced = Box<(Outcome, [String])>()
        let ended = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { [cluster] in
            traced.value = try? cluster.trace(local, target: "deployment/web", options: ["--incoming", "steal"])
            ended.signal()
        }
        var answer = ""
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && !answer.hasPrefix("local") {
            answer =
                (try? Run.process(["ip", "netns", "exec", cluster.pod.clientNamespace, "python3", "-c", client]))?
                .stdout ?? ""
            usleep(100_000)
        }
        #expect(answer == "local got 1000 bytes\n", "\(answer)")
        #expect(ended.wait(timeout: .now() + 60) == .success)
        let (outcome, _) = try #require(traced.value)
        #expect(outcome.status == 0, "\(outcome.stderr)")
    }
}
