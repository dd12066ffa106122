//! Decompression bombs for the tests: bodies a few bytes long that inflate to gigabytes.

/// A brotli stream of `blocks` × 16 MiB of zeros, in 16 bytes per 16 MiB (RFC 7932): each
/// meta-block has one-symbol prefix codes (zero bits per symbol) and a single command that
/// inserts one zero and copies 2²⁴ − 1 bytes from one byte back. No brotli encoder needed.
pub fn brotli_zeros(blocks: usize) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(0, 1); // WBITS = 16
    for i in 0..blocks {
        let last = i + 1 == blocks;
        bits.put(u64::from(last), 1); // ISLAST
        if last {
            bits.put(0, 1); // ISLASTEMPTY
        }
        bits.put(2, 2); // MNIBBLES: 6
        bits.put((1 << 24) - 1, 24); // MLEN - 1
        if !last {
            bits.put(0, 1); // ISUNCOMPRESSED
        }
        // One block type of literals, commands and distances; NPOSTFIX, NDIRECT; the literal
        // block type's context mode; one literal tree, one distance tree.
        for (value, width) in [
            (0, 1),
            (0, 1),
            (0, 1),
            (0, 2),
            (0, 4),
            (0, 2),
            (0, 1),
            (0, 1),
        ] {
            bits.put(value, width);
        }
        // Simple prefix codes (HSKIP 1) of one symbol each: the literal 0; command 399 (insert
        // code 1: one literal; copy code 23: 2118 + 24 extra bits); distance code 16 (one extra
        // bit: distance 1 + the bit).
        for (symbol, width) in [(0, 8), (399, 10), (16, 6)] {
            bits.put(1, 2);
            bits.put(0, 2);
            bits.put(symbol, width);
        }
        bits.put((1 << 24) - 1 - 2118, 24); // copy length 2^24 - 1
        bits.put(0, 1); // distance 1
    }
    bits.finish()
}

/// Bits packed least significant first, as brotli and deflate read them.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, width: u32) {
        self.acc |= value << self.n;
        self.n += width;
        while self.n >= 8 {
            self.out.push(self.acc.to_le_bytes()[0]);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc.to_le_bytes()[0]);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use gateway_user::http::masking::Decoder;

    fn br() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-encoding", http::HeaderValue::from_static("br"));
        headers
    }

    #[test]
    fn the_brotli_bomb_is_valid_brotli_and_is_stopped() {
        // Two meta-blocks: exactly 32 MiB of zeros, within a push's limit.
        let mut decoder = Decoder::for_encoding(&br()).unwrap().unwrap();
        let mut out = decoder.push(&super::brotli_zeros(2)).unwrap();
        out.extend(decoder.finish().unwrap());
        assert_eq!(out.len(), 32 << 20);
        assert!(out.iter().all(|&b| b == 0));
        // 16 GiB in 16 KiB: refused at the limit, not inflated.
        let bomb = super::brotli_zeros(1024);
        assert!(bomb.len() <= 16 << 10, "{}", bomb.len());
        let mut decoder = Decoder::for_encoding(&br()).unwrap().unwrap();
        let error = decoder.push(&bomb).unwrap_err();
        assert!(error.contains("decompression bomb"), "{error}");
    }
}
