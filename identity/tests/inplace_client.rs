//! The in-place TLS 1.3 client stream ([`TlsProvider::connect_in_place`]) against rustls's own
//! server (what a Warden server sidecar runs for HTTP) and against the in-place server: records
//! sealed in lent slots and with `poll_write`, KeyUpdates both ways, the server's tickets
//! stored and used to resume, secure naming, and a server that breaks the record layer.

mod tlsutil;

use std::future::poll_fn;
use std::io;
use std::task::{Poll, ready};
use std::time::Duration;

use rustls::HandshakeKind;
use tlsutil::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::tls::{
    Alpn, InPlaceTls, SLOTS, ServerTlsStream, TlsError, TlsProvider, TlsSettings,
};

/// Sends `data` through lent record slots, filling `fill` bytes at most per lending (a short
/// fill leaves a partial record, as a short socket read does). Returns the lendings.
async fn send_lent<S>(s: &mut InPlaceTls<S>, data: &[u8], fill: usize) -> io::Result<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut off, mut lendings) = (0, 0);
    while off < data.len() {
        let n = poll_fn(|cx| {
            let mut slots = ready!(s.poll_lend(cx))?;
            assert!(slots.capacity() <= SLOTS * 16 * 1024);
            let want = fill.min(data.len() - off);
            let mut n = 0;
            for slot in slots.as_mut_slices() {
                let k = slot.len().min(want - n);
                slot[..k].copy_from_slice(&data[off + n..off + n + k]);
                n += k;
                if n == want {
                    break;
                }
            }
            Poll::Ready(Ok::<_, io::Error>(n))
        })
        .await?;
        s.commit(n)?;
        off += n;
        lendings += 1;
    }
    s.flush().await?;
    Ok(lendings)
}

async fn rustls_server_pair(
    server: &TlsProvider,
    client: &TlsProvider,
    sid: &warden_identity::SpiffeId,
) -> (InPlaceTls<TcpStream>, ServerTlsStream<TcpStream>) {
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(
        server.accept(s),
        client.connect_in_place(c, std::slice::from_ref(sid), Alpn::Tcp)
    );
    let (ss, _, _) = a.expect("accept");
    let (cs, peer) = b.expect("in-place connect");
    assert_eq!(&peer, sid);
    (cs, ss)
}

#[tokio::test]
async fn bulk_through_lent_slots_and_back_across_key_updates_against_rustls() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (mut cs, mut ss) = rustls_server_pair(&server, &client, &sid).await;
    let up = pattern(6 << 20, 3);
    let down = pattern(3 << 20, 5);
    let (half, chunk) = (3 << 20, 1 << 20);
    let (u, d) = (up.clone(), down.clone());
    let srv = tokio::spawn(async move {
        let mut got = vec![0u8; half];
        ss.read_exact(&mut got).await.unwrap();
        for (i, part) in d.chunks(chunk).enumerate() {
            // A KeyUpdate that asks for the client's: it must answer before its next record
            // (counted below), and that record must still open here.
            ss.get_mut().1.refresh_traffic_keys().unwrap();
            ss.write_all(part).await.unwrap();
            ss.flush().await.unwrap();
            let mut more = vec![0u8; chunk];
            ss.read_exact(&mut more).await.unwrap();
            assert!(more == u[half + i * chunk..half + (i + 1) * chunk]);
            got.extend_from_slice(&more);
        }
        // Nothing after the client's close_notify.
        assert!(read_to_end(&mut ss).await.unwrap().is_empty());
        ss.shutdown().await.unwrap();
        got
    });
    // Whole slots first.
    let lendings = send_lent(&mut cs, &up[..half], usize::MAX).await.unwrap();
    assert!(
        lendings <= half / (SLOTS * 16 * 1024) + 2,
        "{lendings} lendings: the slots were not filled {SLOTS} records at a time"
    );
    let mut back = Vec::new();
    for i in 0..3 {
        let mut part = vec![0u8; chunk];
        cs.read_exact(&mut part).await.unwrap();
        back.extend_from_slice(&part);
        // Short fills leave partial records between full ones, as short socket reads do.
        let from = half + i * chunk;
        send_lent(&mut cs, &up[from..from + chunk], 40_000)
            .await
            .unwrap();
    }
    cs.shutdown().await.unwrap();
    assert!(read_to_end(&mut cs).await.unwrap().is_empty());
    let got = srv.await.unwrap();
    assert_eq!(got.len(), up.len());
    assert!(got == up, "the server read other bytes than were sent");
    assert!(back == down, "the client read other bytes than were sent");
    assert_eq!(
        cs.key_updates(),
        (3, 3),
        "every requested KeyUpdate answered"
    );
}

#[tokio::test]
async fn tickets_from_the_server_are_stored_and_the_next_connection_resumes() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (mut cs, mut ss) = rustls_server_pair(&server, &client, &sid).await;
        ping_pong(&mut cs, &mut ss).await;
        assert_eq!(cs.tickets_received(), 2, "the server sends two tickets");
        kinds.push(ss.get_ref().1.handshake_kind());
    }
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}

