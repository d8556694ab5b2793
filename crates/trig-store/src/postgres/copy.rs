//! PostgreSQL's binary `COPY` format, written into large buffers.
//!
//! `postgres::binary_copy::BinaryCopyInWriter` hands the connection a
//! message every 4 KiB: a 20k-event batch is about 750 messages, each a trip
//! through the connection's channel and a socket write. Here a row is
//! encoded straight into a buffer that goes out as one `CopyData` message
//! per [`SEGMENT`] bytes, so the server parses one segment while the next is
//! encoded. The format: a signature, flags and header extension; per row a
//! field count and per field a length (−1 for NULL) and its bytes in
//! network order; a trailer of −1.

use std::io::Write;

use postgres::CopyInWriter;

/// Bytes per `CopyData` message.
const SEGMENT: usize = 256 * 1024;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// One binary `COPY … FROM STDIN BINARY` in progress.
pub(crate) struct BinaryCopy<'a> {
    sink: CopyInWriter<'a>,
    buf: Vec<u8>,
}

impl<'a> BinaryCopy<'a> {
    pub(crate) fn new(sink: CopyInWriter<'a>) -> BinaryCopy<'a> {
        let mut buf = Vec::with_capacity(SEGMENT + 4096);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension: none
        BinaryCopy { sink, buf }
    }

    /// Starts a row of `fields` fields; then one call per field, in the COPY's column order.
    pub(crate) fn row(&mut self, fields: i16) -> Result<&mut Self, CopyFailed> {
        if self.buf.len() >= SEGMENT {
            self.send()?;
        }
        self.buf.extend_from_slice(&fields.to_be_bytes());
        Ok(self)
    }

    pub(crate) fn int8(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn text(&mut self, v: &str) -> &mut Self {
        // PostgreSQL stores at most 1 GiB in a field; a longer one (never a
        // mapped event's) would get a wrong length here, which the server
        // rejects as a malformed COPY: the transaction fails, nothing is half-written.
        let len = i32::try_from(v.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    fn send(&mut self) -> Result<(), CopyFailed> {
        // One write of more than 4 KiB goes to the server as one message.
        self.sink.write_all(&self.buf).map_err(io_error)?;
        self.sink.flush().map_err(io_error)?;
        self.buf.clear();
        Ok(())
    }

    /// Ends the COPY: the rows it stored.
    pub(crate) fn finish(mut self) -> Result<u64, CopyFailed> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.send()?;
        Ok(self.sink.finish()?)
    }
}

/// Why a COPY failed: the server's or the connection's error, or (never
/// seen: `CopyInWriter` wraps only the connection's errors) a bare I/O error.
pub(crate) enum CopyFailed {
    Postgres(postgres::Error),
    Io(std::io::Error),
}

impl CopyFailed {
    pub(crate) fn code(&self) -> Option<&postgres::error::SqlState> {
        match self {
            CopyFailed::Postgres(e) => e.code(),
            CopyFailed::Io(_) => None,
        }
    }
}

impl From<postgres::Error> for CopyFailed {
    fn from(e: postgres::Error) -> Self {
        CopyFailed::Postgres(e)
    }
}

impl From<CopyFailed> for crate::Error {
    fn from(e: CopyFailed) -> Self {
        match e {
            CopyFailed::Postgres(e) => e.into(),
            CopyFailed::Io(e) => crate::Error::Database(format!("a COPY into the store failed: {e}")),
        }
    }
}

/// The connection's error inside an I/O error (how `CopyInWriter` reports it), back out.
fn io_error(e: std::io::Error) -> CopyFailed {
    if e.get_ref().is_none() {
        return CopyFailed::Io(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<postgres::Error>()) {
        Some(Ok(pg)) => CopyFailed::Postgres(*pg),
        Some(Err(other)) => CopyFailed::Io(std::io::Error::other(other)),
        None => CopyFailed::Io(std::io::Error::other("a COPY write failed")),
    }
}
