import Foundation
import Testing

@testable import Kubernetes

@Suite("Targets")
struct TargetTests {
    @Test(
        "Kinds, names and containers",
        arguments: [
            ("pod/web-1", KubernetesTarget.workload(.pod, name: "web-1", container: nil)),
            ("deployment/web", .workload(.deployment, name: "web", container: nil)),
            ("deploy/web/container/app", .workload(.deployment, name: "web", container: "app")),
            ("statefulset/db.v2", .workload(.statefulset, name: "db.v2", container: nil)),
            ("sts/db/container/pg-main", .workload(.statefulset, name: "db", container: "pg-main")),
            ("targetless", .targetless),
        ])
    func parses(text: String, target: KubernetesTarget) throws {
        #expect(try KubernetesTarget(parsing: text) == target)
    }

    @Test(
        "Bad targets say what is wrong",
        arguments: [
            ("web", "expected pod/NAME"), ("job/web", "\"job\" is not a kind"), ("pod/Web", "not a valid pod name"),
            ("pod/web/app", "expected pod/NAME"), ("pod/web/container/a.b", "not a valid container name"),
            ("pod/", "not a valid pod name"), ("pod/-web", "not a valid pod name"),
        ])
    func rejects(text: String, problem: String) {
        #expect {
            try KubernetesTarget(parsing: text)
        } throws: { error in
            "\(error)".contains(problem) && "\(error)".hasPrefix("--target \(text): ")
        }
    }
}

@Suite("Pod selection")
struct PodSelectionTests {
    static func pod(
        _ name: String, created: String = "2026-11-27T05:00:00Z", ready: Bool = true, containers: [String] = ["app"],
        annotations: [String: String]? = nil, terminating: Bool = false
    ) -> Pod {
        Pod(
            metadata: ObjectMeta(
                name: name, namespace: "default", annotations: annotations, creationTimestamp: created,
                deletionTimestamp: terminating ? "2026-11-27T05:30:00Z" : nil),
            spec: .init(containers: containers.map { .init(name: $0) }),
            status: .init(
                phase: "Running",
                conditions: [.init(type: "Ready", status: ready ? "True" : "False", reason: ready ? nil : "ContainersNotReady")],
                containerStatuses: containers.map {
                    .init(name: $0, ready: ready, state: .init(running: ready ? .init(startedAt: created) : nil))
                }))
    }

    @Test("The newest ready pod that is not being deleted")
    func newestReady() throws {
        let pods = [
            Self.pod("web-a", created: "2026-11-27T05:00:00Z"), Self.pod("web-b", created: "2026-11-27T05:05:00Z"),
            Self.pod("web-c", created: "2026-11-27T05:09:00Z", ready: false),
            Self.pod("web-d", created: "2026-11-27T05:10:00Z", terminating: true),
        ]
        #expect(try PodSelection.pod(of: "deployment/web", from: pods).metadata.name == "web-b")
    }

