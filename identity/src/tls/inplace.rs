//! A server-side TLS 1.3 stream for forwarded (L4) traffic whose records are decrypted in
//! place: a reader gets the plaintext inside the buffer the ciphertext was read into, with no
//! further copy (rustls's buffered connection copies each record into a plaintext queue and
//! again into the reader's buffer, and reads 4 KiB at a time).
//!
//! rustls still does everything but the record layer: the handshake (its unbuffered server
//! connection, driven by [`handshake`]), the certificate checks, session tickets, and the key
//! schedule. After the handshake the connection becomes a [`KernelConnection`], which computes
//! the next traffic secret on each KeyUpdate. This module frames the records and decrypts and
//! encrypts them with the negotiated suite's own [`MessageDecrypter`] and [`MessageEncrypter`]
//! from the crypto provider the handshake used, so the AEAD code is rustls's.
//!
//! After the handshake a TLS 1.3 client may send application data, alerts and KeyUpdate:
//! - application data is lent to the reader ([`AsyncBufRead`]) or copied out ([`AsyncRead`]);
//! - `close_notify` ends the stream (EOF), `user_canceled` is ignored, any other alert fails it;
//! - a KeyUpdate switches the receive key; when it requests an update, ours is sent (and our
//!   key switched) before our next application data. At most 32 KeyUpdates in a row without
//!   data between them are accepted, as rustls does;
//! - anything else (another record type, another handshake message, a record that fails
//!   authentication, an oversized or truncated record, EOF without `close_notify`) fails the
//!   stream, with a fatal alert to the peer where TLS calls for one.
//!
//! Our own sending switches keys before the suite's confidentiality limit. TLS 1.3 only:
//! [`super::TlsProvider::accept_in_place`] refuses when TLS 1.2 is enabled.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError};
use rustls::{
    AlertDescription, CommonState, ConnectionTrafficSecrets, ContentType, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::error::TlsError;

/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// Largest plaintext of one record (2^14).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest protected record body TLS 1.3 allows (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Receive buffer while data flows: several records per read, and always room for a whole one.
const RX_BUFFER: usize = 64 * 1024;
/// Encrypted bytes queued for the socket before a write waits for them to drain.
const TX_QUEUE: usize = 64 * 1024;
/// Handshake bytes buffered at most (rustls caps a handshake message at 64 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024 + HEADER + MAX_CIPHERTEXT;
/// Application data decrypted by rustls during the handshake (it arrived with the client's
/// Finished), kept at most: one receive buffer's worth.
const MAX_EARLY_PLAINTEXT: usize = RX_BUFFER;
/// KeyUpdates accepted in a row with no application data between them.
const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;
/// Handshake message type of KeyUpdate.
const KEY_UPDATE: u8 = 24;

/// A finished server handshake, before its record layer is taken over.
pub(crate) struct Handshake {
    conn: UnbufferedServerConnection,
    /// Bytes read after the handshake (the start of the first records).
    buf: Vec<u8>,
    /// Application data rustls decrypted while finishing the handshake.
    early: Vec<u8>,
    peer_closed: bool,
}

/// Drives rustls's unbuffered server connection through the handshake on `io`. Bytes that
/// arrive after the client's Finished stay buffered for the record layer; nothing is lost.
pub(crate) async fn handshake<S>(
    mut conn: UnbufferedServerConnection,
    io: &mut S,
) -> Result<Handshake, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; HEADER + MAX_CIPHERTEXT];
    let mut used = 0;
    let mut out = Vec::new();
    let mut early = Vec::new();
    let mut peer_closed = false;
    loop {
        enum Step {
            Next,
            Transmit,
            Read,
            Writable,
            Done,
            Failed(TlsError),
        }
        let status = conn.process_tls_records(&mut buf[..used]);
        let mut discard = status.discard;
        let step = match status.state {
            Err(e) => Step::Failed(TlsError::from_rustls(e)),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => match encode(&mut enc, &mut out) {
                Ok(()) => Step::Next,
                Err(e) => Step::Failed(e),
            },
            Ok(ConnectionState::TransmitTlsData(tx)) => {
                tx.done();
                Step::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Step::Read,
            Ok(ConnectionState::WriteTraffic(_)) => Step::Writable,
            Ok(ConnectionState::ReadTraffic(mut data)) => {
                let mut step = Step::Next;
                while let Some(record) = data.next_record() {
                    match record {
                        Ok(r) => {
                            discard += r.discard;
                            early.extend_from_slice(r.payload);
                        }
                        Err(e) => {
                            step = Step::Failed(TlsError::from_rustls(e));
                            break;
                        }
                    }
                }
                if early.len() > MAX_EARLY_PLAINTEXT {
                    step = Step::Failed(TlsError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more than 64 KiB of application data arrived with the client's Finished",
                    )));
                }
                step
            }
            Ok(ConnectionState::PeerClosed) => {
                peer_closed = true;
                Step::Next
            }
            Ok(other) => Step::Failed(TlsError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected TLS state {other:?} during the handshake"),
            ))),
        };
        buf.copy_within(discard..used, 0);
        used -= discard;
        // A TLS 1.3 server may send before the client's Finished arrives: keep reading until
        // the handshake is over.
        let step = match step {
            Step::Writable if conn.is_handshaking() => Step::Read,
            Step::Writable => Step::Done,
            other => other,
        };
        match step {
            Step::Next => {}
            Step::Transmit => {
                io.write_all(&out).await.map_err(TlsError::Io)?;
                io.flush().await.map_err(TlsError::Io)?;
                out.clear();
            }
            Step::Read => {
                if used == buf.len() {
                    if buf.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(TlsError::Io(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "TLS handshake messages larger than 64 KiB",
                        )));
                    }
                    buf.resize((buf.len() * 2).min(MAX_HANDSHAKE_BUFFER), 0);
                }
                let n = io.read(&mut buf[used..]).await.map_err(TlsError::Io)?;
                if n == 0 {
                    return Err(TlsError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    )));
                }
                used += n;
            }
            Step::Writable | Step::Done => {
                if !out.is_empty() {
                    io.write_all(&out).await.map_err(TlsError::Io)?;
                    io.flush().await.map_err(TlsError::Io)?;
                }
                buf.truncate(used);
                return Ok(Handshake {
                    conn,
                    buf,
                    early,
                    peer_closed,
                });
            }
            Step::Failed(e) => {
                send_alerts(&mut conn, &mut buf[..used], &mut out, io).await;
                return Err(e);
            }
        }
    }
}

