import CSeccomp
import Foundation
import LinuxSystem
import SyscallDecoding
import SystemPackage
import Testing

@testable import RemoteServices
@testable import Supervisor
@testable import UserNotification

@Suite("Supervisor parts, against the real kernel and libseccomp")
struct SupervisorTests {
    @Test("The syscall table's numbers are libseccomp's for x86_64")
    func tableMatchesLibseccomp() {
        for spec in SyscallTable.x86_64.specs {
            #expect(seccomp_syscall_resolve_name(spec.name) == spec.number, "\(spec.name)")
        }
    }

    @Test("The trace filter compiles for three ABIs, with and without sendmsg")
    func filterCompiles() throws {
        let withSendmsg = try SeccompFilter.compile(.trace(routeSendmsg: true))
        let without = try SeccompFilter.compile(.trace(routeSendmsg: false))
        #expect(withSendmsg.instructions.count > 20)
        #expect(without.instructions.count < withSendmsg.instructions.count)
        #expect(FilterPlan.trace(routeSendmsg: true).routedWithNonZeroArgument.map(\.name) == ["sendto"])
        #expect(FilterPlan.trace(routeSendmsg: true).routedWithNonZeroArgument.map(\.index) == [4])
    }

    @Test("What is routed follows the table: uname and xattrs only with an agent, accept only with incoming traffic")
    func filterPlanFollowsTheTable() {
        let alone = Set(FilterPlan.trace(routeSendmsg: true).routed)
        let agent = Set(FilterPlan.trace(routeSendmsg: true, withAgent: true).routed)
        let incoming = Set(FilterPlan.trace(routeSendmsg: true, withAgent: true, withIncoming: true).routed)
        #expect(alone.isDisjoint(with: ["uname", "getxattr", "accept", "accept4", "sendto"]))
        #expect(alone.isSuperset(of: ["openat", "connect", "listen", "sendmsg", "execve"]))
        #expect(agent.subtracting(alone) == ["uname", "getxattr", "lgetxattr", "listxattr", "llistxattr"])
        #expect(incoming.subtracting(agent) == ["accept", "accept4"])
        #expect(!Set(FilterPlan.trace(routeSendmsg: false).routed).contains("sendmsg"))
        // UDP on the link: every recvmsg (whether it asks for the sender is in memory), recvfrom only with an
        // address.
        let datagrams = FilterPlan.trace(routeSendmsg: true, withAgent: true, withLinkDatagrams: true)
        #expect(Set(datagrams.routed).subtracting(agent) == ["recvmsg"])
        #expect(datagrams.routedWithNonZeroArgument.map(\.name).contains("recvfrom"))
        #expect(
            !FilterPlan.trace(routeSendmsg: true, withAgent: true).routedWithNonZeroArgument.map(\.name)
                .contains("recvfrom"))
    }

    @Test("Reading this process's memory: strings at a page's end, and strings running into an unmapped page")
    func processMemory() throws {
        let page = Int(ProcessMemory.pageSize)
        let base = try #require(mmap(nil, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        defer { munmap(base, 2 * page) }
        #expect(mprotect(base + page, page, PROT_NONE) == 0)
        let memory = ProcessMemory(pid: getpid())
        let path = Array("/etc/hostname".utf8) + [0]
        let edge = base + page - path.count
        edge.copyMemory(from: path, byteCount: path.count)
        let address = UInt64(UInt(bitPattern: edge))
        #expect(try memory.string(at: address, limit: 4096) == Array("/etc/hostname".utf8))

        let unterminated = base + page - 4
        unterminated.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "x"), count: 4)
        #expect(throws: MemoryFault.unterminated) {
            try memory.string(at: UInt64(UInt(bitPattern: unterminated)), limit: 4096)
        }
        #expect(try memory.readable(at: address, count: 4096).count == path.count, "stops at the unmapped page")
        #expect(throws: MemoryFault.unreadable(errno: EFAULT)) {
            try memory.readable(at: UInt64(UInt(bitPattern: base + page)), count: 8)
        }
    }

    @Test("/proc/PID/mem reads page by page, like process_vm_readv")
    func procMemFallback() throws {
        let text = Array("fallback".utf8)
        try text.withUnsafeBufferPointer { source in
            let address = UInt64(UInt(bitPattern: source.baseAddress!))
            var copy = [UInt8](repeating: 0, count: text.count)
            let read = copy.withUnsafeMutableBufferPointer {
                ProcessMemory.procRead(pid: getpid(), address: address, into: $0)
            }
            #expect(read == text.count)
            #expect(copy == text)
            _ = try #require(source.baseAddress)
        }
    }

    @Test("Program lookup follows the shell: PATH order, executables first, names with a slash as given")
    func lookup() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lookup-\(getpid())")
        let first = root.appendingPathComponent("a")
        let second = root.appendingPathComponent("b")
        try FileManager.default.createDirectory(at: first, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: second, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        func make(_ file: URL, mode: Int) {
            #expect(
                FileManager.default.createFile(
                    atPath: file.path, contents: Data(), attributes: [.posixPermissions: mode]))
        }
        make(first.appendingPathComponent("tool"), mode: 0o644)
        make(second.appendingPathComponent("tool"), mode: 0o755)
        make(first.appendingPathComponent("plain"), mode: 0o644)
        let path = "\(first.path):\(second.path)"
        #expect(
            ExecutableLookup.resolve("tool", searchPath: path) == .found(second.appendingPathComponent("tool").path))
        #expect(
            ExecutableLookup.resolve("plain", searchPath: path) == .found(first.appendingPathComponent("plain").path))
        #expect(ExecutableLookup.resolve("absent", searchPath: path) == .commandNotFound)
        #expect(ExecutableLookup.resolve("./x/y", searchPath: path) == .found("./x/y"))
        #expect(ExecutableLookup.resolve("", searchPath: path) == .commandNotFound)
    }

    @Test("Failures map to a shell's exit statuses and say what to do")
    func failures() {
        let busy = TraceFailure.cannotExecute("x", .seccomp, .resourceBusy)
        #expect(busy.exitStatus == 1)
        #expect(busy.message.contains("already under a seccomp user-notify filter"))
        #expect(TraceFailure.cannotExecute("x", .seccomp, .invalidArgument).message.contains("sysmirror doctor"))
        #expect(TraceFailure.cannotExecute("x", .seccomp, .notPermitted).message.contains("not permitted"))
        #expect(TraceFailure.cannotExecute("./x", .exec, .noSuchFileOrDirectory).exitStatus == 127)
        #expect(TraceFailure.cannotExecute("./x", .exec, .permissionDenied).exitStatus == 126)
        #expect(
            TraceFailure.cannotExecute("./x", .exec, .execFormatError).message
                == "./x: cannot execute binary file: Exec format error")
        #expect(TraceFailure.commandNotFound("x").exitStatus == 127)
        let missing = KernelFeature(
            id: .addfd, name: "SECCOMP_IOCTL_NOTIF_ADDFD", since: "5.9", use: "injecting fds", present: false,
            required: true)
        #expect(TraceFailure.kernelLacks(missing).message.contains("Linux 5.9+"))
        #expect(KernelFeatures.missingRequirement([missing]) == missing)
    }

    @Test("Wait statuses become the shell's exit status")
    func exitStatuses() {
        #expect(shellExitStatus(3 << 8) == 3)
        #expect(shellExitStatus(15) == 143)
        #expect(shellExitStatus(9 | 0x80) == 137, "core dumped")
    }

    @Test("The kernel probe finds every feature on this machine")
    func probe() {
        let report = KernelProbe.run()
        #expect(report.problem == nil)
        #expect(report.features.count == 8)
        #expect(report.features.filter { $0.required }.allSatisfy { $0.present })
    }
}
