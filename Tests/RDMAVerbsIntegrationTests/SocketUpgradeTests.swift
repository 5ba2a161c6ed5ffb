import DMAIO
import Foundation
import RDMAVerbs
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension RxeIntegration {
    /// `dma_assoc` on an ordinary connected TCP socket: the handshake over the socket brings a
    /// queue pair up by hand; the socket's end is the connection's end.
    @Suite struct SocketUpgrade {
        /// Both directions, every byte checked, then a clean close seen by the other side.
        @Test func upgradedSocketCarriesMessagesBothWays() throws {
            let pair = try ConnectedPair(transport: .tcpSocket)
            #expect(pair.client.isConnected && pair.server.isConnected)
            #expect(pair.client.peerSlotSize == 4096)
            for (sender, senderArea, senderEvents, receiver, receiverEvents) in [
                (pair.client, pair.clientArea, pair.clientEvents, pair.server, pair.serverEvents),
                (pair.server, pair.serverArea, pair.serverEvents, pair.client, pair.clientEvents),
            ] {
                for sequence in 0..<200 {
                    let size = StreamMessage.size(sequence, slotSize: 4096)
                    var buffer: SendBuffer
                    while true {
                        do { buffer = try senderArea.reserve(size); break } catch {
                            _ = try senderEvents.wait(timeout: .seconds(10))
                        }
                    }
                    buffer.withUnsafeMutableBytes { StreamMessage.fill($0, sequence: sequence) }
                    try sender.send(buffer, cookie: UInt64(sequence))
                    var message = try receiver.receive()
                    while message == nil {
                        _ = try senderEvents.next()
                        _ = try receiverEvents.wait(timeout: .seconds(10))
                        message = try receiver.receive()
                    }
                    guard let received = message else { return }
                    #expect(received.count == size)
                    let intact = StreamMessage.matches(received, sequence: sequence)
                    #expect(intact, "message \(sequence) differs")
                    received.release()
                }
            }
        }

        /// The peer closing (or dying, which closes its socket) ends the connection: a
        /// disconnected event within seconds, then sends and receives fail with `disconnected`.
        @Test func peerClosingItsSocketEndsTheConnection() throws {
            let pair = try ConnectedPair(transport: .tcpSocket)
            pair.server.close()
            close(pair.sockets!.server)
            let clock = ContinuousClock()
            let start = clock.now
            var sawDisconnect = false
            while clock.now - start < .seconds(10), !sawDisconnect {
                if case .disconnected? = try pair.clientEvents.wait(timeout: .seconds(1)) { sawDisconnect = true }
            }
            #expect(sawDisconnect, "no disconnected event within 10 s")
            print("disconnect seen after \(clock.now - start)")
            do {
                try pair.client.send(try pair.clientArea.reserve(64), cookie: 0)
                Issue.record("a send after the peer's end did not fail")
            } catch {
                #expect(error.code == .disconnected)
            }
            do {
                _ = try pair.client.receive()
                Issue.record("receive after the peer's end did not fail")
            } catch {
                #expect(error.code == .disconnected)
            }
        }

        /// What the TCP socket said is the reason later calls give: bytes after the handshake
        /// (a protocol error), or a reset TCP connection (its errno), rather than a plain
        /// "disconnected" that hides which.
        @Test(arguments: ["bytes", "reset"])
        func theSocketsEndIsTheReasonGiven(how: String) throws {
            let pair = try ConnectedPair(transport: .tcpSocket)
            let socket = pair.sockets!.server
            if how == "bytes" {
                var byte: UInt8 = 0x58
                #expect(write(socket, &byte, 1) == 1)
            } else {
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)  // closing sends a reset
                #expect(setsockopt(socket, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size)) == 0)
                // Closed by putting /dev/null in its place: the pair still closes that number.
                let null = open("/dev/null", O_RDONLY)
                #expect(dup2(null, socket) == socket)
                close(null)
            }
            var reason: String?
            let deadline = ContinuousClock.now + .seconds(10)
            while reason == nil, ContinuousClock.now < deadline {
                guard case .disconnected? = try pair.clientEvents.wait(timeout: .milliseconds(200)) else { continue }
                do { _ = try pair.client.receive() } catch { reason = error.message }
            }
            let expected = how == "bytes" ? "sent bytes on its TCP socket after the handshake (protocol error)" : "failed (Connection reset by peer)"
            #expect(reason?.contains(expected) == true, "\(reason ?? "no disconnect within 10 s")")
        }

        /// Descriptors that are not connected stream sockets are refused with their errno.
        @Test func onlyConnectedStreamSocketsAreUpgraded() throws {
            let events = try EventChannel()
            var pipeEnds: [Int32] = [0, 0]
            try #require(pipe(&pipeEnds) == 0)
            defer { close(pipeEnds[0]); close(pipeEnds[1]) }
            let unconnected = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(unconnected) }
            let datagram = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(datagram) }
            for (descriptor, errno) in [(pipeEnds[0], ENOTSOCK), (unconnected, ENOTCONN), (datagram, EINVAL), (9999, EBADF), (-1, EBADF)] {
                do {
                    _ = try Connection(socket: descriptor, events: events)
                    Issue.record("descriptor \(descriptor) was accepted")
                } catch {
                    #expect(error.errno?.rawValue == errno, "descriptor \(descriptor): \(error)")
                }
            }
        }

        /// A peer that is not a DMAIO peer: garbage, a truncated hello, a wrong version, or a
        /// close mid-handshake give a clear error, and the channel keeps working.
        @Test(arguments: HostilePeer.allCases)
        func hostileHandshakesAreRefused(_ peer: HostilePeer) throws {
            let events = try EventChannel()
            let area = try DMAArea(size: 1 << 20)
            let sockets = try TCPSockets.pair()
            defer { close(sockets.client); close(sockets.server) }
            let hostile = OnThread { () throws -> Void in try peer.act(on: sockets.server) }
            let connection = try Connection(socket: sockets.client, events: events)
            do {
                try connection.associate(area, receiveBytes: 16 << 10, slotSize: 4096, timeout: .seconds(2))
                Issue.record("the handshake with a \(peer) peer succeeded")
            } catch {
                #expect(error.errno?.rawValue == peer.expectedErrno, "\(peer): \(error)")
                #expect(!error.message.isEmpty)
            }
            try hostile.join()
            #expect(area.bytesInUse == 0, "slots of the failed association were not returned")
            // The channel and the area still serve a good connection.
            let good = try ConnectedPair(transport: .tcpSocket)
            #expect(good.client.isConnected)
        }
    }
}

