#if canImport(Glibc)
    import Glibc
#endif

/// Who runs sysmirror, as the other developers sharing a pod hear of them: `user@machine`.
public enum UserIdentity {
    public static func describe() -> String {
        let uid = getuid()
        let user = getpwuid(uid).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? "uid \(uid)"
        var names = utsname()
        _ = uname(&names)  // fails only for a bad buffer, and this one is ours
        let host = withUnsafeBytes(of: &names.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return "\(user)@\(host)"
    }
}
