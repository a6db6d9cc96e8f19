//! Positions as types: a PostgreSQL WAL position ([`Lsn`]), Ferry's stream sequence number
//! ([`Vsn`]) and a Kafka position ([`KafkaPosition`]).
//!
//! Positions never cross a module boundary as bare integers, so that an LSN can't be
//! compared with a VSN or an offset by mistake.
//!
//! VSN rules (DESIGN.md §4): the exporter of a stream stamps every event with a VSN that
//! grows strictly along the stream and never names two different events; inside one
//! partition VSNs strictly increase; the target stream continues above the source
//! stream's last VSN.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PostgreSQL log sequence number, shown as PostgreSQL shows it (`16/B374D848`).
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN `0/0`.
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:X}/{:X}` of the two halves, written without the formatting machinery: the
        // change stream formats one LSN per transaction.
        let mut buf = [0u8; 17];
        let mut len = 0;
        for (i, half) in [self.0 >> 32, self.0 & 0xFFFF_FFFF].into_iter().enumerate() {
            if i == 1 {
                buf[len] = b'/';
                len += 1;
            }
            let digits = (32 - (half as u32).leading_zeros()).div_ceil(4).max(1);
            for d in (0..digits).rev() {
                buf[len] = b"0123456789ABCDEF"[((half >> (d * 4)) & 0xF) as usize];
                len += 1;
            }
        }
        f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Why a text is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Ferry sequence number: the position of an event in its stream.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Vsn(pub u64);

impl Vsn {
    /// Before the first event of any stream; the first event gets `Vsn(1)`.
    pub const ZERO: Vsn = Vsn(0);

    /// The VSN after this one.
    #[must_use]
    pub fn next(self) -> Vsn {
        Vsn(self.0.saturating_add(1))
    }

    /// As stored in Avro (`long`) and in PostgreSQL (`bigint`). VSNs stay below 2^63.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// From Avro or PostgreSQL; a negative value (never written by Ferry) is `None`.
    pub fn from_i64(v: i64) -> Option<Vsn> {
        u64::try_from(v).ok().map(Vsn)
    }
}

impl fmt::Display for Vsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Vsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vsn({})", self.0)
    }
}

impl FromStr for Vsn {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Vsn)
    }
}

/// A position in Kafka: the offset of the next record to read in one partition.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct KafkaPosition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Offset of the next record (Kafka's committed-offset convention).
    pub next_offset: i64,
}

impl fmt::Display for KafkaPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_is_uppercase_hex_halves() {
        for v in [
            0u64,
            1,
            0xF,
            0x10,
            0x16_B374_D848,
            0xFFFF_FFFF,
            1 << 32,
            u64::MAX,
            0xABC_0000_0000,
        ] {
            assert_eq!(
                Lsn(v).to_string(),
                format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
            );
        }
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn lsn_round_trips_through_text() {
        for (text, value) in [
            ("0/0", 0u64),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        for bad in ["", "/", "1/", "/1", "x/1", "1-2", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
        let json = serde_json::to_string(&Lsn(0x1_0000_0010)).unwrap();
        assert_eq!(json, "\"1/10\"");
        assert_eq!(
            serde_json::from_str::<Lsn>(&json).unwrap(),
            Lsn(0x1_0000_0010)
        );
    }

    #[test]
    fn vsn_orders_and_converts() {
        assert!(Vsn(2) > Vsn(1));
        assert_eq!(Vsn::ZERO.next(), Vsn(1));
        assert_eq!(Vsn::from_i64(-1), None);
        assert_eq!(Vsn::from_i64(7), Some(Vsn(7)));
        assert_eq!(Vsn(7).as_i64(), 7);
    }
}
