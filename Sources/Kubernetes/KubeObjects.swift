/// The parts of Kubernetes API objects sysmirror reads, as `kubectl ... -o json` prints them. Every field a
/// cluster may leave out is optional; unknown fields are ignored.
public struct ObjectMeta: Decodable, Equatable, Sendable {
    public var name: String
    public var namespace: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?
    public var creationTimestamp: String?
    public var deletionTimestamp: String?
}

public struct Pod: Decodable, Equatable, Sendable {
    public struct Spec: Decodable, Equatable, Sendable {
        public var containers: [Container]
        public var ephemeralContainers: [Container]?
        public var shareProcessNamespace: Bool?
    }

    public struct Container: Decodable, Equatable, Sendable {
        public var name: String
        public var image: String?
    }

    public struct Status: Decodable, Equatable, Sendable {
        public var phase: String?
        public var reason: String?
        public var message: String?
        public var conditions: [Condition]?
        public var containerStatuses: [ContainerStatus]?
        public var ephemeralContainerStatuses: [ContainerStatus]?
    }

    public struct Condition: Decodable, Equatable, Sendable {
        public var type: String
        public var status: String
        public var reason: String?
        public var message: String?
    }

    public struct ContainerStatus: Decodable, Equatable, Sendable {
        public var name: String
        public var ready: Bool?
        public var state: ContainerState?
        public var image: String?
    }

    public struct ContainerState: Decodable, Equatable, Sendable {
        public struct Waiting: Decodable, Equatable, Sendable {
            public var reason: String?
            public var message: String?
        }
        public struct Running: Decodable, Equatable, Sendable {
            public var startedAt: String?
        }
        public struct Terminated: Decodable, Equatable, Sendable {
            public var exitCode: Int32?
            public var reason: String?
            public var message: String?
        }
        public var waiting: Waiting?
        public var running: Running?
        public var terminated: Terminated?
    }

    public var metadata: ObjectMeta
    public var spec: Spec
    public var status: Status?

    /// Running, not being deleted, and its Ready condition true.
    public var isReady: Bool {
        metadata.deletionTimestamp == nil && status?.phase == "Running"
            && status?.conditions?.contains { $0.type == "Ready" && $0.status == "True" } == true
    }

    public func status(ofContainer name: String) -> ContainerStatus? {
        status?.containerStatuses?.first { $0.name == name }
    }

    public func status(ofEphemeralContainer name: String) -> ContainerStatus? {
        status?.ephemeralContainerStatuses?.first { $0.name == name }
    }
}

public struct PodList: Decodable, Equatable, Sendable {
    public var items: [Pod]
}

/// A Deployment or StatefulSet: what selects its pods.
public struct Workload: Decodable, Equatable, Sendable {
    public struct Spec: Decodable, Equatable, Sendable {
        public var selector: LabelSelector
        public var replicas: Int?
    }
    public var metadata: ObjectMeta
    public var spec: Spec
}

public struct LabelSelector: Decodable, Equatable, Sendable {
    public struct Requirement: Decodable, Equatable, Sendable {
        public var key: String
        public var `operator`: String
        public var values: [String]?
    }
    public var matchLabels: [String: String]?
    public var matchExpressions: [Requirement]?

    /// The selector in kubectl's `-l` syntax: `app=web,tier in (a,b),!legacy`. Sorted, so that the same
    /// selector always reads the same.
    public var query: String {
        let labels = (matchLabels ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let expressions = (matchExpressions ?? []).map { requirement in
            let values = (requirement.values ?? []).joined(separator: ",")
            return switch requirement.operator {
            case "In": "\(requirement.key) in (\(values))"
            case "NotIn": "\(requirement.key) notin (\(values))"
            case "DoesNotExist": "!\(requirement.key)"
            default: requirement.key  // Exists
            }
        }
        return (labels + expressions).joined(separator: ",")
    }
}

public struct EventList: Decodable, Equatable, Sendable {
    public struct Event: Decodable, Equatable, Sendable {
        public struct Source: Decodable, Equatable, Sendable {
            public var fieldPath: String?
        }
        public var reason: String?
        public var message: String?
        public var type: String?
        public var involvedObject: Source?
    }
    public var items: [Event]

    /// Why `container`'s image could not be pulled, in the kubelet's words: its "Failed to pull image"
    /// event, which holds the registry's answer (the "Error: ErrImagePull" and "Error: ImagePullBackOff"
    /// events after it repeat only the reason); else `waiting`, the container's waiting message; else the
    /// last failure event.
    public func pullFailure(of container: String, waiting: String) -> String {
        let failures = items.filter {
            $0.type == "Warning" && $0.reason == "Failed" && ($0.involvedObject?.fieldPath ?? "").contains(container)
        }.compactMap(\.message)
        return failures.last { $0.hasPrefix("Failed to pull image") }
            ?? (waiting.isEmpty ? failures.last ?? "" : waiting)
    }
}

/// `kubectl version --client -o json`.
public struct ClientVersion: Decodable, Equatable, Sendable {
    public struct Info: Decodable, Equatable, Sendable {
        public var gitVersion: String
    }
    public var clientVersion: Info

    /// (major, minor) from a gitVersion such as `v1.31.2` or `v1.30.4-eks-a737599`.
    public var release: (major: Int, minor: Int)? {
        let numbers = clientVersion.gitVersion.drop { $0 == "v" }.split(separator: ".")
        guard numbers.count >= 2, let major = Int(numbers[0]),
            let minor = Int(numbers[1].prefix { $0.isNumber })
        else { return nil }
        return (major, minor)
    }
}