/// What a hostile peer does on its end of the socket.
enum HostilePeer: CaseIterable, CustomTestStringConvertible, Sendable {
    case garbage, truncated, wrongVersion, closesMidHandshake, silent

    var testDescription: String { "\(self)" }

    var expectedErrno: Int32 {
        switch self {
        case .garbage, .wrongVersion: EPROTO
        case .truncated, .closesMidHandshake: ECONNRESET
        case .silent: ETIMEDOUT
        }
    }

    func act(on socket: Int32) throws {
        var hello = [UInt8](repeating: 0, count: 48)
        _ = recv(socket, &hello, 48, Int32(MSG_WAITALL))  // the other side's hello
        switch self {
        case .garbage:
            let bytes = (0..<48).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            _ = send(socket, bytes, bytes.count, Int32(MSG_NOSIGNAL))
        case .truncated:
            _ = send(socket, hello, 20, Int32(MSG_NOSIGNAL))
            shutdown(socket, Int32(SHUT_WR))
        case .wrongVersion:
            hello[5] = 99  // version field
            _ = send(socket, hello, hello.count, Int32(MSG_NOSIGNAL))
        case .closesMidHandshake:
            shutdown(socket, Int32(SHUT_RDWR))
        case .silent:
            usleep(2_500_000)
        }
    }
}