    @Test("No pods, or none ready: why")
    func noneReady() {
        #expect(throws: KubernetesFailure.notReady(
            "deployment/web has no pods (scaled to zero?). Scale it up, or target another workload.")) {
            try PodSelection.pod(of: "deployment/web", from: [])
        }
        #expect {
            try PodSelection.pod(of: "deployment/web", from: [Self.pod("web-a", ready: false)])
        } throws: { "\($0)".contains("deployment/web has no ready pod (web-a: Running, ContainersNotReady)") }
    }

    @Test("Container: named, the default-container annotation, else the first that is not a mesh sidecar")
    func container() throws {
        let meshed = Self.pod("web", containers: ["istio-proxy", "app", "log"])
        #expect(try PodSelection.container(in: meshed, named: nil) == "app")
        #expect(try PodSelection.container(in: meshed, named: "log") == "log")
        let annotated = Self.pod(
            "web", containers: ["app", "worker"], annotations: ["kubectl.kubernetes.io/default-container": "worker"])
        #expect(try PodSelection.container(in: annotated, named: nil) == "worker")
        #expect(throws: KubernetesFailure.containerUnknown("db", pod: "web", available: ["istio-proxy", "app", "log"])) {
            try PodSelection.container(in: meshed, named: "db")
        }
    }

    @Test("Label selectors in kubectl's syntax")
    func selector() {
        let selector = LabelSelector(
            matchLabels: ["tier": "web", "app": "shop"],
            matchExpressions: [
                .init(key: "track", operator: "In", values: ["stable", "canary"]),
                .init(key: "legacy", operator: "DoesNotExist"), .init(key: "team", operator: "Exists"),
                .init(key: "zone", operator: "NotIn", values: ["b"]),
            ])
        #expect(selector.query == "app=shop,tier=web,track in (stable,canary),!legacy,team,zone notin (b)")
    }

    @Test("Objects as kubectl prints them decode, extra fields and all")
    func decoding() throws {
        let json = """
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "x",
             "creationTimestamp": "2026-11-27T05:00:00Z"},
             "spec": {"containers": [{"name": "app", "image": "a:1", "ports": [{"containerPort": 80}]}],
                      "ephemeralContainers": [{"name": "sysmirror-agent-abc123", "image": "i", "targetContainerName": "app"}]},
             "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
               "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {"startedAt": "t"}}}],
               "ephemeralContainerStatuses": [{"name": "sysmirror-agent-abc123",
                 "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}
            """
        let pod = try JSONDecoder().decode(Pod.self, from: Data(json.utf8))
        #expect(pod.isReady)
        #expect(
            AgentContainerState(pod.status(ofEphemeralContainer: "sysmirror-agent-abc123"), container: "c", image: "i")
                == .failed(.imagePull(image: "i", reason: "ErrImagePull", message: "not found")))
        let version = try JSONDecoder().decode(
            ClientVersion.self, from: Data(#"{"clientVersion": {"gitVersion": "v1.30.4-eks-a737599"}}"#.utf8))
        #expect(version.release! == (1, 30))
    }
}

@Suite("What is asked of the cluster")
struct AgentPlanTests {
    let plan = AgentPlan(
        image: "ghcr.io/sysmirror/agent:0.1.0", containerName: "sysmirror-agent-00beef", port: 24_567,
        tokenDigest: String(repeating: "ab", count: 32), idleTimeout: 60,
        features: .init(targetFiles: true, writesFiles: false))

