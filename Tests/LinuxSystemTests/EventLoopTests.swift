import Foundation
import LinuxSystem
import Synchronization
import Testing

@Suite("The serving event loop, owned threads and descriptors")
struct EventLoopTests {
    /// Waits (up to 5 s) for `condition`.
    func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while !condition() && Date() < deadline { usleep(1000) }
        return condition()
    }

    @Test("Tasks run in order on the loop's thread; after close, none runs")
    func tasksInOrder() throws {
        let loop = try EventLoop(name: "test-loop")
        let seen = Mutex<[Int]>([])
        let onLoop = Mutex<[Bool]>([])
        for number in 0..<100 {
            loop.execute {
                seen.withLock { $0.append(number) }
                onLoop.withLock { $0.append(loop.inLoop) }
            }
        }
        #expect(!loop.inLoop)
        #expect(eventually { seen.withLock { $0.count } == 100 })
        #expect(seen.withLock { $0 } == Array(0..<100))
        #expect(onLoop.withLock { $0.allSatisfy { $0 } })
        loop.close()
        loop.execute { seen.withLock { $0.append(-1) } }
        usleep(20_000)
        #expect(seen.withLock { $0.count } == 100)
    }

    @Test("A registration hears its descriptor's readiness until it is deregistered")
    func registrations() throws {
        let loop = try EventLoop(name: "test-loop")
        defer { loop.close() }
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let reader = OwnedDescriptor(taking: ends[0]), writer = OwnedDescriptor(taking: ends[1])
        try reader.setNonBlocking(true)
        let heard = Mutex<[UInt8]>([])
        let registered = Mutex<EventLoop.Registration?>(nil)
        let readerFD = reader.raw
        loop.execute {
            let registration = try? loop.register(readerFD, for: .readable) { events in
                #expect(events.contains(.readable))
                if let bytes = try? Sockets.read(readerFD, upTo: 16) { heard.withLock { $0 += bytes } }
            }
            registered.withLock { $0 = registration }
        }
        #expect(eventually { registered.withLock { $0 != nil } })
        var byte: UInt8 = 7
        #expect(write(writer.raw, &byte, 1) == 1)
        #expect(eventually { heard.withLock { $0 } == [7] })
        loop.execute { if let registration = registered.withLock({ $0 }) { loop.deregister(registration) } }
        usleep(20_000)
        byte = 8
        #expect(write(writer.raw, &byte, 1) == 1)
        usleep(50_000)
        #expect(heard.withLock { $0 } == [7])
    }

    @Test("Timers run in the order of their deadlines, and a cancelled one never runs")
    func timers() throws {
        let loop = try EventLoop(name: "test-loop")
        defer { loop.close() }
        let fired = Mutex<[String]>([])
        loop.execute {
            loop.schedule(in: 30_000_000) { fired.withLock { $0.append("30 ms") } }
            loop.schedule(in: 10_000_000) { fired.withLock { $0.append("10 ms") } }
            let cancelled = loop.schedule(in: 20_000_000) { fired.withLock { $0.append("cancelled") } }
            loop.schedule(in: 0) { fired.withLock { $0.append("now") } }
            loop.cancel(cancelled)
        }
        #expect(eventually { fired.withLock { $0.count } == 3 })
        usleep(30_000)
        #expect(fired.withLock { $0 } == ["now", "10 ms", "30 ms"])
    }

    @Test("A dropped thread handle detaches its thread; a joined one is waited for: threads do not pile up")
    func threadsDoNotPileUp() throws {
        func threads() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("Threads:") }
                .flatMap { Int($0.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)) } ?? -1
        }
        func mappings() -> Int {
            ((try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        let before = mappings()
        for _ in 0..<300 { _ = try ThreadHandle.start(name: "test-dropped") {} }
        for _ in 0..<300 { try ThreadHandle.start(name: "test-joined") {}.join() }
        let ran = Atomic<Int>(0)
        for _ in 0..<300 { try ThreadHandle.detached(name: "test-detached") { ran.add(1, ordering: .relaxed) } }
        #expect(eventually { ran.load(ordering: .relaxed) == 300 })
        // Ended detached threads give their stacks back: no mapping per thread is left (a leak is 2 per thread).
        #expect(eventually { mappings() < before + 100 }, "\(before) mappings before, \(mappings()) after")
        #expect(threads() > 0)
    }

    @Test("An owned descriptor closes once: when dropped, and not when released")
    func ownedDescriptors() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        do { _ = OwnedDescriptor(taking: ends[0]) }
        #expect(fcntl(ends[0], F_GETFD) == -1 && errno == EBADF)
        let released = OwnedDescriptor(taking: ends[1]).release()
        #expect(fcntl(released, F_GETFD) >= 0)
        let shared = SharedDescriptor(OwnedDescriptor(taking: released))
        let copy = shared
        #expect(fcntl(copy.raw, F_GETFD) >= 0)
    }

    @Test("An activity count wakes its waiter when the last piece of work ends")
    func activityCount() throws {
        let count = try ActivityCount()
        #expect(count.waitUntilIdle(nanoseconds: 0))
        count.begin()
        count.begin()
        #expect(!count.waitUntilIdle(nanoseconds: 10_000_000))
        let ender = try ThreadHandle.start(name: "test-ender") {
            usleep(20_000)
            count.end()
            count.end()
        }
        let started = Date()
        #expect(count.waitUntilIdle(nanoseconds: 5_000_000_000))
        #expect(Date().timeIntervalSince(started) < 2)
        ender.join()
    }
}
