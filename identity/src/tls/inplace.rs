//! A TLS 1.3 stream whose records are opened and sealed in place, on either side of the
//! connection (the sidecar uses it for L4 and HTTP):
//! - a reader gets the plaintext inside the buffer the ciphertext was read into, with no
//!   further copy (rustls's buffered connection copies each record into a plaintext queue and
//!   again into the reader's buffer, and reads 4 KiB at a time);
//! - a writer can borrow the plaintext slots of the next records ([`InPlaceTls::poll_lend`]),
//!   read the bytes to send straight into them (one vectored read fills up to four records),
//!   and [`InPlaceTls::commit`] seals them where they lie: the records go to the socket in one
//!   write with no copy (rustls copies each record's plaintext before sealing it).
//!   [`AsyncWrite`] is there too, for writers that have their bytes elsewhere (one copy;
//!   vectored writes are gathered into records).
//!
//! rustls still does everything but the record layer: the handshake (its unbuffered server or
//! client connection, driven by [`handshake`]), the certificate checks, session tickets, and
//! the key schedule. After the handshake the connection becomes a [`KernelConnection`], which
//! computes the next traffic secret on each KeyUpdate and stores the tickets a server sends.
//! Records are opened with the negotiated suite's own [`MessageDecrypter`] from the crypto
//! provider the handshake used, and sealed with the same AEAD (ring's AES-GCM where the
//! provider chose it, aws-lc's otherwise) keyed from the traffic secrets rustls extracted.
//!
//! After the handshake a TLS 1.3 peer may send application data, alerts and KeyUpdate, and a
//! server also NewSessionTicket:
//! - application data is lent to the reader ([`AsyncBufRead`]) or copied out ([`AsyncRead`]);
//! - `close_notify` ends the stream (EOF), `user_canceled` is ignored, any other alert fails it;
//! - a KeyUpdate switches the receive key; when it requests an update, ours is sent (and our
//!   key switched) before our next application data. At most 32 KeyUpdates in a row without
//!   data between them are accepted, as rustls does;
//! - a client hands each NewSessionTicket to rustls (its session store); several may share a
//!   record. A handshake message split across records is refused (no TLS stack we talk to
//!   sends one after the handshake);
//! - anything else (another record type, another handshake message, a record that fails
//!   authentication, an oversized or truncated record, EOF without `close_notify`) fails the
//!   stream, with a fatal alert to the peer where TLS calls for one.
//!
//! Our own sending switches keys before the suite's confidentiality limit. TLS 1.3 only:
//! [`super::TlsProvider::accept_in_place`] and [`super::TlsProvider::connect_in_place`] refuse
//! when TLS 1.2 is enabled.

use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::cipher::{InboundOpaqueMessage, MessageDecrypter};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{
    AlertDescription, CommonState, ConnectionTrafficSecrets, ContentType, ExtractedSecrets,
    ProtocolVersion, SupportedCipherSuite, Tls13CipherSuite,
};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::error::TlsError;

/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// Largest plaintext of one record (2^14).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest protected record body TLS 1.3 allows (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// AEAD tag of every TLS 1.3 suite.
const TAG: usize = 16;
/// After a record's plaintext: the inner content type, then the tag.
const TRAILER: usize = 1 + TAG;
/// Plaintext of one full record as we send it: four such records (65,480 bytes) fit one
/// 64 KiB TCP segment on loopback (MSS 65,483 with timestamps), so a `send` of four full
/// records is one segment. Four of 16 KiB each (65,624 bytes) were a full segment and a
/// 141-byte one per `send`, which cost more than the bigger sends saved.
const SEND_PLAINTEXT: usize = 16348;
/// One full record as we send it.
const SLOT: usize = HEADER + SEND_PLAINTEXT + TRAILER;
/// Records lent to a writer at most at once ([`InPlaceTls::poll_lend`]).
pub const SLOTS: usize = 4;
/// Records whose plaintext [`InPlaceTls::poll_fill_bufs`] hands out at most at once.
pub const RECORDS_AT_ONCE: usize = 8;
/// Records opened ahead of the one being consumed.
const QUEUED: usize = RECORDS_AT_ONCE - 1;
/// Receive and send buffers while data flows on a forwarded (L4) stream: four records. The
/// receive buffer always has room for the largest record a peer may send.
const LARGE: usize = SLOTS * SLOT;
/// The same on an HTTP stream (its ALPN protocol is HTTP), whose messages are small: two
/// records, so busy HTTP connections hold half the memory.
const SMALL: usize = 2 * SLOT;
/// Handshake bytes buffered at most (rustls caps a handshake message at 64 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024 + HEADER + MAX_CIPHERTEXT;
/// Application data decrypted by rustls during the handshake (it arrived with the peer's
/// last flight), kept at most.
const MAX_EARLY_PLAINTEXT: usize = 64 * 1024;
/// KeyUpdates accepted in a row with no application data between them.
const MAX_KEY_UPDATES_IN_A_ROW: u32 = 32;
/// Handshake message types allowed after the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// Buffers given back by idle streams, kept per thread for the next busy one (allocating and
/// zeroing 32 or 64 KiB each time a connection wakes up would cost more than the copy it saves).
mod pool {
    use std::cell::RefCell;

