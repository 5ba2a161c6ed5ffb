import CDMAIO

@_cdecl("dma_last_error")
public func dmaLastErrorStub() -> UnsafePointer<CChar>? { nil }
