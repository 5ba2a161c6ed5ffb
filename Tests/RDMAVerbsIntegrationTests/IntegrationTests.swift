import Testing

/// Every test that touches the rxe device lives in this suite, which runs its tests one after
/// another: they share one device and compare its resource counts before and after.
@Suite(.serialized) struct RxeIntegration {}
