import ArgumentParser
import Supervisor

#if canImport(Glibc)
    import Glibc
#endif

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Report which kernel features sysmirror uses are present, and whether trace can run here.")

    func run() throws {
        var name = utsname()
        uname(&name)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        print("kernel \(field(name.release)) \(field(name.machine))")
        let report = KernelProbe.run()
        for feature in report.features {
            let mark = feature.present ? "yes" : (feature.required ? "NO " : "no ")
            print("  \(mark)  \(feature.name) (\(feature.since)): \(feature.use)")
        }
        print("  i386 and x32 entry points: routed calls fail with ENOSYS (not served)")
        if let problem = report.problem {
            print("trace can run here: no: \(problem)")
            throw ExitCode(1)
        }
        print("trace can run here: yes")
    }
}
