//! The in-place TLS 1.3 server stream ([`TlsProvider::accept_in_place`]) against rustls's own
//! client (what a Warden client sidecar runs): data both ways with KeyUpdates and half-close,
//! data that arrives with the client's Finished, session resumption, and every way a client
//! can break the record layer, each failing the stream with its own error (and an alert).

mod tlsutil;

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::HandshakeKind;
use tlsutil::*;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use warden_identity::tls::{
    Alpn, ClientTlsStream, InPlaceTls, RECORDS_AT_ONCE, TlsError, TlsProvider, TlsSettings, alpn,
};

type Pair<S> = (InPlaceTls<S>, ClientTlsStream<TcpStream>);

/// A mesh with a server and a client identity; handshakes one in-place connection.
async fn pair_over<S, F>(mesh: &Mesh, wrap: F) -> Pair<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(TcpStream) -> S,
{
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(
        server.accept_in_place(wrap(s)),
        client.connect(c, std::slice::from_ref(&sid), Alpn::Tcp)
    );
    let (ss, peer, negotiated) = a.expect("in-place accept");
    let (cs, server_id) = b.expect("connect");
    assert_eq!(peer, cid);
    assert_eq!(server_id, sid);
    assert_eq!(negotiated, Some(alpn::ISTIO_PEER_EXCHANGE));
    (ss, cs)
}

async fn pair(mesh: &Mesh) -> Pair<TcpStream> {
    pair_over(mesh, |s| s).await
}

/// The error a read ends with, within 5 s.
async fn read_error<R: AsyncRead + Unpin>(r: &mut R) -> io::Error {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf))
            .await
            .expect("the stream neither failed nor ended")
        {
            Ok(0) => panic!("clean EOF where an error was expected"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

#[tokio::test]
async fn bulk_both_ways_across_key_updates_with_half_close() {
    let mesh = Mesh::new();
    let (mut ss, mut cs) = pair(&mesh).await;
    assert_eq!(
        ss.cipher_suite().common.suite,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    let up = pattern(6 << 20, 7);
    let down = pattern(3 << 20, 11);
    let sent = up.clone();
    let client = tokio::spawn(async move {
        // Three KeyUpdates (each asks the server to update too) between the chunks.
        for (i, chunk) in sent.chunks(2 << 20).enumerate() {
            cs.write_all(chunk).await.unwrap();
            if i < 3 {
                cs.get_mut().1.refresh_traffic_keys().unwrap();
            }
        }
        cs.shutdown().await.unwrap();
        // The client's half is closed; the server's data still flows.
        let got = read_to_end(&mut cs).await.unwrap();
        (cs, got)
    });
    let got = read_to_end(&mut ss).await.unwrap();
    assert_eq!(got.len(), up.len());
    assert!(got == up, "the server read other bytes than were sent");
    ss.write_all(&down).await.unwrap();
    ss.shutdown().await.unwrap();
    let (_cs, back) = client.await.unwrap();
    assert_eq!(back.len(), down.len());
    assert!(back == down, "the client read other bytes than were sent");
}

#[tokio::test]
async fn each_requested_key_update_is_answered_before_the_next_data() {
    // A KeyUpdate that asks for ours: our next record must be under our new key, which the
    // client can only read if the server's KeyUpdate went first.
    let mesh = Mesh::new();
    let (mut ss, mut cs) = pair(&mesh).await;
    for round in 0..5u8 {
        cs.write_all(&[round; 100]).await.unwrap();
        cs.get_mut().1.refresh_traffic_keys().unwrap();
        cs.write_all(&[round; 100]).await.unwrap();
        cs.flush().await.unwrap();
        let mut buf = [0u8; 200];
        ss.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [round; 200]);
        ss.write_all(&[round + 100; 50]).await.unwrap();
        ss.flush().await.unwrap();
        let mut back = [0u8; 50];
        cs.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [round + 100; 50]);
        assert_eq!(
            ss.key_updates(),
            (u64::from(round) + 1, u64::from(round) + 1)
        );
    }
}

/// Delays the second read by 150 ms: the client's Finished and its first data then arrive in
/// one read.
struct SlowSecondRead {
    inner: TcpStream,
    reads: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for SlowSecondRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.reads == 1 {
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(150))));
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads += 1;
        }
        r
    }
}