    /// Receive and send buffers for a few busy connections per worker thread, per size.
    const KEEP: usize = 8;

    thread_local! {
        static FREE: RefCell<[Vec<Box<[u8]>>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
    }

    fn class(size: usize) -> Option<usize> {
        match size {
            super::SMALL => Some(0),
            super::LARGE => Some(1),
            _ => None,
        }
    }

    /// A buffer of `size` bytes ([`super::SMALL`] or [`super::LARGE`]): a kept one, or a new
    /// one.
    pub(super) fn take(size: usize) -> Box<[u8]> {
        class(size)
            .and_then(|c| FREE.try_with(|f| f.borrow_mut()[c].pop()).ok().flatten())
            .unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
    }

    /// Gives `buf` back (when it is one of ours): kept, or freed when enough are kept.
    pub(super) fn give(buf: Box<[u8]>) {
        let Some(c) = class(buf.len()) else { return };
        let _ = FREE.try_with(|f| {
            let list = &mut f.borrow_mut()[c];
            if list.len() < KEEP {
                list.push(buf);
            }
        });
    }
}

/// The side of a connection in its handshake: rustls's unbuffered server or client.
pub(crate) trait Side: Sized {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        let (s, k) = self.dangerous_into_kernel_connection()?;
        Ok((s, Kernel::Server(k)))
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        let (s, k) = self.dangerous_into_kernel_connection()?;
        Ok((s, Kernel::Client(k)))
    }
}

/// rustls's connection after the handshake: the key schedule (and a client's ticket store).
pub(crate) enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Server(k) => k.update_rx_secret(),
            Self::Client(k) => k.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Server(k) => k.update_tx_secret(),
            Self::Client(k) => k.update_tx_secret(),
        }
    }

    fn protocol_version(&self) -> ProtocolVersion {
        match self {
            Self::Server(k) => k.protocol_version(),
            Self::Client(k) => k.protocol_version(),
        }
    }

    fn negotiated_cipher_suite(&self) -> SupportedCipherSuite {
        match self {
            Self::Server(k) => k.negotiated_cipher_suite(),
            Self::Client(k) => k.negotiated_cipher_suite(),
        }
    }
}

/// A finished handshake, before its record layer is taken over.
pub(crate) struct Handshake<C> {
    conn: C,
    /// Bytes read after the handshake (the start of the first records).
    buf: Vec<u8>,
    /// Application data rustls decrypted while finishing the handshake.
    early: Vec<u8>,
    peer_closed: bool,
}