    @Test("Capabilities per feature, after dropping all")
    func capabilities() {
        #expect(AgentPlan.Features(targetFiles: true, writesFiles: false).capabilities == ["SYS_PTRACE", "DAC_READ_SEARCH"])
        #expect(
            AgentPlan.Features(targetFiles: true, writesFiles: true).capabilities
                == ["SYS_PTRACE", "DAC_READ_SEARCH", "DAC_OVERRIDE", "FOWNER", "CHOWN"])
        #expect(AgentPlan.Features(targetFiles: false, writesFiles: false).capabilities.isEmpty)
        #expect(
            AgentPlan.Features(targetFiles: true, writesFiles: false, takesIncoming: true).capabilities
                == ["SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"])
    }

    @Test("kubectl debug: the target container's process namespace, loopback only, the token's digest")
    func debug() throws {
        let arguments = plan.debugArguments(pod: "web-1", container: "app", customFile: "/tmp/c.json")
        #expect(
            arguments == [
                "debug", "pod/web-1", "--image", "ghcr.io/sysmirror/agent:0.1.0", "--image-pull-policy", "IfNotPresent",
                "--container", "sysmirror-agent-00beef", "--target", "app", "--profile", "general", "--custom",
                "/tmp/c.json", "--quiet", "--", "/usr/local/bin/sysmirror", "agent", "--listen", "127.0.0.1:24567",
                "--pid", "1", "--token-sha256", String(repeating: "ab", count: 32), "--idle-timeout", "60",
            ])
        let custom = try #require(
            try JSONSerialization.jsonObject(with: Data(plan.customProfile.utf8)) as? [String: Any])
        #expect(custom["terminationMessagePolicy"] as? String == "FallbackToLogsOnError")
        let security = try #require(custom["securityContext"] as? [String: Any])
        #expect(security["runAsUser"] as? Int == 0)
        #expect((security["capabilities"] as? [String: [String]]) == ["drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]])
    }

    @Test("A random plan: a fresh name, a port below the ephemeral range")
    func random() {
        let plans = (0..<50).map { _ in
            AgentPlan.random(image: "i", tokenDigest: "d", idleTimeout: 60, features: .init(targetFiles: true, writesFiles: false))
        }
        #expect(plans.allSatisfy { (20000...29999).contains($0.port) && $0.containerName.count == 22 })
        #expect(Set(plans.map(\.containerName)).count > 45)
    }

    @Test("Agent container states: waiting steps, failures at once")
    func states() {
        func state(_ waiting: String, _ message: String = "m") -> AgentContainerState {
            AgentContainerState(
                .init(name: "c", state: .init(waiting: .init(reason: waiting, message: message))), container: "c",
                image: "i")
        }
        #expect(state("ContainerCreating", "") == .starting("ContainerCreating"))
        #expect(state("ImagePullBackOff") == .failed(.imagePull(image: "i", reason: "ImagePullBackOff", message: "m")))
        #expect(state("CreateContainerConfigError") == .failed(.agentFailed(container: "c", reason: "CreateContainerConfigError: m")))
        #expect(AgentContainerState(nil, container: "c", image: "i") == .starting("waiting for the kubelet to create it"))
        let exited = AgentContainerState(
            .init(name: "c", state: .init(terminated: .init(exitCode: 1, reason: "Error", message: "bind: address in use\n"))),
            container: "c", image: "i")
        #expect(exited == .failed(.agentFailed(container: "c", reason: "Error with status 1: bind: address in use")))
    }

    @Test("A failed pull in the kubelet's words: its \"Failed to pull image\" event, not the reason repeated")
    func pullFailure() {
        let container = "spec.ephemeralContainers{sysmirror-agent-00beef}"
        func failed(_ message: String, on path: String = container) -> EventList.Event {
            .init(reason: "Failed", message: message, type: "Warning", involvedObject: .init(fieldPath: path))
        }
        let detail = #"Failed to pull image "registry.example/missing:1": rpc error: code = NotFound desc = not found"#
        // The order a kubelet reports them in, backing off.
        let events = EventList(items: [
            .init(reason: "Pulling", message: "Pulling image", type: "Normal", involvedObject: .init(fieldPath: container)),
            failed(detail), failed("Error: ErrImagePull"),
            .init(reason: "BackOff", message: "Back-off pulling image", type: "Normal", involvedObject: .init(fieldPath: container)),
            failed("Error: ImagePullBackOff"), failed("Failed to pull image of another", on: "spec.containers{app}"),
        ])
        #expect(events.pullFailure(of: "sysmirror-agent-00beef", waiting: "Back-off pulling image") == detail)
        // Without that event: the container's waiting message, else the last failure.
        let generic = EventList(items: [failed("Error: ErrImagePull")])
        #expect(generic.pullFailure(of: "sysmirror-agent-00beef", waiting: "rpc error: not found") == "rpc error: not found")
        #expect(generic.pullFailure(of: "sysmirror-agent-00beef", waiting: "") == "Error: ErrImagePull")
    }
}

