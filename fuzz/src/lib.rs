//! Helpers shared by the fuzz targets: reading decimals and small choices out of fuzzer bytes.

use rust_decimal::Decimal;

/// A cursor over the fuzzer's bytes; reads past the end give zeros (libFuzzer then grows it).
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Any decimal at all: 96-bit mantissa, sign, scale 0..=28.
    pub fn any_decimal(&mut self) -> Decimal {
        let (lo, mid, hi) = (self.u32(), self.u32(), self.u32());
        let flags = self.u8();
        Decimal::from_parts(lo, mid, hi, flags & 0x80 != 0, u32::from(flags & 0x1f) % 29)
    }

    /// A decimal in [0, max] with at most 12 places (the shape validation accepts).
    pub fn bounded_decimal(&mut self, max: Decimal) -> Decimal {
        let scale = u32::from(self.u8()) % 13;
        let raw = Decimal::from(self.u64()) / Decimal::from(u64::MAX);
        (raw * max).trunc_with_scale(scale).min(max)
    }

    /// The rest of the bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