/// Drives rustls's unbuffered connection through the handshake on `io`. Bytes that arrive
/// after the peer's last handshake flight stay buffered for the record layer; nothing is lost.
pub(crate) async fn handshake<C, S>(mut conn: C, io: &mut S) -> Result<Handshake<C>, TlsError>
where
    C: Side,
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
        let status = conn.process(&mut buf[..used]);
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
                        "more than 64 KiB of application data arrived with the peer's last \
                         handshake flight",
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
            Step::Writable if conn.common().is_handshaking() => Step::Read,
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
async fn send_alerts<C, S>(conn: &mut C, buf: &mut [u8], out: &mut Vec<u8>, io: &mut S)
where
    C: Side,
    S: AsyncWrite + Unpin,
{
    for _ in 0..4 {
        let status = conn.process(buf);
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
fn encode<D>(enc: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> Result<(), TlsError> {
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

impl<C: Side> Handshake<C> {
    /// The connection's state: peer certificates, negotiated ALPN.
    pub(crate) fn common(&self) -> &CommonState {
        self.conn.common()
    }

    /// Takes over the record layer: the stream reads and writes on `io`.
    pub(crate) fn into_stream<S>(self, io: S) -> Result<InPlaceTls<S>, TlsError> {
        let http = super::alpn::is_http(self.conn.common().alpn_protocol());
        let (secrets, kernel) = self.conn.into_kernel().map_err(TlsError::from_rustls)?;
        if kernel.protocol_version() != ProtocolVersion::TLSv1_3 {
            return Err(not_tls13());
        }
        let SupportedCipherSuite::Tls13(suite) = kernel.negotiated_cipher_suite() else {
            return Err(not_tls13());
        };
        let rx = decrypter(suite, secrets.rx.1).map_err(TlsError::from_rustls)?;
        let tx = Sealer::new(secrets.tx.1).map_err(TlsError::from_rustls)?;
        let size = if http { SMALL } else { LARGE };
        let (rend, rbuf) = match self.buf.len() {
            0 => (0, Box::default()),
            n if n <= size => {
                let mut b = pool::take(size);
                b[..n].copy_from_slice(&self.buf);
                (n, b)
            }
            // More than a buffer came with the peer's last flight: keep it all.
            n => {
                let mut b = self.buf;
                b.resize(n + HEADER + MAX_CIPHERTEXT, 0);
                (n, b.into_boxed_slice())
            }
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
            queued: Default::default(),
            queued_len: 0,
            deferred: None,
            early: self.early,
            early_pos: 0,
            eof: false,
            peer_closed: self.peer_closed,
            key_updates_in_a_row: 0,
            key_update_due: false,
            key_updates: (0, 0),
            tickets: 0,
            tbuf: Box::default(),
            tstart: 0,
            tend: 0,
            size,
            lent: 0,
            close_sent: false,
            failed: None,
        })
    }
}

/// Whether our next `records` records must go under a new key: the peer asked for an update,
/// or the record after them (the KeyUpdate itself is one) would reach the suite's
/// confidentiality limit.
fn key_update_needed(
    requested: bool,
    tx_seq: u64,
    records: u64,
    confidentiality_limit: u64,
) -> bool {
    requested || tx_seq.saturating_add(records) >= confidentiality_limit
}

fn not_tls13() -> TlsError {
    TlsError::Handshake(rustls::Error::General(
        "in-place records need TLS 1.3, and TLS 1.2 was negotiated".into(),
    ))
}

fn decrypter(
    suite: &'static Tls13CipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, rustls::Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Ok(suite.aead_alg.decrypter(key, iv))
        }
        _ => Err(no_record_layer()),
    }
}

fn no_record_layer() -> rustls::Error {
    rustls::Error::General(
        "traffic secrets of a cipher suite without a TLS 1.3 record layer".into(),
    )
}

/// Seals our records in place: the suite's AEAD keyed with a send traffic key.
struct Sealer {
    key: SealKey,
    iv: [u8; 12],
}

enum SealKey {
    /// Boxed: ring keeps its expanded key schedule inline (544 bytes).
    Ring(Box<ring::aead::LessSafeKey>),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

impl Sealer {
    /// AES-GCM from ring where the crypto provider uses ring's (it is faster on this CPU),
    /// everything else from aws-lc.
    fn new(secrets: ConnectionTrafficSecrets) -> Result<Self, rustls::Error> {
        use aws_lc_rs::aead as aws;
        use ring::aead as rg;
        fn bad_key<E>(_: E) -> rustls::Error {
            rustls::Error::General("a traffic key of the wrong length".into())
        }
        let ring_aes = super::config::ring_aes_gcm_is_faster();
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } if ring_aes => (
                SealKey::Ring(Box::new(rg::LessSafeKey::new(
                    rg::UnboundKey::new(&rg::AES_128_GCM, key.as_ref()).map_err(bad_key)?,
                ))),
                iv,
            ),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } if ring_aes => (
                SealKey::Ring(Box::new(rg::LessSafeKey::new(
                    rg::UnboundKey::new(&rg::AES_256_GCM, key.as_ref()).map_err(bad_key)?,
                ))),
                iv,
            ),
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (
                SealKey::AwsLc(aws::LessSafeKey::new(
                    aws::UnboundKey::new(&aws::AES_128_GCM, key.as_ref()).map_err(bad_key)?,
                )),
                iv,
            ),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (
                SealKey::AwsLc(aws::LessSafeKey::new(
                    aws::UnboundKey::new(&aws::AES_256_GCM, key.as_ref()).map_err(bad_key)?,
                )),
                iv,
            ),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (
                SealKey::AwsLc(aws::LessSafeKey::new(
                    aws::UnboundKey::new(&aws::CHACHA20_POLY1305, key.as_ref()).map_err(bad_key)?,
                )),
                iv,
            ),
            _ => return Err(no_record_layer()),
        };
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| rustls::Error::General("a traffic IV of the wrong length".into()))?;
        Ok(Self { key, iv })
    }

    /// Seals record `seq` in `rec`: its plaintext is `rec[HEADER..HEADER + len]`, and `rec`
    /// has room for the trailer after it. Writes the header, the inner content type and the
    /// tag; returns the record's length.
    fn seal(&self, seq: u64, typ: ContentType, rec: &mut [u8], len: usize) -> Result<usize, Fault> {
        let body = len + TRAILER;
        let total = HEADER + body;
        let Some(rec) = rec.get_mut(..total) else {
            return Err(Fault::silent(
                io::ErrorKind::InvalidInput,
                "no room for a TLS record's trailer",
            ));
        };
        let wire_len = u16::try_from(body).map_err(|_| {
            Fault::silent(
                io::ErrorKind::InvalidInput,
                "a TLS record longer than 64 KiB",
            )
        })?;
        let [hi, lo] = wire_len.to_be_bytes();
        let header = [u8::from(ContentType::ApplicationData), 3, 3, hi, lo];
        rec[..HEADER].copy_from_slice(&header);
        rec[HEADER + len] = u8::from(typ);
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let (inner, tag_out) = rec[HEADER..].split_at_mut(len + 1);
        let failed = || {
            Fault::alert(
                AlertDescription::InternalError,
                "sealing a TLS record failed",
            )
        };
        match &self.key {
            SealKey::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(header),
                        inner,
                    )
                    .map_err(|_| failed())?;
                tag_out.copy_from_slice(tag.as_ref());
            }
            SealKey::AwsLc(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                        aws_lc_rs::aead::Aad::from(header),
                        inner,
                    )
                    .map_err(|_| failed())?;
                tag_out.copy_from_slice(tag.as_ref());
            }
        }
        Ok(total)
    }
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

