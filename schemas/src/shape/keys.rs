//! Values of warehouse columns with a meaning beyond their type: surrogate keys and the open end
//! of an SCD2 version.

use serde::{Deserialize, Serialize};

/// A surrogate key. In the warehouse (a `String` column) it is 16 lower-case hex digits, and the
/// empty string for 0, "no dimension row" (a fact without a promotion). Serialised without
/// allocating: the processor writes several per fact row. Orders as its text does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SurrogateKey(pub u64);

impl SurrogateKey {
    /// The text form, on the stack: 16 hex digits, or "" for 0.
    pub fn text(self) -> KeyText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        KeyText { buf, len: if self.0 == 0 { 0 } else { 16 } }
    }
}

/// The text of a [`SurrogateKey`] without a heap allocation.
#[derive(Debug, Clone, Copy)]
pub struct KeyText {
    buf: [u8; 16],
    len: usize,
}

impl KeyText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Display for SurrogateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl std::str::FromStr for SurrogateKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(SurrogateKey(0));
        }
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("a surrogate key is 16 lower-case hex digits or empty, not {s:?}"));
        }
        u64::from_str_radix(s, 16).map(SurrogateKey).map_err(|e| e.to_string())
    }
}

impl Serialize for SurrogateKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for SurrogateKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `valid_to` of an open SCD2 version: 2100-01-01 00:00:00 UTC.
pub const OPEN_VALID_TO: u32 = 4_102_444_800;

#[cfg(test)]
mod tests {
    use super::SurrogateKey;

    #[test]
    fn surrogate_keys_are_16_hex_digits_or_empty_both_ways() {
        for (key, text) in
            [(0, ""), (1, "0000000000000001"), (u64::MAX, "ffffffffffffffff"), (0xab12, "000000000000ab12")]
        {
            assert_eq!(SurrogateKey(key).to_string(), text);
            assert_eq!(text.parse::<SurrogateKey>(), Ok(SurrogateKey(key)));
            let json = serde_json::to_string(&SurrogateKey(key)).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<SurrogateKey>(&json).unwrap(), SurrogateKey(key));
        }
        // Text order is numeric order (fixed width), so tables sorted either way agree.
        assert!(SurrogateKey(0).to_string() < SurrogateKey(1).to_string());
        assert!(SurrogateKey(0xff).to_string() < SurrogateKey(0x100).to_string());
        for bad in ["abc", "000000000000000G", "000000000000000A", "00000000000000001"] {
            assert!(bad.parse::<SurrogateKey>().is_err(), "{bad}");
        }
    }
}