/// After a failed handshake: encodes and sends what rustls queued (its alert), best effort.
async fn send_alerts<S>(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    out: &mut Vec<u8>,
    io: &mut S,
) where
    S: AsyncWrite + Unpin,
{
    for _ in 0..4 {
        let status = conn.process_tls_records(buf);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                if encode(&mut enc, out).is_err() {
                    break;
                }
            }
            Ok(ConnectionState::TransmitTlsData(tx)) => {
                tx.done();
                break;
            }
            _ => break,
        }
    }
    if !out.is_empty() {
        let _ = io.write_all(out).await;
        let _ = io.flush().await;
    }
}

/// Appends the next handshake record rustls has to `out`.
fn encode(
    enc: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let start = out.len();
    out.resize(start + 4096, 0);
    let n = match enc.encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            enc.encode(&mut out[start..])
                .map_err(|e| TlsError::Handshake(rustls::Error::General(e.to_string())))?
        }
        Err(e) => return Err(TlsError::Handshake(rustls::Error::General(e.to_string()))),
    };
    out.truncate(start + n);
    Ok(())
}

impl Handshake {
    /// The connection's state: peer certificates, negotiated ALPN.
    pub(crate) fn common(&self) -> &CommonState {
        &self.conn
    }

    /// Takes over the record layer: the stream reads and writes on `io`.
    pub(crate) fn into_stream<S>(self, io: S) -> Result<InPlaceTls<S>, TlsError> {
        let (secrets, kernel) = self
            .conn
            .dangerous_into_kernel_connection()
            .map_err(TlsError::from_rustls)?;
        if kernel.protocol_version() != ProtocolVersion::TLSv1_3 {
            return Err(not_tls13());
        }
        let SupportedCipherSuite::Tls13(suite) = kernel.negotiated_cipher_suite() else {
            return Err(not_tls13());
        };
        let rx = decrypter(suite, secrets.rx.1).map_err(TlsError::from_rustls)?;
        let tx = encrypter(suite, secrets.tx.1).map_err(TlsError::from_rustls)?;
        let (rend, rbuf) = if self.buf.is_empty() {
            (0, Vec::new())
        } else {
            let mut b = vec![0u8; RX_BUFFER];
            b[..self.buf.len()].copy_from_slice(&self.buf);
            (self.buf.len(), b)
        };
        Ok(InPlaceTls {
            io,
            kernel,
            suite,
            rx,
            rx_seq: secrets.rx.0,
            tx,
            tx_seq: secrets.tx.0,
            rbuf,
            rstart: 0,
            rend,
            plain: 0..0,
            early: self.early,
            early_pos: 0,
            eof: false,
            peer_closed: self.peer_closed,
            key_updates_in_a_row: 0,
            key_update_due: false,
            key_updates: (0, 0),
            out: VecDeque::new(),
            out_front: 0,
            out_len: 0,
            close_sent: false,
            failed: None,
        })
    }
}

