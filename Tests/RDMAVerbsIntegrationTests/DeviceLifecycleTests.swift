import CRDMA
import Foundation
import RDMAVerbs
import Testing

extension RxeIntegration {
    @Suite struct DeviceLifecycle {
        init() throws { try RxeEnvironment.requireRxeDevice() }

        @Test func listingFindsTheRxeDevice() throws {
            let devices = try Device.all()
            let device = try #require(devices.first { $0.name == RxeEnvironment.deviceName })
            #expect(device.guid != 0)
            #expect(device.sysfsPath.hasSuffix(device.name) || device.sysfsPath.contains("infiniband"))
        }

        @Test func portIsActiveWithTheAddressInItsGIDTable() throws {
            let context = try Context(deviceName: RxeEnvironment.deviceName)
            let port = try context.requireActivePort()
            #expect(port.isEthernet)
            #expect(port.activeMTUBytes >= 1024)
            let address = try #require(IPv4Address(RxeEnvironment.address))
            let index = try #require(try context.gidIndex(forIPv4: address), "no GID for \(address) on \(context.deviceName)")
            let entry = try context.gid(index: index)
            #expect(entry.gid.ipv4 == address)
            #expect(entry.type == .roceV2)
            let attributes = try context.attributes()
            #expect(attributes.maxQueuePairs > 0 && attributes.maxMemoryRegionSize >= 1 << 20)
        }

        /// Opens the device and builds PD, 1 MiB MR, channel, CQ, QP and SRQ; the kernel's
        /// counts rise by one each, and fall back when the objects go away.
        @Test func everyObjectIsReleasedWhenItGoesAway() throws {
            let device = RxeEnvironment.deviceName
            let before = try ResourceCounts.of(device: device)
            do {
                let context = try Context(deviceName: device)
                let pd = try ProtectionDomain(context: context)
                let region = try MemoryRegion(protectionDomain: pd, length: 1 << 20)
                let channel = try CompletionChannel(context: context)
                let cq = try CompletionQueue(context: context, capacity: 64, channel: channel)
                let srq = try SharedReceiveQueue(protectionDomain: pd, capacity: 16)
                let qp = try QueuePair(protectionDomain: pd, sendQueue: cq, receiveQueue: cq)
                #expect(region.bytes.count == 1 << 20)
                #expect(Int(bitPattern: region.bytes.baseAddress) % 4096 == 0)
                #expect(region.access == [.localWrite])
                #expect(region.pointer.pointee.lkey == region.localKey)
                #expect(try qp.state() == IBV_QPS_RESET)
                try qp.moveToInit()
                #expect(try qp.state() == IBV_QPS_INIT)
                let during = try ResourceCounts.of(device: device)
                #expect(during["pd"] == before["pd"] + 1)
                #expect(during["mr"] == before["mr"] + 1)
                #expect(during["cq"] == before["cq"] + 1)
                #expect(during["qp"] == before["qp"] + 1)
                #expect(during["srq"] == before["srq"] + 1)
                // Dropping the context, PD and CQ references first changes nothing: the queue
                // pair and region hold them until they go.
                withExtendedLifetime((context, pd, region, channel, cq, srq, qp)) {}
            }
            let after = try ResourceCounts.of(device: device)
            #expect(after.objects == before.objects, "before: \(before), after: \(after)")
        }

        @Test func childrenKeepTheirParentsAlive() throws {
            let device = RxeEnvironment.deviceName
            let before = try ResourceCounts.of(device: device)
            var region: MemoryRegion? = try {
                let context = try Context(deviceName: device)
                let pd = try ProtectionDomain(context: context)
                return try MemoryRegion(protectionDomain: pd, length: 8192)
            }()
            // The PD and context are out of scope but still alive through the region.
            let during = try ResourceCounts.of(device: device)
            #expect(during["pd"] == before["pd"] + 1)
            #expect(during["mr"] == before["mr"] + 1)
            region!.bytes.storeBytes(of: 42, as: UInt8.self)
            #expect(region!.protectionDomain.context.deviceName == device)
            region = nil
            let after = try ResourceCounts.of(device: device)
            #expect(after.objects == before.objects)
        }

        @Test func badArgumentsAreRefusedBeforeReachingTheDevice() throws {
            let context = try Context(deviceName: RxeEnvironment.deviceName)
            let pd = try ProtectionDomain(context: context)
            #expect(throws: RDMAError.self) { _ = try MemoryRegion(protectionDomain: pd, length: 0) }
            #expect(throws: RDMAError.self) { _ = try CompletionQueue(context: context, capacity: 0) }
            let region = try MemoryRegion(protectionDomain: pd, length: 4096)
            #expect {
                _ = try region.segment(offset: 4000, length: 200)
            } throws: { error in
                (error as! RDMAError).message == "range of 200 bytes at offset 4000 is outside the 4 KiB region"
            }
            let cq = try CompletionQueue(context: context, capacity: 8)
            #expect {
                try cq.requestNotification()
            } throws: { error in
                (error as! RDMAError).message == "this completion queue has no completion channel to notify"
            }
            let qp = try QueuePair(protectionDomain: pd, sendQueue: cq, receiveQueue: cq,
                                   capabilities: QueuePairCapabilities(maxInlineData: 16))
            #expect {
                try qp.postSend(try region.segment(offset: 0, length: 4096), requestID: 1, inline: true)
            } throws: { error in
                (error as! RDMAError).message.contains("inline send of 4096 bytes exceeds the queue pair's inline limit")
            }
            #expect {
                _ = try QueuePair(protectionDomain: pd, sendQueue: cq, receiveQueue: cq,
                                  capabilities: QueuePairCapabilities(maxSendRequests: 1 << 30))
            } throws: { error in
                let error = error as! RDMAError
                return error.operation == "ibv_create_qp" && error.message.contains("lower the counts")
            }
        }
    }
}