#[tokio::test]
async fn both_sides_in_place_with_lent_slots_and_half_close() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(
        server.accept_in_place(s),
        client.connect_in_place(c, std::slice::from_ref(&sid), Alpn::Tcp)
    );
    let (mut ss, peer, _) = a.expect("in-place accept");
    let (mut cs, _) = b.expect("in-place connect");
    assert_eq!(peer, cid);
    let up = pattern(5 << 20, 9);
    let down = pattern(2 << 20, 1);
    let (u, d) = (up.clone(), down.clone());
    let srv = tokio::spawn(async move {
        let got = read_to_end(&mut ss).await.unwrap();
        send_lent(&mut ss, &d, 70_000).await.unwrap();
        ss.shutdown().await.unwrap();
        got
    });
    send_lent(&mut cs, &u, usize::MAX).await.unwrap();
    cs.shutdown().await.unwrap();
    let back = read_to_end(&mut cs).await.unwrap();
    assert!(srv.await.unwrap() == up);
    assert!(back == down);
    assert_eq!(cs.tickets_received(), 2);
}

/// `write_vectored` (what hyper uses for an HTTP head and its body) gathers slices into
/// records: empty slices, slices split across records, and more than the send buffer holds
/// (a partial write, the rest taken by the next calls). The in-place server returns the
/// client's leaf certificate when asked for it.
#[tokio::test]
async fn gathered_writes_arrive_whole_and_the_server_sees_the_clients_leaf() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(
        server.accept_in_place_with_leaf(s),
        client.connect_in_place(c, std::slice::from_ref(&sid), Alpn::Http11)
    );
    let mut accepted = a.expect("in-place accept");
    let (mut cs, _) = b.expect("in-place connect");
    assert_eq!(accepted.peer, cid);
    assert_eq!(accepted.alpn, Some(&b"istio-http/1.1"[..]));
    let leaf = accepted.leaf.take().expect("the client's leaf");
    assert_eq!(
        warden_identity::tls::spiffe_id_of(&leaf).expect("a SPIFFE ID in the leaf"),
        cid
    );
    assert!(cs.is_write_vectored());
    let parts = [
        pattern(200, 1),
        Vec::new(),
        pattern(40_000, 2),
        pattern(1, 3),
        pattern(70_000, 4),
    ];
    let want: Vec<u8> = parts.concat();
    let mut ss = accepted.stream;
    let srv = tokio::spawn(async move { read_to_end(&mut ss).await.unwrap() });
    let (mut part, mut off, mut calls) = (0, 0, 0);
    while part < parts.len() {
        let mut slices = vec![io::IoSlice::new(&parts[part][off..])];
        slices.extend(parts[part + 1..].iter().map(|p| io::IoSlice::new(p)));
        let mut n = cs.write_vectored(&slices).await.unwrap();
        assert!(n > 0);
        calls += 1;
        // Advance over what was taken.
        while n > 0 || (part < parts.len() && off == parts[part].len()) {
            let left = parts[part].len() - off;
            let k = left.min(n);
            (off, n) = (off + k, n - k);
            if off == parts[part].len() {
                (part, off) = (part + 1, 0);
                if part == parts.len() {
                    break;
                }
            }
        }
    }
    assert!(
        calls > 1,
        "more than the send buffer holds must take several calls"
    );
    cs.shutdown().await.unwrap();
    let got = srv.await.unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the server read other bytes than were written");
}

#[tokio::test]
async fn a_server_that_is_not_the_expected_identity_is_refused() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (c, s) = tcp_pair().await;
    let other = id("a", "someone-else");
    let (_, b) = tokio::join!(
        server.accept(s),
        client.connect_in_place(c, std::slice::from_ref(&other), Alpn::Tcp)
    );
    let e = b.expect_err("secure naming must refuse the server");
    let text = e.to_string();
    assert!(
        text.contains("someone-else") || text.contains("secure naming"),
        "{text}"
    );
}

#[tokio::test]
async fn a_forged_record_from_the_server_fails_the_stream() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let (server, client) = (mesh.provider(&sid), mesh.provider(&cid));
    let (mut cs, ss) = rustls_server_pair(&server, &client, &sid).await;
    // The server's socket sends an application_data record that no key sealed.
    let (mut raw, _) = ss.into_inner();
    let mut rec = vec![23u8, 3, 3, 0, 40];
    rec.extend_from_slice(&[0xab; 40]);
    raw.write_all(&rec).await.unwrap();
    let mut buf = [0u8; 16];
    let e = tokio::time::timeout(Duration::from_secs(5), cs.read(&mut buf))
        .await
        .expect("the stream neither failed nor ended")
        .expect_err("a forged record must fail the read");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    // The client tells the server why: a bad_record_mac alert (type 21).
    let mut alert = [0u8; 5];
    raw.read_exact(&mut alert).await.unwrap();
    assert_eq!(alert[0], 23, "alerts are protected records in TLS 1.3");
    assert!(
        cs.write_all(b"more").await.is_err(),
        "a failed stream sends no data"
    );
}

#[tokio::test]
async fn without_credentials_or_with_tls12_enabled_nothing_is_connected() {
    let sid = id("a", "server");
    let none = TlsProvider::new(TlsSettings::default()).unwrap();
    let (c, _s) = tcp_pair().await;
    let e = none
        .connect_in_place(c, std::slice::from_ref(&sid), Alpn::Tcp)
        .await
        .expect_err("no credentials");
    assert!(matches!(e, TlsError::NoCredentials), "{e}");
    let tls12 = TlsProvider::new(TlsSettings {
        allow_tls12: true,
        ..TlsSettings::default()
    })
    .unwrap();
    let (c, _s) = tcp_pair().await;
    let e = tls12
        .connect_in_place(c, std::slice::from_ref(&sid), Alpn::Tcp)
        .await
        .expect_err("TLS 1.2 enabled");
    assert!(e.to_string().contains("TLS 1.2"), "{e}");
}
