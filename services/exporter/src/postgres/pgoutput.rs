//! A decoder of PostgreSQL's `pgoutput` logical replication messages (protocol version 1,
//! text values), as they arrive in the `XLogData` payloads of a replication stream.
//!
//! The bytes come from the network: the decoder never panics and never trusts a length
//! without checking it against what is left. Every malformed or truncated message is an
//! [`DecodeError`] naming what was being read.

use std::fmt;

use bytes::Bytes;
use ferry_shared::position::Lsn;

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A pgoutput time (microseconds since 2000-01-01) as milliseconds since 1970-01-01.
pub fn pg_time_to_unix_ms(micros: i64) -> i64 {
    micros
        .saturating_add(PG_EPOCH_OFFSET_MICROS)
        .div_euclid(1000)
}

/// One decoded message.
// Variants are named after the protocol's message types ("Logical Decoding Message").
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Start of a transaction.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// Flags (unused, 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just after the commit record: where a restarted stream resumes.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// The transaction came from another node (replication origin).
    Origin {
        /// Commit LSN on the origin server.
        commit_lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// The layout of a table; sent before the first change of a table in a session and
    /// again after the table changed.
    Relation(Relation),
    /// A data type referenced by a following Relation (non-built-in types).
    Type {
        /// Type OID.
        oid: u32,
        /// Schema of the type.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// A new row.
    Insert {
        /// Relation OID.
        relid: u32,
        /// The new row.
        new: Tuple,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        relid: u32,
        /// The old row: key columns (`K`) or the whole row (`O`, REPLICA IDENTITY FULL),
        /// absent when the key did not change and identity is not FULL.
        old: Option<OldTuple>,
        /// The new row.
        new: Tuple,
    },
    /// A deleted row.
    Delete {
        /// Relation OID.
        relid: u32,
        /// The old row: key columns or the whole row.
        old: OldTuple,
    },
    /// TRUNCATE of one or more tables.
    Truncate {
        /// Option bits: 1 CASCADE, 2 RESTART IDENTITY.
        options: u8,
        /// Relation OIDs.
        relids: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage {
        /// True when emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Application prefix.
        prefix: String,
        /// Content.
        content: Bytes,
    },
}

/// A table's layout as pgoutput describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID.
    pub relid: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting (`d`, `n`, `f`, `i`).
    pub replica_identity: u8,
    /// Columns in table order (generated columns are not sent).
    pub columns: Vec<RelationColumn>,
}

/// A column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// True when the column is part of the replica identity key.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// The old row of an update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity key columns (others are null).
    Key(Tuple),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

/// Column values of one row, in relation column order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<TupleValue>);

/// One column value.
#[derive(Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent; take it from the old row.
    UnchangedToast,
    /// The value's text form.
    Text(Bytes),
    /// The value's binary form (only with the `binary` option).
    Binary(Bytes),
}

