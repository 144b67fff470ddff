use super::*;
use crate::session::frames::{OP_CLOSE, OP_TEXT, parse_header, parse_header_from, unmask};

/// A peer socket that never takes anything.
struct Stuck;

impl AsyncWrite for Stuck {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Pending
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

fn drain(w: &mut Wire, out: &mut Vec<u8>) -> u64 {
    let mut released = 0;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let r = w.poll_drain(out, &mut cx, |n| released += n, |_| false);
    assert!(matches!(r, Poll::Ready(Ok(()))), "a Vec takes everything");
    released
}

#[test]
fn client_role_frames_are_masked_and_round_trip() {
    let mut w = Wire::new(true);
    w.push(Out::Data { binary: false, data: Bytes::from_static(b"hello upstream") }).expect("open");
    let mut out = Vec::new();
    drain(&mut w, &mut out);
    // The server side of the upstream reads it as a client frame: masked.
    let h = parse_header(&out, 1024).expect("valid").expect("complete");
    assert_eq!((h.opcode, h.len, h.header_len), (OP_TEXT, 14, 6));
    assert_ne!(&out[6..], b"hello upstream", "the payload is masked on the wire");
    let mut p = out[6..].to_vec();
    unmask(&mut p, h.mask);
    assert_eq!(p, b"hello upstream");
    assert!(parse_header_from(&out, 1024, false).is_err(), "a client would refuse it as a server frame");
}

#[test]
fn server_frames_are_not_masked_and_nothing_follows_a_close() {
    let mut w = Wire::new(false);
    w.push(Out::Close { code: 4003, reason: "revoked".into() }).expect("open");
    w.push(Out::Data { binary: true, data: Bytes::from_static(b"late") }).expect("queued before the close is encoded");
    let mut out = Vec::new();
    let released = drain(&mut w, &mut out);
    let h = parse_header_from(&out, 1024, false).expect("valid").expect("complete");
    assert_eq!((h.opcode, &out[h.header_len..h.header_len + 2]), (OP_CLOSE, &4003u16.to_be_bytes()[..]));
    assert_eq!(out.len(), h.header_len + h.len, "nothing is written after the close frame");
    assert_eq!(released, (2 + 2 + 7) + (2 + 4) + 2 * ENTRY_OVERHEAD, "the dropped frame's accounting is released too");
    assert!(w.done && w.push(Out::Ping).is_err(), "a closed wire takes nothing more");
}

#[test]
fn accounting_is_released_once_written_and_the_buffer_given_back() {
    let mut w = Wire::new(false);
    w.push(Out::Pong(Bytes::from_static(b"abc"))).expect("open");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut released = 0;
    assert!(w.poll_drain(&mut Stuck, &mut cx, |n| released += n, |_| false).is_pending());
    assert_eq!(released, 0, "frames in the write buffer still count as buffered");
    assert_eq!(w.unwritten().len(), 5);
    assert!(w.busy());
    let mut out = Vec::new();
    assert_eq!(drain(&mut w, &mut out), 5 + ENTRY_OVERHEAD, "wire size and queue entry");
    assert_eq!(out.len(), 5);
    assert!(!w.busy());
    assert_eq!(w.buf.capacity(), 0, "an idle wire holds no write buffer");
}

#[test]
fn data_waiting_for_a_slow_client_owns_its_bytes() {
    let read = Bytes::from(vec![7u8; 4000]);
    let in_read = |o: &Out| matches!(o, Out::Data { data, .. } if read.as_ptr_range().contains(&data.as_ptr()));
    let mut w = Wire::new(false);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    w.push(Out::Data { binary: true, data: read.slice(0..10) }).expect("open");
    assert!(w.poll_drain(&mut Stuck, &mut cx, |_| (), |_| false).is_pending());
    assert_eq!(w.len(), 0, "the first frame went into the write batch, a copy");
    w.push(Out::Data { binary: true, data: read.slice(10..20) }).expect("open");
    w.push(Out::Data { binary: true, data: read.slice(20..30) }).expect("open");
    assert!(w.poll_drain(&mut Stuck, &mut cx, |_| (), |_| false).is_pending());
    assert_eq!(w.queued().filter(|o| in_read(o)).count(), 2, "still views while queued");
    w.own_last(1);
    assert_eq!(w.queued().filter(|o| in_read(o)).count(), 1, "only the last one was copied");
    w.own_last(5);
    assert_eq!(w.queued().filter(|o| in_read(o)).count(), 0, "none is a view of the read any more");
    assert!(w.queued().all(|o| matches!(o, Out::Data { data, .. } if data[..] == [7u8; 10])), "the same bytes");
}

/// Empty frames cost their queue entry too: a flood of them reaches the limit (4013) at
/// about `max_buffered_bytes / (2 + ENTRY_OVERHEAD)` entries, not at half a million for
/// a 1 MiB limit.
#[test]
fn a_flood_of_empty_frames_is_bounded_by_its_entries() {
    let config = crate::config::NodeConfig::from_toml(
        "[listen]\nwss = \"127.0.0.1:0\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[routes]]\npath = \"/echo\"\necho = true\n",
    )
    .expect("config");
    let state = crate::state::NodeState::new(config).expect("state");
    let policy = palisade_policy::Policy::from_yaml_or_json(
        "limits: { messages: { max_bytes: 1024, max_buffered_bytes: 1024 } }\norigins: { allow: [\"https://app.example.com\"] }\nauth:\n  keys:\n    - { kid: k1, alg: HS256, secret_base64: \"cGFsaXNhZGUtZnV6ei1zZWNyZXQtMDEyMzQ1Njc4OWFi\" }\n",
    )
    .expect("policy")
    .compile(1)
    .expect("compiles");
    let mut outbox = Outbox::new(state, Arc::new(ConnCounters::default()), Arc::new(Limits::new(&policy)), "alice");
    let mut queued = 0u64;
    while outbox.data(false, Bytes::new()).is_ok() {
        queued += 1;
        assert!(queued <= 1024, "an empty frame must cost more than its 2 wire bytes");
    }
    assert_eq!(queued, 1024 / (2 + ENTRY_OVERHEAD), "each entry counts 2 + {ENTRY_OVERHEAD} bytes");
}