/// The plaintext slots of the next records, lent to a writer by [`InPlaceTls::poll_lend`]:
/// fill them in order (a vectored read does), then [`InPlaceTls::commit`] the bytes written.
pub struct SendSlots<'a> {
    slots: [IoSliceMut<'a>; SLOTS],
    count: usize,
}

impl<'a> SendSlots<'a> {
    /// The slots, each up to 16 KiB (one record's plaintext).
    pub fn as_mut_slices(&mut self) -> &mut [IoSliceMut<'a>] {
        &mut self.slots[..self.count]
    }

    /// Bytes the slots hold in all.
    pub fn capacity(&self) -> usize {
        self.slots[..self.count].iter().map(|s| s.len()).sum()
    }
}

/// A TLS 1.3 stream whose records are opened and sealed in place (see the module docs).
pub struct InPlaceTls<S> {
    io: S,
    kernel: Kernel,
    suite: &'static Tls13CipherSuite,
    rx: Box<dyn MessageDecrypter>,
    rx_seq: u64,
    tx: Sealer,
    tx_seq: u64,
    /// Receive buffer: held while data flows, empty (no memory) while idle.
    rbuf: Box<[u8]>,
    /// `rbuf[rstart..rend]` is ciphertext not yet decrypted.
    rstart: usize,
    rend: usize,
    /// Decrypted application data inside `rbuf` not yet consumed.
    plain: Range<usize>,
    /// Application data of records opened after `plain`'s, in order, not yet consumed
    /// (`queued[..queued_len]`; only [`InPlaceTls::poll_fill_bufs`] opens them ahead).
    queued: [Range<usize>; QUEUED],
    queued_len: usize,
    /// A record that failed to open after others were opened ahead: reported once their
    /// plaintext is consumed.
    deferred: Option<Fault>,
    early: Vec<u8>,
    early_pos: usize,
    eof: bool,
    peer_closed: bool,
    key_updates_in_a_row: u32,
    key_update_due: bool,
    /// KeyUpdates received and sent.
    key_updates: (u64, u64),
    /// NewSessionTickets received (and given to rustls's session store).
    tickets: u64,
    /// Send buffer: `tbuf[tstart..tend]` are sealed records not yet written. Held while data
    /// flows, empty while idle.
    tbuf: Box<[u8]>,
    tstart: usize,
    tend: usize,
    /// Size of the receive and send buffers while data flows ([`SMALL`] or [`LARGE`]).
    size: usize,
    /// Slots lent by the last [`Self::poll_lend`] (0: none).
    lent: usize,
    close_sent: bool,
    failed: Option<Fault>,
}