@Suite("kubectl's errors, in words")
struct FailureTests {
    @Test(
        "Each kubectl error maps to its failure",
        arguments: [
            (
                #"Error from server (Forbidden): pods "web-1" is forbidden: User "dev@example.com" cannot patch resource "pods/ephemeralcontainers" in API group "" in the namespace "shop""#,
                KubernetesFailure.forbidden(
                    user: "dev@example.com", verb: "patch", resource: "pods/ephemeralcontainers", namespace: "shop")
            ),
            (
                #"Error from server (Forbidden): deployments.apps "web" is forbidden: User "system:serviceaccount:ci:bot" cannot get resource "deployments" in API group "apps" in the namespace "shop""#,
                .forbidden(user: "system:serviceaccount:ci:bot", verb: "get", resource: "deployments.apps", namespace: "shop")
            ),
            (
                #"error: error upgrading connection: pods "web-1" is forbidden: User "dev" cannot create resource "pods/portforward" in API group "" in the namespace "shop""#,
                .forbidden(user: "dev", verb: "create", resource: "pods/portforward", namespace: "shop")
            ),
            (
                #"Error from server (Forbidden): deployments.apps "web" is forbidden: User "dev" cannot patch resource "deployments/scale" in API group "apps" in the namespace "shop""#,
                .forbidden(user: "dev", verb: "patch", resource: "deployments.apps/scale", namespace: "shop")
            ),
            (
                #"Error from server (NotFound): deployments.apps "web" not found"#,
                .notFound(kind: "deployment", name: "web", namespace: "shop")
            ),
            (#"Error from server (NotFound): namespaces "shop" not found"#, .namespaceUnknown("shop")),
            (
                "Error in configuration: context was not found for specified context: prod",
                .contextUnknown("prod")
            ),
            (
                "E1127 05:20:01.000000   12345 memcache.go:265] couldn't get current server API group list\nThe connection to the server 10.1.2.3:6443 was refused - did you specify the right host or port?",
                .unreachable("The connection to the server 10.1.2.3:6443 was refused - did you specify the right host or port?")
            ),
            (
                "Unable to connect to the server: dial tcp: lookup api.example.com: no such host",
                .unreachable("Unable to connect to the server: dial tcp: lookup api.example.com: no such host")
            ),
            ("error: You must be logged in to the server (Unauthorized)", .unauthorized),
            (
                #"error: ephemeral containers are disabled for this cluster (error from server: "the server could not find the requested resource")."#,
                .ephemeralContainersUnsupported(
                    #"error: ephemeral containers are disabled for this cluster (error from server: "the server could not find the requested resource")."#)
            ),
            (
                #"Error from server (Forbidden): pods "web-1" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true"#,
                .podSecurity(#"violates PodSecurity "restricted:latest": runAsNonRoot != true"#)
            ),
            (
                #"Error from server: admission webhook "validate.kyverno.svc" denied the request: no ephemeral containers"#,
                .admissionDenied(#"admission webhook "validate.kyverno.svc" denied the request: no ephemeral containers"#)
            ),
            (
                #"error: error loading config file "/nope": open /nope: no such file or directory"#,
                .kubeconfigUnreadable(#"error: error loading config file "/nope": open /nope: no such file or directory"#)
            ),
        ])
    func classify(text: String, failure: KubernetesFailure) {
        #expect(
            KubernetesFailure.classify(
                errors: text + "\n", command: "kubectl get deployment", object: ("deployment", "web"), namespace: "shop",
                context: "prod") == failure)
    }

    @Test("Every failure's message says what to do")
    func messages() {
        let forbidden = KubernetesFailure.forbidden(user: "dev", verb: "create", resource: "pods/portforward", namespace: "shop")
        #expect(
            forbidden.description
                == #"the cluster's RBAC does not let user "dev" create pods/portforward in the namespace "shop". Ask for the Role in docs/kubernetes.md (it lists every verb sysmirror uses); `kubectl auth can-i create pods --subresource=portforward -n shop` checks."#
        )
        // kubectl reads `pods/ephemeralcontainers` as the pod named "ephemeralcontainers": a subresource goes
        // in --subresource; a group stays with its resource.
        #expect(
            KubernetesFailure.canI(verb: "patch", resource: "pods/ephemeralcontainers", namespace: nil)
                == "kubectl auth can-i patch pods --subresource=ephemeralcontainers")
        #expect(
            KubernetesFailure.canI(verb: "get", resource: "deployments.apps", namespace: "shop")
                == "kubectl auth can-i get deployments.apps -n shop")
        #expect(KubernetesFailure.kubectlMissing.description.contains("install it"))
        #expect(KubernetesFailure.agentNotReady(seconds: 60, state: "ContainerCreating").description.contains("--agent-timeout"))
    }
}