/// Whether our next record must go under a new key: the peer asked for an update, or the
/// record after the next one (the KeyUpdate itself is one) would reach the suite's
/// confidentiality limit.
fn key_update_needed(requested: bool, tx_seq: u64, confidentiality_limit: u64) -> bool {
    requested || tx_seq.saturating_add(1) >= confidentiality_limit
}

fn not_tls13() -> TlsError {
    TlsError::Handshake(rustls::Error::General(
        "in-place records need TLS 1.3, and TLS 1.2 was negotiated".into(),
    ))
}

fn key_iv(
    secrets: ConnectionTrafficSecrets,
) -> Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv), rustls::Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(rustls::Error::General(
            "traffic secrets of a cipher suite without a TLS 1.3 record layer".into(),
        )),
    }
}

fn decrypter(
    suite: &'static Tls13CipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, rustls::Error> {
    let (key, iv) = key_iv(secrets)?;
    Ok(suite.aead_alg.decrypter(key, iv))
}

fn encrypter(
    suite: &'static Tls13CipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageEncrypter>, rustls::Error> {
    let (key, iv) = key_iv(secrets)?;
    Ok(suite.aead_alg.encrypter(key, iv))
}

/// Why the stream failed, and whether the peer is told with an alert.
struct Fault {
    alert: Option<AlertDescription>,
    kind: io::ErrorKind,
    message: String,
}

impl Fault {
    fn alert(alert: AlertDescription, message: impl Into<String>) -> Self {
        Self {
            alert: Some(alert),
            kind: io::ErrorKind::InvalidData,
            message: message.into(),
        }
    }

    fn silent(kind: io::ErrorKind, message: impl Into<String>) -> Self {
        Self {
            alert: None,
            kind,
            message: message.into(),
        }
    }

    fn from_rustls(context: &str, e: rustls::Error) -> Self {
        let alert = match &e {
            rustls::Error::DecryptError => AlertDescription::BadRecordMac,
            rustls::Error::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
            rustls::Error::InvalidMessage(_) => AlertDescription::UnexpectedMessage,
            _ => AlertDescription::InternalError,
        };
        Self::alert(alert, format!("{context}: {e}"))
    }

    fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

/// A server-side TLS 1.3 stream whose records are decrypted in place (see the module docs).
pub struct InPlaceTls<S> {
    io: S,
    kernel: KernelConnection<ServerConnectionData>,
    suite: &'static Tls13CipherSuite,
    rx: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    tx: Box<dyn MessageEncrypter>,
    tx_seq: u64,
    /// Receive buffer: allocated while data flows, empty (no memory) while idle.
    rbuf: Vec<u8>,
    /// `rbuf[rstart..rend]` is ciphertext not yet decrypted.
    rstart: usize,
    rend: usize,
    /// Decrypted application data inside `rbuf` not yet consumed.
    plain: Range<usize>,
    early: Vec<u8>,
    early_pos: usize,
    eof: bool,
    peer_closed: bool,
    key_updates_in_a_row: u32,
    key_update_due: bool,
    /// KeyUpdates received and sent.
    key_updates: (u64, u64),
    /// Encrypted records queued for the socket; `out_front` bytes of the first are written.
    out: VecDeque<Vec<u8>>,
    out_front: usize,
    out_len: usize,
    close_sent: bool,
    failed: Option<Fault>,
}

impl<S> std::fmt::Debug for InPlaceTls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceTls")
            .field("suite", &self.suite.common.suite)
            .field("rx_seq", &self.rx_seq)
            .field("tx_seq", &self.tx_seq)
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<S> InPlaceTls<S> {
    /// The underlying transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The negotiated cipher suite.
    pub fn cipher_suite(&self) -> &'static Tls13CipherSuite {
        self.suite
    }

    /// KeyUpdates received from the peer and sent to it so far.
    pub fn key_updates(&self) -> (u64, u64) {
        self.key_updates
    }

