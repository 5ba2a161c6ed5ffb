#if canImport(Glibc)
import Glibc
#endif

/// Counts messages and bytes, keeps the best one-second bandwidth (perftest's "BW peak"), and
/// redraws a progress line each second when attached to a terminal.
final class Meter {
    let size: Int
    let live: Bool
    private let clock = ContinuousClock()
    private var start: ContinuousClock.Instant?
    private var end: ContinuousClock.Instant?
    private(set) var messages = 0
    private var intervalStart: ContinuousClock.Instant?
    private var intervalMessages = 0
    private var peakBytesPerSecond = 0.0

    init(size: Int, live: Bool) {
        self.size = size
        self.live = live
    }

    /// Counts one message; checks the clock every 64 messages.
    @inline(__always)
    func count() {
        if start == nil { start = clock.now; intervalStart = start }
        messages += 1
        intervalMessages += 1
        if intervalMessages & 63 == 0 { tick() }
    }

    private func tick() {
        let now = clock.now
        let elapsed = seconds(now - intervalStart!)
        guard elapsed >= 1 else { return }
        let rate = Double(intervalMessages * size) / elapsed
        peakBytesPerSecond = max(peakBytesPerSecond, rate)
        if live {
            let line = "\r  \(format(rate / 1e6)) MB/s   \(messages) messages   \(format(seconds(now - start!))) s   "
            var text = line
            text.withUTF8 { bytes in _ = write(1, bytes.baseAddress, bytes.count) }
        }
        intervalStart = now
        intervalMessages = 0
    }

    func finish() {
        end = clock.now
        if live && messages > 0 { print("") }
    }

    var totalSeconds: Double {
        guard let start, let end else { return 0 }
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

    private func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
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
