//! Decoding of the streaming replication protocol and of pgoutput (protocol version 1), the
//! logical decoding output plugin that ships with PostgreSQL and that Debezium uses.
//!
//! Pure functions over byte slices: no I/O, so every message shape is unit-tested here.
//! References: PostgreSQL's "Streaming Replication Protocol" and "Logical Replication Message
//! Formats" chapters.

use rainbow_schemas::wire::Lsn;

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01T00:00:00Z.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("replication message truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("unknown replication message tag {0:?}")]
    UnknownCopyTag(char),
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("unknown tuple column kind {0:?}")]
    UnknownColumnKind(char),
    #[error("pgoutput {what} marker {found:?} where {expected} was expected")]
    UnexpectedMarker { what: &'static str, found: char, expected: &'static str },
    #[error("a string in the message is not valid UTF-8")]
    NotUtf8,
}

/// One CopyData payload of a START_REPLICATION stream.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyMessage<'a> {
    /// WAL data: `start` is the WAL position of the record this message was decoded from.
    XLogData { start: Lsn, end: Lsn, data: &'a [u8] },
    /// The server's keepalive: `end` is how far it has read the WAL; answer at once when
    /// `reply_requested`.
    Keepalive { end: Lsn, reply_requested: bool },
}

/// A transaction's first message. `final_lsn` is the WAL position of its commit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    pub xid: u32,
}

/// A transaction's last message. Confirming `end_lsn` tells the server never to send this
/// transaction again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (every column under REPLICA IDENTITY FULL).
    pub identity: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The shape of a table, sent before its first change in a session and after each schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: char,
    pub columns: Vec<RelationColumn>,
}

/// One column of a row as pgoutput sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An unchanged TOASTed value that the server did not send.
    UnchangedToast,
    /// The value in its text output form.
    Text(String),
}

/// The old row of an update or delete: the replica identity's key columns (`K`, other columns
/// null) or the whole old row (`O`, under REPLICA IDENTITY FULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    Key(Vec<Datum>),
    Full(Vec<Datum>),
}

impl OldRow {
    pub fn datums(&self) -> &[Datum] {
        match self {
            OldRow::Key(d) | OldRow::Full(d) => d,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin { name: String },
    Relation(Relation),
    Type { oid: u32 },
    Insert { relation: u32, new: Vec<Datum> },
    Update { relation: u32, old: Option<OldRow>, new: Vec<Datum> },
    Delete { relation: u32, old: OldRow },
    Truncate { relations: Vec<u32>, cascade: bool, restart_identity: bool },
    Message { transactional: bool, prefix: String, content: Vec<u8> },
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { what, needed: n - self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(what)? as u64))
    }
    fn timestamp(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(self.i64(what)? + PG_EPOCH_OFFSET_MICROS)
    }
    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self.buf.iter().position(|b| *b == 0).ok_or(DecodeError::Truncated { what, needed: 1 })?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::NotUtf8)?.to_string();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.i16("tuple column count")?.max(0) as usize;
        let mut datums = Vec::with_capacity(n);
        for _ in 0..n {
            datums.push(match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("tuple value length")?.max(0) as usize;
                    let bytes = self.take(len, "tuple value")?;
                    Datum::Text(String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8)?)
                }
                other => return Err(DecodeError::UnknownColumnKind(other as char)),
            });
        }
        Ok(datums)
    }
    fn marker(
        &mut self,
        what: &'static str,
        allowed: &[u8],
        expected: &'static str,
    ) -> Result<u8, DecodeError> {
        let m = self.u8(what)?;
        if allowed.contains(&m) {
            Ok(m)
        } else {
            Err(DecodeError::UnexpectedMarker { what, found: m as char, expected })
        }
    }
}

/// Splits a CopyData payload of the replication stream.
pub fn parse_copy_message(payload: &[u8]) -> Result<CopyMessage<'_>, DecodeError> {
    let mut r = Reader { buf: payload };
    match r.u8("message tag")? {
        b'w' => {
            let start = r.lsn("XLogData start")?;
            let end = r.lsn("XLogData end")?;
            let _send_time = r.i64("XLogData send time")?;
            Ok(CopyMessage::XLogData { start, end, data: r.buf })
        }
        b'k' => {
            let end = r.lsn("keepalive end")?;
            let _send_time = r.i64("keepalive send time")?;
            let reply_requested = r.u8("keepalive reply flag")? != 0;
            Ok(CopyMessage::Keepalive { end, reply_requested })
        }
        other => Err(DecodeError::UnknownCopyTag(other as char)),
    }
}

