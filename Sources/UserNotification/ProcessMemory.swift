import CSysmirror
import LinuxSystem
import SyscallDecoding

#if canImport(Glibc)
    import Glibc
#endif

/// A traced thread's memory, read with process_vm_readv, or through /proc/PID/mem where that is refused.
/// Opened per request: a /proc/PID/mem handle belongs to the address space it was opened on.
package struct ProcessMemory: ProgramMemory {
    package let pid: Int32

    package init(pid: Int32) { self.pid = pid }
    package static let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    package func readable(at address: UInt64, count: Int) throws(MemoryFault) -> [UInt8] {
        guard count > 0 else { return [] }
        guard address != 0 else { throw .unreadable(errno: EFAULT) }
        var failure: Int32 = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            let result = Self.vmRead(pid: pid, address: address, into: buffer)
            if result >= 0 {
                initialized = result
            } else if result == -Int(EPERM) || result == -Int(ENOSYS) {
                let fallback = Self.procRead(pid: pid, address: address, into: buffer)
                initialized = max(fallback, 0)
                failure = fallback < 0 ? Int32(-fallback) : 0
            } else {
                initialized = 0
                failure = Int32(-result)
            }
        }
        if bytes.isEmpty { throw .unreadable(errno: failure == 0 ? EFAULT : failure) }
        return bytes
    }

    /// process_vm_readv with the remote range cut at page boundaries: the kernel transfers whole iovecs only, so
    /// a range running into an unmapped page still yields the pages before it. One call per page pair (two
    /// iovecs on the stack); reads of paths and structures take one. Returns the bytes read, or -errno.
    static func vmRead(pid: Int32, address: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>) -> Int {
        var done = 0
        while done < buffer.count {
            let start = address + UInt64(done)
            let firstEnd = min((start / pageSize + 1) * pageSize, start + UInt64(buffer.count - done))
            let secondEnd = min(firstEnd + pageSize, start + UInt64(buffer.count - done))
            var remote = (
                iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(start)), iov_len: Int(firstEnd - start)),
                iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(firstEnd)), iov_len: Int(secondEnd - firstEnd))
            )
            let wanted = Int(secondEnd - start)
            var local = iovec(iov_base: UnsafeMutableRawPointer(buffer.baseAddress! + done), iov_len: wanted)
            let pieces: UInt = secondEnd > firstEnd ? 2 : 1
            let result = withUnsafeMutablePointer(to: &remote) {
                $0.withMemoryRebound(to: iovec.self, capacity: 2) { sysm_process_vm_readv(pid, &local, 1, $0, pieces) }
            }
            if result < 0 { return done > 0 ? done : -Int(errno) }
            done += result
            if result < wanted { break }  // an unreadable page follows
        }
        return done
    }

    /// pread on /proc/PID/mem, page by page, stopping at the first page that fails. Returns bytes or -errno.
    static func procRead(pid: Int32, address: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>) -> Int {
        let fd: OwnedDescriptor
        do throws(SystemCallError) {
            fd = OwnedDescriptor(taking: try systemCall("open(/proc/PID/mem)") { open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC) })
        } catch {
            return -Int(error.errno.rawValue)
        }
        var done = 0
        while done < buffer.count {
            let at = address + UInt64(done)
            let length = min(buffer.count - done, Int((at / pageSize + 1) * pageSize - at))
            let result = pread(fd.raw, buffer.baseAddress! + done, length, off_t(Int64(bitPattern: at)))
            if result <= 0 { return done > 0 ? done : (result < 0 ? -Int(errno) : -Int(EFAULT)) }
            done += result
        }
        return done
    }
}

extension ProcessMemory {
    /// Writes `bytes` into the program at `address` (a stat buffer, a readlink buffer). Returns 0, or the
    /// errno the program's own call would have met (EFAULT for a bad buffer).
    package func write(_ bytes: [UInt8], at address: UInt64) -> Int32 {
        guard !bytes.isEmpty else { return 0 }
        guard address != 0 else { return EFAULT }
        var written = bytes.withUnsafeBytes { raw -> Int in
            var local = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)
            var remote = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(address)), iov_len: raw.count)
            return sysm_process_vm_writev(pid, &local, 1, &remote, 1)
        }
        if written < 0 && (errno == EPERM || errno == ENOSYS) {
            let fd: OwnedDescriptor
            do throws(SystemCallError) {
                fd = OwnedDescriptor(taking: try systemCall("open(/proc/PID/mem)") { open("/proc/\(pid)/mem", O_WRONLY | O_CLOEXEC) })
            } catch {
                return error.errno.rawValue
            }
            written = pwrite(fd.raw, bytes, bytes.count, off_t(Int64(bitPattern: address)))
        }
        return written == bytes.count ? 0 : EFAULT
    }
}
