#if canImport(Glibc)
    import Glibc
#endif

/// `sysmirror doctor`: starts a child under the real trace filter, probes the kernel on its listener, and
/// lets it exit without running anything.
public enum KernelProbe {
    public struct Report: Sendable {
        public let features: [KernelFeature]
        /// Why trace cannot run here, if it cannot.
        public let problem: String?
    }

    public static func run() -> Report {
        var features: [KernelFeature] = []
        do {
            let filter = try SeccompFilter.compile(.trace(routeSendmsg: true))
            let program = try Spawner.spawn(
                path: nil, arguments: [], environment: [], filter: filter, signals: .capture()
            ) { program in features = KernelFeatures.probe(program) }
            var status: Int32 = 0
            _ = waitpid(program.pid, &status, 0)
        } catch let error as SpawnError {
            return Report(
                features: features, problem: TraceFailure.cannotExecute("probe", error.stage, error.errno).message)
        } catch {
            return Report(features: features, problem: "\(error)")
        }
        let missing = KernelFeatures.missingRequirement(features)
        return Report(features: features, problem: missing.map { TraceFailure.kernelLacks($0).message })
    }
}