/// Decodes one pgoutput message (the `data` of an XLogData).
pub fn parse_logical_message(data: &[u8]) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader { buf: data };
    let tag = r.u8("pgoutput tag")?;
    Ok(match tag {
        b'B' => LogicalMessage::Begin(Begin {
            final_lsn: r.lsn("BEGIN final LSN")?,
            commit_time_us: r.timestamp("BEGIN commit time")?,
            xid: r.u32("BEGIN xid")?,
        }),
        b'C' => {
            let _flags = r.u8("COMMIT flags")?;
            LogicalMessage::Commit(Commit {
                commit_lsn: r.lsn("COMMIT LSN")?,
                end_lsn: r.lsn("COMMIT end LSN")?,
                commit_time_us: r.timestamp("COMMIT time")?,
            })
        }
        b'O' => {
            let _lsn = r.lsn("ORIGIN LSN")?;
            LogicalMessage::Origin { name: r.cstring("ORIGIN name")? }
        }
        b'R' => {
            let oid = r.u32("RELATION oid")?;
            let namespace = r.cstring("RELATION namespace")?;
            let name = r.cstring("RELATION name")?;
            let replica_identity = r.u8("RELATION replica identity")? as char;
            let n = r.i16("RELATION column count")?.max(0) as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8("RELATION column flags")?;
                columns.push(RelationColumn {
                    identity: flags & 1 == 1,
                    name: r.cstring("RELATION column name")?,
                    type_oid: r.u32("RELATION column type")?,
                    type_modifier: r.i32("RELATION column type modifier")?,
                });
            }
            // An empty namespace means pg_catalog (PostgreSQL's own convention in pgoutput).
            let namespace = if namespace.is_empty() { "pg_catalog".to_string() } else { namespace };
            LogicalMessage::Relation(Relation { oid, namespace, name, replica_identity, columns })
        }
        b'Y' => {
            let oid = r.u32("TYPE oid")?;
            let _namespace = r.cstring("TYPE namespace")?;
            let _name = r.cstring("TYPE name")?;
            LogicalMessage::Type { oid }
        }
        b'I' => {
            let relation = r.u32("INSERT relation")?;
            r.marker("INSERT", b"N", "'N'")?;
            LogicalMessage::Insert { relation, new: r.tuple()? }
        }
        b'U' => {
            let relation = r.u32("UPDATE relation")?;
            let old = match r.marker("UPDATE", b"KON", "'K', 'O' or 'N'")? {
                b'K' => {
                    let old = OldRow::Key(r.tuple()?);
                    r.marker("UPDATE", b"N", "'N'")?;
                    Some(old)
                }
                b'O' => {
                    let old = OldRow::Full(r.tuple()?);
                    r.marker("UPDATE", b"N", "'N'")?;
                    Some(old)
                }
                _ => None,
            };
            LogicalMessage::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32("DELETE relation")?;
            let old = match r.marker("DELETE", b"KO", "'K' or 'O'")? {
                b'K' => OldRow::Key(r.tuple()?),
                _ => OldRow::Full(r.tuple()?),
            };
            LogicalMessage::Delete { relation, old }
        }
        b'T' => {
            let n = r.u32("TRUNCATE relation count")? as usize;
            let options = r.u8("TRUNCATE options")?;
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32("TRUNCATE relation")?);
            }
            LogicalMessage::Truncate {
                relations,
                cascade: options & 1 == 1,
                restart_identity: options & 2 == 2,
            }
        }
        b'M' => {
            let flags = r.u8("MESSAGE flags")?;
            let _lsn = r.lsn("MESSAGE LSN")?;
            let prefix = r.cstring("MESSAGE prefix")?;
            let len = r.i32("MESSAGE length")?.max(0) as usize;
            let content = r.take(len, "MESSAGE content")?.to_vec();
            LogicalMessage::Message { transactional: flags & 1 == 1, prefix, content }
        }
        other => return Err(DecodeError::UnknownTag(other as char)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn text(out: &mut Vec<u8>, s: &str) {
        out.push(b't');
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x10u64.to_be_bytes());
        w.extend_from_slice(&0x20u64.to_be_bytes());
        w.extend_from_slice(&0i64.to_be_bytes());
        w.extend_from_slice(b"Bxyz");
        assert_eq!(
            parse_copy_message(&w).unwrap(),
            CopyMessage::XLogData { start: Lsn(0x10), end: Lsn(0x20), data: b"Bxyz" }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x30u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_message(&k).unwrap(),
            CopyMessage::Keepalive { end: Lsn(0x30), reply_requested: true }
        );
        assert_eq!(parse_copy_message(b"z").unwrap_err(), DecodeError::UnknownCopyTag('z'));
        assert!(matches!(parse_copy_message(b"k\0\0").unwrap_err(), DecodeError::Truncated { .. }));
    }

    #[test]
    fn begin_commit_times_are_unix_microseconds() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1234u64.to_be_bytes());
        b.extend_from_slice(&1_000_000i64.to_be_bytes());
        b.extend_from_slice(&77u32.to_be_bytes());
        assert_eq!(
            parse_logical_message(&b).unwrap(),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(0x1234),
                commit_time_us: PG_EPOCH_OFFSET_MICROS + 1_000_000,
                xid: 77
            })
        );
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&0x1234u64.to_be_bytes());
        c.extend_from_slice(&0x1260u64.to_be_bytes());
        c.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(
            parse_logical_message(&c).unwrap(),
            LogicalMessage::Commit(Commit {
                commit_lsn: Lsn(0x1234),
                end_lsn: Lsn(0x1260),
                commit_time_us: PG_EPOCH_OFFSET_MICROS
            })
        );
    }

    #[test]
    fn relation_and_row_messages() {
        let mut rel = vec![b'R'];
        rel.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut rel, "public");
        cstr(&mut rel, "brands");
        rel.push(b'f');
        rel.extend_from_slice(&2i16.to_be_bytes());
        rel.push(1);
        cstr(&mut rel, "id");
        rel.extend_from_slice(&20u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        rel.push(1);
        cstr(&mut rel, "name");
        rel.extend_from_slice(&25u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        let LogicalMessage::Relation(r) = parse_logical_message(&rel).unwrap() else { panic!() };
        assert_eq!(
            (r.oid, r.namespace.as_str(), r.name.as_str(), r.replica_identity),
            (16384, "public", "brands", 'f')
        );
        assert_eq!(
            r.columns[1],
            RelationColumn { identity: true, name: "name".into(), type_oid: 25, type_modifier: -1 }
        );

        let mut upd = vec![b'U'];
        upd.extend_from_slice(&16384u32.to_be_bytes());
        upd.push(b'O');
        upd.extend_from_slice(&2i16.to_be_bytes());
        text(&mut upd, "1");
        text(&mut upd, "old");
        upd.push(b'N');
        upd.extend_from_slice(&2i16.to_be_bytes());
        text(&mut upd, "1");
        upd.push(b'u');
        assert_eq!(
            parse_logical_message(&upd).unwrap(),
            LogicalMessage::Update {
                relation: 16384,
                old: Some(OldRow::Full(vec![Datum::Text("1".into()), Datum::Text("old".into())])),
                new: vec![Datum::Text("1".into()), Datum::UnchangedToast],
            }
        );

        let mut del = vec![b'D'];
        del.extend_from_slice(&16384u32.to_be_bytes());
        del.push(b'K');
        del.extend_from_slice(&2i16.to_be_bytes());
        text(&mut del, "1");
        del.push(b'n');
        assert_eq!(
            parse_logical_message(&del).unwrap(),
            LogicalMessage::Delete {
                relation: 16384,
                old: OldRow::Key(vec![Datum::Text("1".into()), Datum::Null])
            }
        );

        let mut bad = vec![b'I'];
        bad.extend_from_slice(&1u32.to_be_bytes());
        bad.push(b'X');
        assert_eq!(
            parse_logical_message(&bad).unwrap_err(),
            DecodeError::UnexpectedMarker { what: "INSERT", found: 'X', expected: "'N'" }
        );
    }

    #[test]
    fn truncate_lists_relations_and_options() {
        let mut t = vec![b'T'];
        t.extend_from_slice(&2u32.to_be_bytes());
        t.push(3);
        t.extend_from_slice(&10u32.to_be_bytes());
        t.extend_from_slice(&11u32.to_be_bytes());
        assert_eq!(
            parse_logical_message(&t).unwrap(),
            LogicalMessage::Truncate { relations: vec![10, 11], cascade: true, restart_identity: true }
        );
    }
}
