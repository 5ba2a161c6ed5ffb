// The error every call of the API throws is the verbs layer's: `import DMAIO` alone reaches it
// (`catch let error as RDMAError`, `error.code == .areaExhausted`), as it does the types that
// events carry (`WorkCompletion.Status`) and that addresses are given as (`SocketAddress`).
@_exported import struct RDMAVerbs.RDMAError
@_exported import struct RDMAVerbs.WorkCompletion
@_exported import struct RDMAVerbs.SocketAddress
@_exported import struct RDMAVerbs.QueuePairAttributes