impl<S> std::fmt::Debug for InPlaceTls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceTls")
            .field("suite", &self.suite.common.suite)
            .field("client", &matches!(self.kernel, Kernel::Client(_)))
            .field("rx_seq", &self.rx_seq)
            .field("tx_seq", &self.tx_seq)
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<S> Drop for InPlaceTls<S> {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.rbuf));
        pool::give(std::mem::take(&mut self.tbuf));
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

    /// NewSessionTickets received from the server so far (a client's; 0 on a server).
    pub fn tickets_received(&self) -> u64 {
        self.tickets
    }

    /// Consumes `amt` bytes of opened application data, across records.
    fn consume_plain(&mut self, mut amt: usize) {
        loop {
            let n = amt.min(self.plain.len());
            self.plain.start += n;
            amt -= n;
            if !self.plain.is_empty() || self.queued_len == 0 {
                return;
            }
            self.plain = self.queued[0].clone();
            self.queued.rotate_left(1);
            self.queued_len -= 1;
        }
    }

    /// Opens the records already received behind the current one, as many as are complete
    /// and fit the queue; reads nothing. A record that fails to open is reported after the
    /// ones before it are consumed.
    fn open_ahead(&mut self) {
        while !self.plain.is_empty()
            && self.queued_len < QUEUED
            && self.deferred.is_none()
            && self.failed.is_none()
            && !self.peer_closed
        {
            match self.next_record() {
                Ok(true) => {}
                Ok(false) => return,
                Err(fault) => self.deferred = Some(fault),
            }
        }
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
                if self.plain.is_empty() {
                    self.plain = range;
                } else if !range.is_empty() {
                    self.queued[self.queued_len] = range;
                    self.queued_len += 1;
                }
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

    /// The post-handshake messages of one record: KeyUpdate (last in its record, as a key
    /// change ends the record it is in) and, from a server, NewSessionTicket.
    fn on_handshake(&mut self, range: Range<usize>) -> Result<(), Fault> {
        if range.is_empty() {
            return Err(Fault::alert(
                AlertDescription::UnexpectedMessage,
                "the peer sent an empty handshake record",
            ));
        }
        let mut at = range.start;
        while at < range.end {
            let msg = &self.rbuf[at..range.end];
            let len = match msg {
                [_, a, b, c, ..] => usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c),
                _ => usize::MAX,
            };
            if msg.len() < 4 || msg.len() - 4 < len {
                return Err(Fault::alert(
                    AlertDescription::UnexpectedMessage,
                    "the peer split a post-handshake message across TLS records (not accepted)",
                ));
            }
            let typ = msg[0];
            let body = at + 4..at + 4 + len;
            at = body.end;
            match typ {
                KEY_UPDATE => {
                    let request = match (&self.rbuf[body], at == range.end) {
                        (&[request @ (0 | 1)], true) => request == 1,
                        _ => {
                            return Err(Fault::alert(
                                AlertDescription::DecodeError,
                                "the peer sent a malformed KeyUpdate, or one not last in its \
                                 record",
                            ));
                        }
                    };
                    self.on_key_update(request)?;
                }
                NEW_SESSION_TICKET => {
                    let Kernel::Client(kernel) = &mut self.kernel else {
                        return Err(Fault::alert(
                            AlertDescription::UnexpectedMessage,
                            "a client sent a NewSessionTicket",
                        ));
                    };
                    kernel
                        .handle_new_session_ticket(&self.rbuf[body])
                        .map_err(|e| Fault::from_rustls("a NewSessionTicket from the server", e))?;
                    self.tickets += 1;
                }
                typ => {
                    return Err(Fault::alert(
                        AlertDescription::UnexpectedMessage,
                        format!(
                            "the peer sent handshake message type {typ} after the handshake \
                             (only KeyUpdate, and NewSessionTicket from a server, may come)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn on_key_update(&mut self, request: bool) -> Result<(), Fault> {
        self.key_updates_in_a_row += 1;
        if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(Fault::alert(
                AlertDescription::UnexpectedMessage,
                "the peer sent more than 32 KeyUpdates without data between them",
            ));
        }
        let (seq, secrets) = self
            .kernel
            .update_rx()
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

    /// Free room at the end of the send buffer (taking a buffer when it has none).
    fn send_room(&mut self) -> usize {
        if self.tstart == self.tend {
            self.tstart = 0;
            self.tend = 0;
        }
        if self.tbuf.is_empty() {
            self.tbuf = pool::take(self.size);
        }
        self.tbuf.len() - self.tend
    }

    /// Seals the record whose plaintext (`len` bytes) is already in place at the end of the
    /// send buffer.
    fn seal_next(&mut self, typ: ContentType, len: usize) -> Result<(), Fault> {
        let n = self
            .tx
            .seal(self.tx_seq, typ, &mut self.tbuf[self.tend..], len)?;
        self.tx_seq += 1;
        self.tend += n;
        Ok(())
    }

    /// Seals one record of `typ` carrying `payload` into the send buffer. `Ok(false)`: no room
    /// (write what is queued first).
    fn queue_record(&mut self, typ: ContentType, payload: &[u8]) -> Result<bool, Fault> {
        if self.send_room() < HEADER + payload.len() + TRAILER {
            return Ok(false);
        }
        let at = self.tend + HEADER;
        self.tbuf[at..at + payload.len()].copy_from_slice(payload);
        self.seal_next(typ, payload.len())?;
        Ok(true)
    }

    /// Before sending `records` records: sends our KeyUpdate and switches the send key when
    /// the peer asked for it or the suite's confidentiality limit is near. `Ok(false)`: no
    /// room for the KeyUpdate (write what is queued first).
    fn maybe_update_tx_key(&mut self, records: u64) -> Result<bool, Fault> {
        if !key_update_needed(
            self.key_update_due,
            self.tx_seq,
            records,
            self.suite.common.confidentiality_limit,
        ) {
            return Ok(true);
        }
        if !self.queue_record(ContentType::Handshake, &[KEY_UPDATE, 0, 0, 1, 0])? {
            return Ok(false);
        }
        let (seq, secrets) = self
            .kernel
            .update_tx()
            .map_err(|e| Fault::from_rustls("updating the send key", e))?;
        self.tx =
            Sealer::new(secrets).map_err(|e| Fault::from_rustls("updating the send key", e))?;
        self.tx_seq = seq;
        self.key_update_due = false;
        self.key_updates.1 += 1;
        Ok(true)
    }

    /// Refuses to send after a failure or after our `close_notify`.
    fn check_writable(&self) -> io::Result<()> {
        if let Some(f) = &self.failed {
            return Err(f.to_io());
        }
        if self.close_sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS stream was shut down",
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> InPlaceTls<S> {
    /// Records the failure; tells the peer with an alert when TLS calls for one and there is
    /// room for it (best effort).
    fn fail(&mut self, cx: &mut Context<'_>, fault: Fault) {
        if let Some(alert) = fault.alert
            && !self.close_sent
        {
            self.close_sent = true;
            if let Ok(true) = self.queue_record(ContentType::Alert, &[2, u8::from(alert)]) {
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
            self.rbuf = pool::take(self.size);
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
                    pool::give(std::mem::take(&mut self.rbuf));
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

    /// Writes the sealed records until none is left; then gives the send buffer back.
    /// Seals as much of `bufs` as the send buffer has room for into records of up to
    /// 16 KiB, then starts writing them; when there is no room, writes earlier records first.
    fn poll_write_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_writable()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            let taken = match self.queue_gathered(bufs, total) {
                Ok(n) => n,
                Err(fault) => {
                    let e = fault.to_io();
                    self.fail(cx, fault);
                    return Poll::Ready(Err(e));
                }
            };
            if taken > 0 {
                // Start writing; what the socket does not take now waits for the next call.
                if let Poll::Ready(Err(e)) = self.poll_flush_queue(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(taken));
            }
            ready!(self.poll_flush_queue(cx))?;
        }
    }

    /// Copies `bufs` (`total` bytes) into as many whole records as the send buffer has room
    /// for and seals them; returns the bytes taken.
    fn queue_gathered(&mut self, bufs: &[IoSlice<'_>], total: usize) -> Result<usize, Fault> {
        let mut slices = bufs.iter().map(|b| &**b);
        let mut cur: &[u8] = &[];
        let mut taken = 0;
        while taken < total {
            let len = (total - taken).min(SEND_PLAINTEXT);
            if !self.maybe_update_tx_key(1)? || self.send_room() < HEADER + len + TRAILER {
                break;
            }
            let at = self.tend + HEADER;
            let mut filled = 0;
            while filled < len {
                while cur.is_empty() {
                    // `total` counts these bytes, so a slice with some is left.
                    cur = slices.next().expect("a slice with the bytes counted");
                }
                let n = cur.len().min(len - filled);
                self.tbuf[at + filled..at + filled + n].copy_from_slice(&cur[..n]);
                cur = &cur[n..];
                filled += n;
            }
            self.seal_next(ContentType::ApplicationData, len)?;
            taken += len;
        }
        Ok(taken)
    }

    fn poll_flush_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tstart < self.tend {
            let n =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.tbuf[self.tstart..self.tend]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tstart += n;
        }
        self.tstart = 0;
        self.tend = 0;
        self.lent = 0;
        pool::give(std::mem::take(&mut self.tbuf));
        Poll::Ready(Ok(()))
    }

    /// Lends the plaintext slots of the next records (up to four of 16,348 bytes), once earlier
    /// records are written far enough to make room, and our KeyUpdate is queued when one is
    /// due. Fill them in order, then [`Self::commit`] the bytes written; until then nothing
    /// else may be written.
    pub fn poll_lend(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<SendSlots<'_>>> {
        self.check_writable()?;
        loop {
            match self.maybe_update_tx_key((self.size / SLOT) as u64) {
                Ok(true) => {}
                Ok(false) => {
                    ready!(self.poll_flush_queue(cx))?;
                    continue;
                }
                Err(fault) => {
                    let e = fault.to_io();
                    self.fail(cx, fault);
                    return Poll::Ready(Err(e));
                }
            }
            if self.send_room() >= SLOT {
                break;
            }
            ready!(self.poll_flush_queue(cx))?;
        }
        let mut chunks = self.tbuf[self.tend..].chunks_exact_mut(SLOT);
        let slots: [IoSliceMut<'_>; SLOTS] = std::array::from_fn(|_| match chunks.next() {
            Some(c) => IoSliceMut::new(&mut c[HEADER..HEADER + SEND_PLAINTEXT]),
            None => IoSliceMut::new(&mut []),
        });
        let count = slots.iter().filter(|s| !s.is_empty()).count();
        self.lent = count;
        Poll::Ready(Ok(SendSlots { slots, count }))
    }

    /// The slots of the last [`Self::poll_lend`] were not used (the source had nothing):
    /// gives the send buffer back when it holds no record, so an idle stream holds none.
    pub fn unlend(&mut self) {
        self.lent = 0;
        if self.tstart == self.tend {
            self.tstart = 0;
            self.tend = 0;
            pool::give(std::mem::take(&mut self.tbuf));
        }
    }

    /// Seals the first `n` bytes written into the slots of the last [`Self::poll_lend`] as
    /// records (each slot but the last filled one full). They are written by the next
    /// [`Self::poll_lend`], [`AsyncWrite::poll_flush`] or shutdown.
    pub fn commit(&mut self, n: usize) -> io::Result<()> {
        if n > self.lent * SEND_PLAINTEXT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "committed {n} bytes into {} lent TLS record slots",
                    self.lent
                ),
            ));
        }
        self.lent = 0;
        let mut left = n;
        while left > 0 {
            let len = left.min(SEND_PLAINTEXT);
            left -= len;
            if let Err(fault) = self.seal_next(ContentType::ApplicationData, len) {
                let e = fault.to_io();
                self.failed = Some(fault);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Like [`AsyncBufRead::poll_fill_buf`], but hands out the plaintext of every record
    /// already received (up to [`RECORDS_AT_ONCE`], each opened in place) as `bufs[..n]`, so
    /// a copy loop writes them with one vectored write. `Ok(0)` at the end of the stream.
    /// [`AsyncBufRead::consume`] takes bytes across them, in order.
    pub fn poll_fill_bufs<'a>(
        &'a mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>; RECORDS_AT_ONCE],
    ) -> Poll<io::Result<usize>> {
        let first = ready!(Pin::new(&mut *self).poll_fill_buf(cx))?.len();
        if first == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.early_pos < self.early.len() {
            bufs[0] = IoSlice::new(&self.early[self.early_pos..]);
            return Poll::Ready(Ok(1));
        }
        self.open_ahead();
        let this: &'a Self = self;
        bufs[0] = IoSlice::new(&this.rbuf[this.plain.clone()]);
        for (b, r) in bufs[1..].iter_mut().zip(&this.queued[..this.queued_len]) {
            *b = IoSlice::new(&this.rbuf[r.clone()]);
        }
        Poll::Ready(Ok(1 + this.queued_len))
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
            if let Some(fault) = this.deferred.take() {
                this.fail(cx, fault);
                continue;
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
            this.consume_plain(amt);
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
    /// Seals as much of `buf` as the send buffer has room for (one copy into it), writing
    /// earlier records first when it has none.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_gather(cx, &[IoSlice::new(buf)])
    }

    /// Like `poll_write`, gathering the slices into records (an HTTP head and its body
    /// chunks go out in one record, copied once).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_queue(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.close_sent && this.failed.is_none() {
            let close_notify = [1, u8::from(AlertDescription::CloseNotify)];
            match this.queue_record(ContentType::Alert, &close_notify) {
                Ok(true) => this.close_sent = true,
                Ok(false) => ready!(this.poll_flush_queue(cx))?,
                Err(fault) => {
                    let e = fault.to_io();
                    this.failed = Some(fault);
                    return Poll::Ready(Err(e));
                }
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
        assert!(!key_update_needed(false, 0, 1, limit));
        assert!(!key_update_needed(false, limit - 2, 1, limit));
        // The KeyUpdate is sent under the old key as record `limit - 1`, the last one allowed.
        assert!(key_update_needed(false, limit - 1, 1, limit));
        // Four records lent at once: the update comes before them when the one after them
        // would reach the limit.
        assert!(!key_update_needed(false, limit - 5, 4, limit));
        assert!(key_update_needed(false, limit - 4, 4, limit));
        assert!(key_update_needed(false, u64::MAX, 1, limit));
        assert!(key_update_needed(true, 0, 1, limit));
    }

    /// Our sealing is TLS 1.3's record protection: rustls's own decrypter opens what we seal,
    /// with every suite and both AEAD libraries, and refuses it under the wrong sequence.
    #[test]
    fn sealed_records_open_with_rustls() {
        use rustls::crypto::cipher::{AeadKey, Iv};
        // (rustls builds only 32-byte keys from outside; AES-128 is covered by the handshake
        // tests, which negotiate it.)
        let suites = [
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        for suite in suites {
            let suite = suite.tls13().expect("a TLS 1.3 suite");
            let secrets = || {
                let (key, iv) = (AeadKey::from([7u8; 32]), Iv::new([9u8; 12]));
                match suite.common.suite {
                    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => {
                        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
                    }
                    _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
                }
            };
            let sealer = Sealer::new(secrets()).unwrap();
            let mut rec = vec![0u8; HEADER + 100 + TRAILER];
            rec[HEADER..HEADER + 100].fill(0x5a);
            let n = sealer
                .seal(41, ContentType::ApplicationData, &mut rec, 100)
                .unwrap_or_else(|f| panic!("{}", f.message));
            assert_eq!(n, rec.len());
            assert_eq!(&rec[..HEADER], &[23, 3, 3, 0, 117]);
            let open = |seq: u64, rec: &[u8]| {
                let mut body = rec[HEADER..].to_vec();
                let mut d = decrypter(suite, secrets()).unwrap();
                let msg = InboundOpaqueMessage::new(
                    ContentType::ApplicationData,
                    ProtocolVersion::TLSv1_2,
                    &mut body,
                );
                d.decrypt(msg, seq).map(|p| (p.typ, p.payload.to_vec()))
            };
            let (typ, payload) = open(41, &rec).expect("rustls opens our record");
            assert_eq!(typ, ContentType::ApplicationData);
            assert_eq!(payload, vec![0x5a; 100]);
            assert!(
                open(42, &rec).is_err(),
                "another sequence number must not open it"
            );
        }
    }
}
