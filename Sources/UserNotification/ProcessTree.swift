import LinuxSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The processes below sysmirror, read from /proc/PID/task/TID/children.
package enum ProcessTree {
    /// Every descendant of `root`, parents before children.
    /// Every descendant of `root`, except the subtrees of `excluded` children.
    package static func descendants(of root: Int32, excluding excluded: Set<Int32> = []) -> [Int32] {
        var found: [Int32] = []
        var queue = children(of: root).filter { !excluded.contains($0) }
        while let pid = queue.first {
            queue.removeFirst()
            found.append(pid)
            queue += children(of: pid)
        }
        return found
    }

    package static func children(of pid: Int32) -> [Int32] {
        guard let tasks = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(tasks) }
        var result: [Int32] = []
        while let entry = readdir(tasks) {
            let tid = String(decoding: entryName(entry), as: UTF8.self)
            guard Int32(tid) != nil else { continue }
            result += read("/proc/\(pid)/task/\(tid)/children").split(separator: " ").compactMap { Int32($0) }
        }
        return result
    }

    /// The value of `key` in a /proc file of `key:<tab>value` lines (status, fdinfo).
    package static func field(_ key: String, in path: String) -> String? {
        read(path).split(separator: "\n").first { $0.hasPrefix(key + ":") }.map {
            String($0.dropFirst(key.count + 1).drop { $0 == " " || $0 == "\t" })
        }
    }

    /// A small /proc file's text, trimmed; empty when it cannot be read. One open and a read or two: this
    /// runs on the connect path.
    package static func read(_ path: String) -> String {
        let bytes = (try? readFile(path)) ?? []
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: " \n")
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var view = Substring(self)
        while let first = view.first, set.contains(first) { view.removeFirst() }
        while let last = view.last, set.contains(last) { view.removeLast() }
        return String(view)
    }
}
