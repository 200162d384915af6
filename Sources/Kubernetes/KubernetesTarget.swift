/// What `--target` names: a workload's pod (and optionally one of its containers), or no target at all.
public enum KubernetesTarget: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, CaseIterable, Sendable {
        case pod, deployment, statefulset
    }

    /// `KIND/NAME[/container/CONTAINER]`.
    case workload(Kind, name: String, container: String?)
    /// `targetless`: an agent in a short-lived pod of its own, for outgoing traffic and DNS only.
    case targetless

    /// Parses `pod/NAME`, `deployment/NAME`, `statefulset/NAME`, each optionally followed by
    /// `/container/NAME`, or `targetless`. Kinds take kubectl's short and plural names too (po, deploy, sts).
    public init(parsing text: String) throws(KubernetesFailure) {
        if text == "targetless" {
            self = .targetless
            return
        }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let usage =
            "expected pod/NAME, deployment/NAME or statefulset/NAME (each optionally followed by /container/NAME), or targetless"
        guard parts.count == 2 || (parts.count == 4 && parts[2] == "container") else {
            throw .badTarget(text, usage)
        }
        guard let kind = Self.kinds[parts[0].lowercased()] else {
            throw .badTarget(text, "\(parts[0].debugDescription) is not a kind sysmirror can target; \(usage)")
        }
        guard Self.isName(parts[1], maximum: 253, dots: true) else {
            throw .badTarget(text, "\(parts[1].debugDescription) is not a valid \(kind.rawValue) name")
        }
        let container = parts.count == 4 ? parts[3] : nil
        if let container, !Self.isName(container, maximum: 63, dots: false) {
            throw .badTarget(text, "\(container.debugDescription) is not a valid container name")
        }
        self = .workload(kind, name: parts[1], container: container)
    }

    public var description: String {
        switch self {
        case .targetless: "targetless"
        case .workload(let kind, let name, let container):
            "\(kind.rawValue)/\(name)" + (container.map { "/container/\($0)" } ?? "")
        }
    }

    static let kinds: [String: Kind] = [
        "pod": .pod, "pods": .pod, "po": .pod,
        "deployment": .deployment, "deployments": .deployment, "deploy": .deployment,
        "statefulset": .statefulset, "statefulsets": .statefulset, "sts": .statefulset,
    ]

    /// Kubernetes object names: lowercase letters, digits and '-' (and '.' in DNS subdomains), starting and
    /// ending with a letter or digit.
    static func isName(_ name: String, maximum: Int, dots: Bool) -> Bool {
        let bytes = Array(name.utf8)
        func alphanumeric(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        guard let first = bytes.first, let last = bytes.last, bytes.count <= maximum else { return false }
        return alphanumeric(first) && alphanumeric(last)
            && bytes.allSatisfy { alphanumeric($0) || $0 == UInt8(ascii: "-") || (dots && $0 == UInt8(ascii: ".")) }
    }
}
