/// The library's round trips against the verbs baseline's, from a run that alternated the two
/// in blocks on one connection (`pingpong --against-verbs`).
///
/// Blocks are compared in pairs — a block through the library and the baseline's block right
/// after it — so that the slow swings of a shared or emulated host, which move one run against
/// the next by tens of percent, fall on both halves of a pair alike. The library's cost is the
/// median of the pairs' differences (library block's median round trip minus the baseline
/// block's), with a confidence interval for that median that assumes nothing about how the
/// differences are distributed: the sign test's order statistics. The first pair is left out as
/// warm-up, and so are the first and last two round trips of every block, which straddle a
/// switch.
struct VerbsComparison {
    /// Block pairs compared.
    var pairs: Int
    /// The median over the library's blocks of their median round trip, in microseconds.
    var library: Double
    /// The same over the baseline's blocks.
    var verbs: Double
    /// The mean round trip over the compared part of the library's blocks and of the baseline's
    /// (what `ibv_rc_pingpong`'s usec/iter is: a mean), in microseconds.
    var libraryMean: Double, verbsMean: Double
    /// The median of the pairs' differences: what the library adds to a round trip.
    var cost: Double
    /// The confidence interval for `cost`, and its coverage (0.95 or a little more; less with
    /// very few pairs).
    var low: Double, high: Double, coverage: Double

    /// The cost as a fraction of the baseline's round trip.
    var relative: Double { verbs > 0 ? cost / verbs : 0 }

    /// `roundTrips[n]` is round trip n in microseconds; blocks of `block` alternate, the
    /// library's first.
    init?(roundTrips: [Double], block: Int) {
        var libraryMedians: [Double] = [], verbsMedians: [Double] = [], differences: [Double] = []
        var librarySum = 0.0, verbsSum = 0.0, count = 0
        var start = 2 * block  // the first pair is warm-up
        while start + 2 * block <= roundTrips.count {
            let libraryBlock = roundTrips[(start + 2)..<(start + block - 2)]
            let verbsBlock = roundTrips[(start + block + 2)..<(start + 2 * block - 2)]
            librarySum += libraryBlock.reduce(0, +)
            verbsSum += verbsBlock.reduce(0, +)
            count += libraryBlock.count
            let library = Self.median(libraryBlock)
            let verbs = Self.median(verbsBlock)
            libraryMedians.append(library)
            verbsMedians.append(verbs)
            differences.append(library - verbs)
            start += 2 * block
        }
        guard !differences.isEmpty else { return nil }
        pairs = differences.count
        libraryMean = librarySum / Double(count)
        verbsMean = verbsSum / Double(count)
        library = Self.median(libraryMedians[...])
        verbs = Self.median(verbsMedians[...])
        cost = Self.median(differences[...])
        differences.sort()
        let (k, coverage) = Self.signTestRank(pairs)
        low = differences[k - 1]
        high = differences[pairs - k]
        self.coverage = coverage
    }

    private static func median(_ values: ArraySlice<Double>) -> Double {
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    /// The rank k for the sign test's interval [x(k), x(n+1-k)] of the median of n values: the
    /// largest k whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is still at least 95% (k = 1, the
    /// whole range, when no k reaches it).
    private static func signTestRank(_ n: Int) -> (k: Int, coverage: Double) {
        // P(B = i) for i = 0, 1, ... by the ratio of successive terms, from 2^-n (fine for the
        // few hundred pairs a run makes; beyond about 1,000 it underflows to a whole-range k).
        var probability = pow2(-n), below = 0.0
        var k = 1, coverage = 1 - 2 * probability
        for i in 0..<((n + 1) / 2) {
            below += probability  // P(B <= i), which is P(B < k) for k = i + 1
            let candidate = 1 - 2 * below
            if candidate < 0.95 { break }
            k = i + 1
            coverage = candidate
            probability *= Double(n - i) / Double(i + 1)
        }
        return (k, coverage)
    }

    private static func pow2(_ exponent: Int) -> Double {
        var value = 1.0
        for _ in 0..<(-exponent) { value /= 2 }
        return value
    }
}