impl AsyncWrite for SlowSecondRead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn data_that_arrives_with_the_clients_finished_is_not_lost() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (c, s) = tcp_pair().await;
    let slow = SlowSecondRead {
        inner: s,
        reads: 0,
        sleep: None,
    };
    // A small record (decrypted by rustls while it finishes the handshake), then records the
    // handshake buffer holds only part of.
    let first = pattern(40_000, 3);
    let sent = first.clone();
    let client_side = async move {
        let (mut cs, _) = client
            .connect(c, std::slice::from_ref(&sid), Alpn::Tcp)
            .await
            .unwrap();
        cs.write_all(&sent[..1000]).await.unwrap();
        cs.flush().await.unwrap();
        cs.write_all(&sent[1000..]).await.unwrap();
        cs.flush().await.unwrap();
        cs
    };
    let (a, mut cs) = tokio::join!(server.accept_in_place(slow), client_side);
    let (mut ss, peer, _) = a.unwrap();
    assert_eq!(peer, cid);
    let mut got = vec![0u8; first.len()];
    tokio::time::timeout(Duration::from_secs(5), ss.read_exact(&mut got))
        .await
        .expect("data sent right after the handshake was lost")
        .unwrap();
    assert!(got == first);
    // And the stream goes on after the early data.
    cs.write_all(b"more").await.unwrap();
    cs.flush().await.unwrap();
    let mut more = [0u8; 4];
    ss.read_exact(&mut more).await.unwrap();
    assert_eq!(&more, b"more");
}

#[tokio::test]
async fn a_second_connection_resumes_the_session() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (c, s) = tcp_pair().await;
        let (a, b) = tokio::join!(
            server.accept_in_place(s),
            client.connect(c, std::slice::from_ref(&sid), Alpn::Tcp)
        );
        let (mut ss, peer, _) = a.unwrap();
        let (mut cs, _) = b.unwrap();
        assert_eq!(peer, cid, "a resumed session keeps the client's identity");
        ping_pong(&mut cs, &mut ss).await;
        kinds.push(cs.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}

#[tokio::test]
async fn a_forged_record_fails_the_stream_and_the_client_gets_bad_record_mac() {
    let mesh = Mesh::new();
    let (mut ss, mut cs) = pair(&mesh).await;
    cs.write_all(b"genuine").await.unwrap();
    cs.flush().await.unwrap();
    let mut buf = [0u8; 7];
    ss.read_exact(&mut buf).await.unwrap();
    // An application_data record of the right shape that was not sealed with the key.
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    forged.extend_from_slice(&[0xa5; 0x40]);
    cs.get_mut().0.write_all(&forged).await.unwrap();
    let e = read_error(&mut ss).await;
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("a TLS record from the peer"), "{e}");
    // The stream stays failed, and the client is told why.
    assert!(ss.read(&mut buf).await.is_err());
    assert!(ss.write_all(b"no").await.is_err());
    let e = read_error(&mut cs).await;
    assert!(e.to_string().contains("BadRecordMac"), "{e}");
}