    /// Decrypts the next complete record in the buffer. `Ok(false)` when none is complete.
    fn next_record(&mut self) -> Result<bool, Fault> {
        let avail = &self.rbuf[self.rstart..self.rend];
        if avail.len() < HEADER {
            return Ok(false);
        }
        let typ = avail[0];
        let len = usize::from(u16::from_be_bytes([avail[3], avail[4]]));
        if typ != u8::from(ContentType::ApplicationData) {
            return Err(Fault::alert(
                AlertDescription::UnexpectedMessage,
                format!(
                    "the peer sent a TLS record of type {typ} after the handshake \
                     (only application_data records are allowed)"
                ),
            ));
        }
        if len > MAX_CIPHERTEXT {
            return Err(Fault::alert(
                AlertDescription::RecordOverflow,
                format!("the peer sent a TLS record of {len} bytes (at most {MAX_CIPHERTEXT})"),
            ));
        }
        if avail.len() < HEADER + len {
            return Ok(false);
        }
        let start = self.rstart + HEADER;
        let end = start + len;
        self.rstart = end;
        let seq = self.rx_seq;
        self.rx_seq = seq.checked_add(1).ok_or_else(|| {
            Fault::alert(
                AlertDescription::InternalError,
                "the peer sent 2^64 records without a KeyUpdate",
            )
        })?;
        let base = self.rbuf.as_ptr() as usize;
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut self.rbuf[start..end],
        );
        let plain = self
            .rx
            .decrypt(msg, seq)
            .map_err(|e| Fault::from_rustls("a TLS record from the peer", e))?;
        let off = plain.payload.as_ptr() as usize - base;
        let range = off..off + plain.payload.len();
        let typ = plain.typ;
        match typ {
            ContentType::ApplicationData => {
                if !range.is_empty() {
                    self.key_updates_in_a_row = 0;
                }
                self.plain = range;
                Ok(true)
            }
            ContentType::Alert => self.on_alert(range).map(|()| true),
            ContentType::Handshake => self.on_handshake(range).map(|()| true),
            other => Err(Fault::alert(
                AlertDescription::UnexpectedMessage,
                format!("the peer sent a protected {other:?} record after the handshake"),
            )),
        }
    }

    fn on_alert(&mut self, range: Range<usize>) -> Result<(), Fault> {
        let &[_level, desc] = &self.rbuf[range] else {
            return Err(Fault::alert(
                AlertDescription::DecodeError,
                "the peer sent a malformed TLS alert",
            ));
        };
        match AlertDescription::from(desc) {
            AlertDescription::CloseNotify => {
                self.peer_closed = true;
                Ok(())
            }
            AlertDescription::UserCanceled => Ok(()),
            other => Err(Fault::silent(
                io::ErrorKind::ConnectionAborted,
                format!("the peer ended the TLS connection with alert {other:?}"),
            )),
        }
    }

    /// A post-handshake message from a TLS 1.3 client: only KeyUpdate, alone in its record
    /// (a key change ends the record it is in).
    fn on_handshake(&mut self, range: Range<usize>) -> Result<(), Fault> {
        let request = match self.rbuf[range] {
            [KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => request == 1,
            [KEY_UPDATE, ..] => {
                return Err(Fault::alert(
                    AlertDescription::DecodeError,
                    "the peer sent a malformed KeyUpdate, or one not alone in its record",
                ));
            }
            [] => {
                return Err(Fault::alert(
                    AlertDescription::UnexpectedMessage,
                    "the peer sent an empty handshake record",
                ));
            }
            [typ, ..] => {
                return Err(Fault::alert(
                    AlertDescription::UnexpectedMessage,
                    format!(
                        "the peer sent handshake message type {typ} after the handshake \
                         (a client may only send KeyUpdate)"
                    ),
                ));
            }
        };
        self.key_updates_in_a_row += 1;
        if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(Fault::alert(
                AlertDescription::UnexpectedMessage,
                "the peer sent more than 32 KeyUpdates without data between them",
            ));
        }
        let (seq, secrets) = self
            .kernel
            .update_rx_secret()
            .map_err(|e| Fault::from_rustls("updating the receive key", e))?;
        self.rx = decrypter(self.suite, secrets)
            .map_err(|e| Fault::from_rustls("updating the receive key", e))?;
        self.rx_seq = seq;
        self.key_updates.0 += 1;
        if request {
            self.key_update_due = true;
        }
        Ok(())
    }

    /// Encrypts one record of `typ` into the send queue.
    fn queue_record(&mut self, typ: ContentType, payload: &[u8]) -> Result<(), Fault> {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let record = self
            .tx
            .encrypt(msg, self.tx_seq)
            .map_err(|e| Fault::from_rustls("encrypting a TLS record", e))?
            .encode();
        self.tx_seq += 1;
        self.out_len += record.len();
        self.out.push_back(record);
        Ok(())
    }

    /// Sends our KeyUpdate and switches the send key, when the peer asked for it or the
    /// suite's confidentiality limit is near.
    fn maybe_update_tx_key(&mut self) -> Result<(), Fault> {
        if !key_update_needed(
            self.key_update_due,
            self.tx_seq,
            self.suite.common.confidentiality_limit,
        ) {
            return Ok(());
        }
        self.queue_record(ContentType::Handshake, &[KEY_UPDATE, 0, 0, 1, 0])?;
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(|e| Fault::from_rustls("updating the send key", e))?;
        self.tx = encrypter(self.suite, secrets)
            .map_err(|e| Fault::from_rustls("updating the send key", e))?;
        self.tx_seq = seq;
        self.key_update_due = false;
        self.key_updates.1 += 1;
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> InPlaceTls<S> {
    /// Records the failure; tells the peer with an alert when TLS calls for one (best effort).
    fn fail(&mut self, cx: &mut Context<'_>, fault: Fault) {
        if let Some(alert) = fault.alert
            && !self.close_sent
        {
            self.close_sent = true;
            if self
                .queue_record(ContentType::Alert, &[2, u8::from(alert)])
                .is_ok()
            {
                let _ = self.poll_flush_queue(cx);
            }
        }
        self.failed = Some(fault);
    }

    /// Reads more ciphertext. `Pending` gives the receive buffer back when it holds nothing.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if self.rbuf.is_empty() {
            self.rbuf = vec![0u8; RX_BUFFER];
        }
        // Move a partial record to the front only when a whole one might not fit after it.
        if self.rbuf.len() - self.rend < HEADER + MAX_CIPHERTEXT {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if self.rend == 0 {
                    self.rbuf = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    self.eof = true;
                } else {
                    self.rend += n;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// Writes queued records until the queue is empty.
    fn poll_flush_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_len > 0 {
            let mut slices = [IoSlice::new(&[]); 16];
            let mut k = 0;
            for (i, rec) in self.out.iter().take(slices.len()).enumerate() {
                let from = if i == 0 { self.out_front } else { 0 };
                slices[k] = IoSlice::new(&rec[from..]);
                k += 1;
            }
            let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_len -= n;
            while n > 0 {
                let Some(front) = self.out.front() else {
                    break;
                };
                let left = front.len() - self.out_front;
                if n >= left {
                    n -= left;
                    self.out.pop_front();
                    self.out_front = 0;
                } else {
                    self.out_front += n;
                    n = 0;
                }
            }
        }
        if self.out.capacity() > 16 {
            self.out = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncBufRead for InPlaceTls<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.early_pos < this.early.len() {
            return Poll::Ready(Ok(&this.early[this.early_pos..]));
        }
        loop {
            if !this.plain.is_empty() {
                return Poll::Ready(Ok(&this.rbuf[this.plain.clone()]));
            }
            if let Some(f) = &this.failed {
                return Poll::Ready(Err(f.to_io()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(&[]));
            }
            match this.next_record() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(fault) => {
                    this.fail(cx, fault);
                    continue;
                }
            }
            if this.eof {
                let message = if this.rstart < this.rend {
                    "the peer closed the connection in the middle of a TLS record"
                } else {
                    "the peer closed the connection without a TLS close_notify"
                };
                this.failed = Some(Fault::silent(io::ErrorKind::UnexpectedEof, message));
                continue;
            }
            if let Err(e) = ready!(this.poll_read_more(cx)) {
                this.failed = Some(Fault::silent(e.kind(), e.to_string()));
            }
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        if this.early_pos < this.early.len() {
            this.early_pos += amt;
            if this.early_pos >= this.early.len() {
                this.early = Vec::new();
                this.early_pos = 0;
            }
        } else {
            this.plain.start = (this.plain.start + amt).min(this.plain.end);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for InPlaceTls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for InPlaceTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(f) = &this.failed {
            return Poll::Ready(Err(f.to_io()));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS stream was shut down",
            )));
        }
        if this.out_len >= TX_QUEUE {
            ready!(this.poll_flush_queue(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(TX_QUEUE);
        for chunk in buf[..take].chunks(MAX_PLAINTEXT) {
            let queued = this
                .maybe_update_tx_key()
                .and_then(|()| this.queue_record(ContentType::ApplicationData, chunk));
            if let Err(fault) = queued {
                let e = fault.to_io();
                this.fail(cx, fault);
                return Poll::Ready(Err(e));
            }
        }
        if let Poll::Ready(Err(e)) = this.poll_flush_queue(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_queue(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && this.failed.is_none() {
            this.close_sent = true;
            let close_notify = [1, u8::from(AlertDescription::CloseNotify)];
            if let Err(fault) = this.queue_record(ContentType::Alert, &close_notify) {
                let e = fault.to_io();
                this.failed = Some(fault);
                return Poll::Ready(Err(e));
            }
        }
        ready!(this.poll_flush_queue(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_before_the_confidentiality_limit_or_on_request() {
        let limit = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .map(|s| s.common.confidentiality_limit)
            .unwrap_or_default();
        assert_eq!(limit, 1 << 24);
        assert!(!key_update_needed(false, 0, limit));
        assert!(!key_update_needed(false, limit - 2, limit));
        // The KeyUpdate is sent under the old key as record `limit - 1`, the last one allowed.
        assert!(key_update_needed(false, limit - 1, limit));
        assert!(key_update_needed(false, u64::MAX, limit));
        assert!(key_update_needed(true, 0, limit));
    }
}