impl fmt::Debug for TupleValue {
    // Never print row values in full.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TupleValue::Null => f.write_str("Null"),
            TupleValue::UnchangedToast => f.write_str("UnchangedToast"),
            TupleValue::Text(b) => write!(f, "Text({} bytes)", b.len()),
            TupleValue::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

/// Why a message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended early.
    #[error("pgoutput message {tag:?} is truncated while reading {what}")]
    Truncated {
        /// Message tag.
        tag: char,
        /// What was being read.
        what: &'static str,
    },
    /// A byte that has no meaning at that place.
    #[error("pgoutput message {tag:?} has an invalid {what}: {value}")]
    Invalid {
        /// Message tag.
        tag: char,
        /// What was being read.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// An unknown message tag.
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    /// An empty payload.
    #[error("empty pgoutput message")]
    Empty,
}

struct Cursor {
    buf: Bytes,
    pos: usize,
    tag: char,
}

impl Cursor {
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let out = self.buf.slice(self.pos..end);
                self.pos = end;
                Ok(out)
            }
            None => Err(DecodeError::Truncated {
                tag: self.tag,
                what,
            }),
        }
    }

    /// `N` bytes read in place: no `Bytes` view (a shared count taken and given back)
    /// for each field of a message, which was 4–5 % of the exporter's CPU in batched
    /// CDC (docs/benchmarks.md, "Changes of 2026-12-07 (seventh session)").
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let out = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .ok_or(DecodeError::Truncated {
                tag: self.tag,
                what,
            })?;
        self.pos += N;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                what,
            });
        };
        let text = String::from_utf8(rest[..nul].to_vec()).map_err(|_| DecodeError::Invalid {
            tag: self.tag,
            what,
            value: "not UTF-8".into(),
        })?;
        self.pos += nul + 1;
        Ok(text)
    }

    fn invalid(&self, what: &'static str, value: impl ToString) -> DecodeError {
        DecodeError::Invalid {
            tag: self.tag,
            what,
            value: value.to_string(),
        }
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16("tuple column count")?;
        if n < 0 {
            return Err(self.invalid("tuple column count", n));
        }
        // Each column takes at least one byte: don't preallocate more than what is left.
        let left = self.buf.len().saturating_sub(self.pos);
        let mut values = Vec::with_capacity((n as usize).min(left));
        for _ in 0..n {
            let kind = self.u8("tuple column kind")?;
            values.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("tuple value length")?;
                    if len < 0 {
                        return Err(self.invalid("tuple value length", len));
                    }
                    let data = self.take(len as usize, "tuple value")?;
                    if kind == b't' {
                        TupleValue::Text(data)
                    } else {
                        TupleValue::Binary(data)
                    }
                }
                other => return Err(self.invalid("tuple column kind", char::from(other))),
            });
        }
        Ok(Tuple(values))
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple, DecodeError> {
        match marker {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(self.invalid("old tuple marker", char::from(other))),
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(payload: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = payload.first() else {
        return Err(DecodeError::Empty);
    };
    let mut c = Cursor {
        buf: payload,
        pos: 1,
        tag: char::from(tag),
    };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: c.lsn("final LSN")?,
            commit_time: c.i64("commit time")?,
            xid: c.u32("xid")?,
        },
        b'C' => Message::Commit {
            flags: c.u8("flags")?,
            commit_lsn: c.lsn("commit LSN")?,
            end_lsn: c.lsn("end LSN")?,
            commit_time: c.i64("commit time")?,
        },
        b'O' => Message::Origin {
            commit_lsn: c.lsn("origin commit LSN")?,
            name: c.cstr("origin name")?,
        },
        b'R' => {
            let relid = c.u32("relation id")?;
            let namespace = c.cstr("namespace")?;
            let name = c.cstr("relation name")?;
            let replica_identity = c.u8("replica identity")?;
            let n = c.i16("column count")?;
            if n < 0 {
                return Err(c.invalid("column count", n));
            }
            let mut columns = Vec::new();
            for _ in 0..n {
                let flags = c.u8("column flags")?;
                columns.push(RelationColumn {
                    is_key: flags & 1 != 0,
                    name: c.cstr("column name")?,
                    type_oid: c.u32("column type")?,
                    type_modifier: c.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                relid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: c.u32("type id")?,
            namespace: c.cstr("type namespace")?,
            name: c.cstr("type name")?,
        },
        b'I' => {
            let relid = c.u32("relation id")?;
            let marker = c.u8("new tuple marker")?;
            if marker != b'N' {
                return Err(c.invalid("new tuple marker", char::from(marker)));
            }
            Message::Insert {
                relid,
                new: c.tuple()?,
            }
        }
        b'U' => {
            let relid = c.u32("relation id")?;
            let mut marker = c.u8("tuple marker")?;
            let mut old = None;
            if marker == b'K' || marker == b'O' {
                old = Some(c.old_tuple(marker)?);
                marker = c.u8("new tuple marker")?;
            }
            if marker != b'N' {
                return Err(c.invalid("new tuple marker", char::from(marker)));
            }
            Message::Update {
                relid,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let relid = c.u32("relation id")?;
            let marker = c.u8("old tuple marker")?;
            Message::Delete {
                relid,
                old: c.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = c.i32("relation count")?;
            if n < 0 {
                return Err(c.invalid("relation count", n));
            }
            let options = c.u8("options")?;
            let mut relids = Vec::new();
            for _ in 0..n {
                relids.push(c.u32("relation id")?);
            }
            Message::Truncate { options, relids }
        }
        b'M' => {
            let flags = c.u8("flags")?;
            let lsn = c.lsn("message LSN")?;
            let prefix = c.cstr("message prefix")?;
            let len = c.i32("message length")?;
            if len < 0 {
                return Err(c.invalid("message length", len));
            }
            Message::LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: c.take(len as usize, "message content")?,
            }
        }
        other => return Err(DecodeError::UnknownTag(char::from(other))),
    };
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<Option<&str>>]) {
        // None: unchanged toast; Some(None): null; Some(Some(t)): text.
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'u'),
                Some(None) => out.push(b'n'),
                Some(Some(t)) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn samples() -> Vec<(Vec<u8>, Message)> {
        let mut out = Vec::new();

        let mut b = vec![b'B'];
        b.extend_from_slice(&0x10_0000_0020u64.to_be_bytes());
        b.extend_from_slice(&1234i64.to_be_bytes());
        b.extend_from_slice(&77u32.to_be_bytes());
        out.push((
            b,
            Message::Begin {
                final_lsn: Lsn(0x10_0000_0020),
                commit_time: 1234,
                xid: 77,
            },
        ));

        let mut c = vec![b'C', 0];
        c.extend_from_slice(&5u64.to_be_bytes());
        c.extend_from_slice(&9u64.to_be_bytes());
        c.extend_from_slice(&(-3i64).to_be_bytes());
        out.push((
            c,
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(5),
                end_lsn: Lsn(9),
                commit_time: -3,
            },
        ));

        let mut o = vec![b'O'];
        o.extend_from_slice(&7u64.to_be_bytes());
        cstr(&mut o, "node_a");
        out.push((
            o,
            Message::Origin {
                commit_lsn: Lsn(7),
                name: "node_a".into(),
            },
        ));

        let mut r = vec![b'R'];
        r.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut r, "public");
        cstr(&mut r, "orders");
        r.push(b'f');
        r.extend_from_slice(&2i16.to_be_bytes());
        r.push(1);
        cstr(&mut r, "id");
        r.extend_from_slice(&23u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r.push(0);
        cstr(&mut r, "note");
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        out.push((
            r,
            Message::Relation(Relation {
                relid: 16384,
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: b'f',
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "note".into(),
                        type_oid: 25,
                        type_modifier: -1,
                    },
                ],
            }),
        ));

        let mut y = vec![b'Y'];
        y.extend_from_slice(&99999u32.to_be_bytes());
        cstr(&mut y, "public");
        cstr(&mut y, "mood");
        out.push((
            y,
            Message::Type {
                oid: 99999,
                namespace: "public".into(),
                name: "mood".into(),
            },
        ));

        let mut i = vec![b'I'];
        i.extend_from_slice(&16384u32.to_be_bytes());
        i.push(b'N');
        tuple(&mut i, &[Some(Some("1")), Some(None)]);
        out.push((
            i,
            Message::Insert {
                relid: 16384,
                new: Tuple(vec![text("1"), TupleValue::Null]),
            },
        ));

        let mut u = vec![b'U'];
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'O');
        tuple(&mut u, &[Some(Some("1")), Some(Some("old"))]);
        u.push(b'N');
        tuple(&mut u, &[Some(Some("1")), None]);
        out.push((
            u,
            Message::Update {
                relid: 16384,
                old: Some(OldTuple::Full(Tuple(vec![text("1"), text("old")]))),
                new: Tuple(vec![text("1"), TupleValue::UnchangedToast]),
            },
        ));

        let mut uk = vec![b'U'];
        uk.extend_from_slice(&16384u32.to_be_bytes());
        uk.push(b'K');
        tuple(&mut uk, &[Some(Some("1")), Some(None)]);
        uk.push(b'N');
        tuple(&mut uk, &[Some(Some("2")), Some(Some("x"))]);
        out.push((
            uk,
            Message::Update {
                relid: 16384,
                old: Some(OldTuple::Key(Tuple(vec![text("1"), TupleValue::Null]))),
                new: Tuple(vec![text("2"), text("x")]),
            },
        ));

        let mut un = vec![b'U'];
        un.extend_from_slice(&16384u32.to_be_bytes());
        un.push(b'N');
        tuple(&mut un, &[Some(Some("3")), Some(Some(""))]);
        out.push((
            un,
            Message::Update {
                relid: 16384,
                old: None,
                new: Tuple(vec![text("3"), text("")]),
            },
        ));

        let mut d = vec![b'D'];
        d.extend_from_slice(&16384u32.to_be_bytes());
        d.push(b'K');
        tuple(&mut d, &[Some(Some("1")), Some(None)]);
        out.push((
            d,
            Message::Delete {
                relid: 16384,
                old: OldTuple::Key(Tuple(vec![text("1"), TupleValue::Null])),
            },
        ));

        let mut t = vec![b'T'];
        t.extend_from_slice(&2i32.to_be_bytes());
        t.push(1);
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&2u32.to_be_bytes());
        out.push((
            t,
            Message::Truncate {
                options: 1,
                relids: vec![1, 2],
            },
        ));

        let mut m = vec![b'M', 1];
        m.extend_from_slice(&42u64.to_be_bytes());
        cstr(&mut m, "ferry");
        m.extend_from_slice(&3i32.to_be_bytes());
        m.extend_from_slice(b"abc");
        out.push((
            m,
            Message::LogicalMessage {
                transactional: true,
                lsn: Lsn(42),
                prefix: "ferry".into(),
                content: Bytes::from_static(b"abc"),
            },
        ));
        out
    }

    #[test]
    fn decodes_every_message_kind() {
        for (bytes, expected) in samples() {
            assert_eq!(decode(Bytes::from(bytes)).unwrap(), expected);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for (bytes, _) in samples() {
            for cut in 0..bytes.len() {
                let r = decode(Bytes::copy_from_slice(&bytes[..cut]));
                assert!(
                    r.is_err(),
                    "prefix of {} bytes of {:?} decoded",
                    cut,
                    bytes[0] as char
                );
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic pseudo-random walk over mutated samples.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (bytes, _) in samples() {
            for _ in 0..2000 {
                let mut b = bytes.clone();
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] = next() as u8;
                }
                let _ = decode(Bytes::from(b));
            }
        }
        assert!(matches!(decode(Bytes::new()), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag('Z'))
        ));
        // Negative lengths are refused.
        let mut i = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        i.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(decode(Bytes::from(i)).is_err());
    }

    #[test]
    fn pg_epoch_converts() {
        assert_eq!(pg_time_to_unix_ms(0), 946_684_800_000);
        assert_eq!(pg_time_to_unix_ms(1500), 946_684_800_001);
    }
}