/// Records that arrived together are handed out together (one vectored write for a copy
/// loop), consumed across their boundaries, and a bad record behind them fails the stream
/// only once the good ones before it are consumed.
#[tokio::test]
async fn records_received_together_are_lent_together_and_a_bad_one_after_them_waits() {
    let mesh = Mesh::new();
    let (mut ss, mut cs) = pair(&mesh).await;
    for part in [&b"one"[..], b"two", b"three"] {
        cs.write_all(part).await.unwrap();
        cs.flush().await.unwrap();
    }
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    forged.extend_from_slice(&[0xa5; 0x40]);
    cs.get_mut().0.write_all(&forged).await.unwrap();
    // Three records of 5 + n + 1 + 16 bytes and the forged one, all in the server's socket.
    let total = 25 + 25 + 27 + forged.len();
    let mut peek = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while ss.get_ref().peek(&mut peek).await.unwrap() < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the records did not arrive");

    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut bufs = [IoSlice::new(&[]); RECORDS_AT_ONCE];
    let Poll::Ready(Ok(n)) = ss.poll_fill_bufs(&mut cx, &mut bufs) else {
        panic!("the received records were not handed out");
    };
    let got: Vec<&[u8]> = bufs[..n].iter().map(|b| &**b).collect();
    assert_eq!(got, [&b"one"[..], b"two", b"three"]);
    // Across a record boundary.
    Pin::new(&mut ss).consume(5);
    let mut bufs = [IoSlice::new(&[]); RECORDS_AT_ONCE];
    let Poll::Ready(Ok(n)) = ss.poll_fill_bufs(&mut cx, &mut bufs) else {
        panic!("the rest was not handed out");
    };
    let got: Vec<&[u8]> = bufs[..n].iter().map(|b| &**b).collect();
    assert_eq!(got, [&b"o"[..], b"three"]);
    Pin::new(&mut ss).consume(6);
    // Only now the forged record fails the stream, and the client is told why.
    let e = read_error(&mut ss).await;
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("a TLS record from the peer"), "{e}");
    let e = read_error(&mut cs).await;
    assert!(e.to_string().contains("BadRecordMac"), "{e}");
}

#[tokio::test]
async fn records_of_another_type_or_oversized_are_refused() {
    let mesh = Mesh::new();
    for (raw, want) in [
        // A plaintext handshake record after the handshake.
        (
            vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00],
            "TLS record of type 22 after the handshake",
        ),
        // A change_cipher_spec record after the handshake.
        (
            vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01],
            "TLS record of type 20 after the handshake",
        ),
        // A length over 2^14 + 256.
        (
            vec![0x17, 0x03, 0x03, 0x41, 0x01],
            "TLS record of 16641 bytes (at most 16640)",
        ),
    ] {
        let (mut ss, mut cs) = pair(&mesh).await;
        cs.get_mut().0.write_all(&raw).await.unwrap();
        let e = read_error(&mut ss).await;
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[tokio::test]
async fn eof_without_close_notify_or_mid_record_is_an_error() {
    let mesh = Mesh::new();
    for partial in [&[][..], &[0x17, 0x03, 0x03, 0x00, 0x40, 0x01][..]] {
        let (mut ss, mut cs) = pair(&mesh).await;
        cs.write_all(b"data").await.unwrap();
        cs.flush().await.unwrap();
        let tcp = cs.get_mut().0;
        tcp.write_all(partial).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 4];
        ss.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"data");
        let e = read_error(&mut ss).await;
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let want = if partial.is_empty() {
            "without a TLS close_notify"
        } else {
            "in the middle of a TLS record"
        };
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[tokio::test]
async fn a_flood_of_key_updates_is_refused() {
    let mesh = Mesh::new();
    let (mut ss, mut cs) = pair(&mesh).await;
    for _ in 0..40 {
        cs.get_mut().1.refresh_traffic_keys().unwrap();
    }
    cs.flush().await.unwrap();
    let e = read_error(&mut ss).await;
    assert!(e.to_string().contains("more than 32 KeyUpdates"), "{e}");
}

#[tokio::test]
async fn without_credentials_or_with_tls12_enabled_nothing_is_accepted() {
    let mesh = Mesh::new();
    let sid = id("a", "server");
    let client = mesh.provider(&id("b", "client"));
    let bare = TlsProvider::new(TlsSettings::default()).unwrap();
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(
        bare.accept_in_place(s),
        client.connect(c, std::slice::from_ref(&sid), Alpn::Tcp)
    );
    assert!(matches!(a, Err(TlsError::NoCredentials)), "{a:?}");
    assert!(b.is_err());

    let with12 = TlsProvider::new(TlsSettings {
        allow_tls12: true,
        ..TlsSettings::default()
    })
    .unwrap();
    assert!(!with12.in_place_supported());
    let (_c, s) = tcp_pair().await;
    let e = with12.accept_in_place(s).await.unwrap_err();
    assert!(e.to_string().contains("TLS 1.2 is enabled"), "{e}");
}
