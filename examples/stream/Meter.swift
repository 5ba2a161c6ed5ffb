import ExampleSupport

#if canImport(Glibc)
import Glibc
#endif

/// Counts messages and bytes, keeps the best one-second bandwidth (perftest's "BW peak"), and
/// redraws a progress line each second when attached to a terminal.
///
/// Times are plain monotonic nanoseconds (0: not yet): counting sits on the data path, once per
/// message, where an optional `ContinuousClock.Instant` (a type of another module, copied through
/// its value witnesses) cost about 170 instructions.
final class Meter {
    let size: Int
    let live: Bool
    private var start: UInt64 = 0
    private var end: UInt64 = 0
    private(set) var messages = 0
    private var intervalStart: UInt64 = 0
    private var intervalMessages = 0
    private var peakBytesPerSecond = 0.0

    init(size: Int, live: Bool) {
        self.size = size
        self.live = live
    }

    /// Counts one message; checks the clock every 64 messages.
    @inline(__always)
    func count() {
        if start == 0 { start = MonotonicClock.nanoseconds(); intervalStart = start }
        messages += 1
        intervalMessages += 1
        if intervalMessages & 63 == 0 { tick() }
    }

    private func tick() {
        let now = MonotonicClock.nanoseconds()
        let elapsed = seconds(now - intervalStart)
        guard elapsed >= 1 else { return }
        let rate = Double(intervalMessages * size) / elapsed
        peakBytesPerSecond = max(peakBytesPerSecond, rate)
        if live {
            let line = "\r  \(format(rate / 1e6)) MB/s   \(messages) messages   \(format(seconds(now - start))) s   "
            var text = line
            text.withUTF8 { bytes in _ = write(1, bytes.baseAddress, bytes.count) }
        }
        intervalStart = now
        intervalMessages = 0
    }

    /// Stops the clock; later calls change nothing.
    func finish() {
        guard end == 0 else { return }
        end = MonotonicClock.nanoseconds()
        if live && messages > 0 { print("") }
    }

    var totalSeconds: Double {
        guard start != 0, end >= start else { return 0 }
        return seconds(end - start)
    }

    /// perftest's columns, or one JSON object.
    func summary(json: Bool, transport: String, role: String, verified: Bool) -> String {
        let total = totalSeconds
        let average = total > 0 ? Double(messages * size) / total / 1e6 : 0
        let peak = max(peakBytesPerSecond / 1e6, average)
        let rate = total > 0 ? Double(messages) / total / 1e6 : 0
        if json {
            return """
                {"transport":"\(transport)","role":"\(role)","bytes":\(size),"iterations":\(messages),\
                "seconds":\(total),"bw_peak_mb_per_sec":\(peak),"bw_average_mb_per_sec":\(average),\
                "msg_rate_mpps":\(rate),"verified":\(verified)}
                """
        }
        let header = " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"
        let row = " " + pad(String(size), 11) + pad(String(messages), 15) + pad(format(peak), 19)
            + pad(format(average), 21) + format(rate, digits: 6)
        return header + "\n" + row + (verified ? "\n  content of all \(messages) messages checked: OK" : "")
    }

    private func seconds(_ nanoseconds: UInt64) -> Double {
        Double(nanoseconds) / 1e9
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text + String(repeating: " ", count: max(1, width - text.count))
    }

    private func format(_ value: Double, digits: Int = 2) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (value * scale).rounded()
        let whole = Int(scaled / scale)
        let fraction = String(Int(abs(scaled).truncatingRemainder(dividingBy: scale)))
        return "\(whole)." + String(repeating: "0", count: digits - fraction.count) + fraction
    }
}
