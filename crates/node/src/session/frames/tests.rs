use super::*;

/// A masked client frame.
fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=65535 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        out.extend_from_slice(&p);
    } else {
        out.extend_from_slice(payload);
    }
    out
}

#[test]
fn a_masked_text_frame_parses_and_unmasks() {
    let bytes = frame(0x81, b"hello", true);
    let h = parse_header(&bytes, 1024).expect("valid").expect("complete");
    assert_eq!((h.fin, h.opcode, h.len, h.header_len), (true, OP_TEXT, 5, 6));
    let mut p = bytes[h.header_len..].to_vec();
    unmask(&mut p, h.mask);
    assert_eq!(p, b"hello");
}

#[test]
fn rfc6455_violations_are_protocol_errors() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("unmasked client frame", frame(0x81, b"hi", false)),
        ("reserved bits set", frame(0xC1, b"hi", true)),
        ("reserved bits set", frame(0x91, b"hi", true)),
        ("unknown opcode", frame(0x83, b"", true)),
        ("unknown opcode", frame(0x8B, b"", true)),
        ("fragmented control frame", frame(0x09, b"", true)),
        ("control frame over 125 bytes", frame(0x8A, &[0u8; 126], true)),
        ("control frame over 125 bytes", frame(0x88, &[3u8; 200], true)),
    ];
    for (why, bytes) in cases {
        assert_eq!(parse_header(bytes, 1 << 20), Err(FrameError::Protocol(why)), "{why}");
    }
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    assert!(matches!(parse_header(&huge, usize::MAX), Err(FrameError::Protocol(_))));
}

#[test]
fn data_frames_over_the_limit_are_too_big_before_their_payload_arrives() {
    let bytes = frame(0x82, &[7u8; 300], true);
    assert_eq!(parse_header(&bytes[..4], 299), Err(FrameError::TooBig));
    assert!(parse_header(&bytes, 300).expect("ok").is_some());
}

#[test]
fn partial_headers_ask_for_more() {
    let bytes = frame(0x82, &[7u8; 70_000], true);
    for cut in 0..14 {
        assert_eq!(parse_header(&bytes[..cut], usize::MAX), Ok(None), "cut at {cut}");
    }
    assert_eq!(parse_header(&bytes, usize::MAX).expect("ok").expect("complete").len, 70_000);
}

#[test]
fn unmask_matches_the_bytewise_definition() {
    let mask = [1, 2, 3, 250];
    for len in 0..40 {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut fast = data.clone();
        unmask(&mut fast, mask);
        let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(fast, slow, "len {len}");
    }
}

#[test]
fn close_frames_are_checked() {
    assert_eq!(parse_close(b""), Ok((1005, String::new())));
    assert_eq!(parse_close(&[3]), Err(Inbound::Invalid));
    assert_eq!(parse_close(&[0x03, 0xE8, b'o', b'k']), Ok((1000, "ok".into())));
    assert_eq!(parse_close(&[0x03, 0xED]), Err(Inbound::Invalid), "1005 is never sent");
    assert_eq!(parse_close(&[0x03, 0xE8, 0xFF]), Err(Inbound::InvalidUtf8));
    assert_eq!(parse_close(&4003u16.to_be_bytes()), Ok((4003, String::new())));
    assert_eq!(parse_close(&999u16.to_be_bytes()), Err(Inbound::Invalid));
    assert_eq!(parse_close(&5000u16.to_be_bytes()), Err(Inbound::Invalid));
}

#[test]
fn the_assembler_joins_fragments_and_checks_utf8_early() {
    let mut a = Assembler::default();
    assert_eq!(a.push(false, OP_TEXT, Bytes::from_static(b"he"), 100), Ok(None));
    assert_eq!(a.push(false, OP_CONTINUATION, Bytes::from_static(b"l"), 100), Ok(None));
    assert_eq!(
        a.push(true, OP_CONTINUATION, Bytes::from_static(b"lo"), 100),
        Ok(Some(Inbound::Message { binary: false, data: Bytes::from_static(b"hello") }))
    );
    // A continuation with nothing to continue, and a new message inside a fragmented one.
    assert_eq!(a.push(true, OP_CONTINUATION, Bytes::new(), 100), Err(Inbound::Invalid));
    assert_eq!(a.push(false, OP_BINARY, Bytes::from_static(b"x"), 100), Ok(None));
    assert_eq!(a.push(true, OP_TEXT, Bytes::from_static(b"y"), 100), Err(Inbound::Invalid));
    // Text fails at the first fragment that cannot be UTF-8.
    let mut a = Assembler::default();
    assert_eq!(a.push(false, OP_TEXT, Bytes::from_static(&[0xCE]), 100), Ok(None), "an incomplete sequence may continue");
    assert_eq!(a.push(false, OP_CONTINUATION, Bytes::from_static(&[0xFF]), 100), Err(Inbound::InvalidUtf8));
    // The size limit covers the whole message.
    let mut a = Assembler::default();
    assert_eq!(a.push(false, OP_BINARY, Bytes::from(vec![0; 60]), 100), Ok(None));
    assert_eq!(a.push(true, OP_CONTINUATION, Bytes::from(vec![0; 41]), 100), Err(Inbound::TooBig));
}

#[tokio::test]
async fn the_reader_holds_no_buffer_between_frames() {
    let mut bytes = frame(0x81, b"one", true);
    bytes.extend(frame(0x82, &[9u8; 5000], true));
    let mut r = FrameReader::new(&bytes[..]);
    let f = r.next(|| 10_000).await.expect("ok").expect("frame");
    assert_eq!((f.opcode, &f.payload[..]), (OP_TEXT, &b"one"[..]));
    let f = r.next(|| 10_000).await.expect("ok").expect("frame");
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 5000));
    assert_eq!(r.dec.capacity(), 0, "the read buffer is released once consumed");
    assert!(r.next(|| 10_000).await.expect("clean EOF").is_none());
}

#[tokio::test]
async fn a_payload_never_shares_a_read_with_other_frames() {
    // Two frames in one read: the first one's payload must not keep the read alive.
    let mut bytes = frame(0x8A, b"pong-1", true);
    bytes.extend(frame(0x81, &[b'x'; 1500], true));
    let mut r = FrameReader::new(&bytes[..]);
    let first = r.next(|| 10_000).await.expect("ok").expect("frame");
    assert_eq!(&first.payload[..], b"pong-1");
    assert!(first.payload.try_into_mut().is_ok(), "an allocation of its own");
    let second = r.next(|| 10_000).await.expect("ok").expect("frame");
    assert_eq!(second.payload.len(), 1500);
}

#[test]
fn server_frames_must_not_be_masked() {
    let unmasked = frame(0x81, b"hi", false);
    let h = parse_header_from(&unmasked, 1024, false).expect("valid").expect("complete");
    assert_eq!((h.opcode, h.len, h.header_len), (OP_TEXT, 2, 2));
    assert_eq!(parse_header_from(&frame(0x81, b"hi", true), 1024, false), Err(FrameError::Protocol("masked server frame")));
    let mut dec = Decoder::server();
    let mut two = unmasked.clone();
    two.extend(frame(0x82, &[7; 300], false));
    dec.buf.extend_from_slice(&two);
    let f = dec.try_frame(1024).expect("ok").expect("frame");
    assert_eq!(&f.payload[..], b"hi", "an unmasked payload is passed as it is");
    let f = dec.try_frame(1024).expect("ok").expect("frame");
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 300));
    assert_eq!(dec.capacity(), 0, "the read buffer is released once consumed");
}

#[test]
fn frames_bound_for_the_upstream_share_only_a_small_read() {
    let mut small = frame(0x81, b"one", true);
    small.extend(frame(0x81, b"two", true));
    let mut dec = Decoder::client_to_upstream();
    dec.buf.extend_from_slice(&small);
    let first = dec.try_frame(1024).expect("ok").expect("frame");
    let second = dec.try_frame(1024).expect("ok").expect("frame");
    assert_eq!((&first.payload[..], &second.payload[..]), (&b"one"[..], &b"two"[..]), "unmasked in place");
    assert!(first.payload.try_into_mut().is_err(), "a view of the shared read, not a copy");
    assert_eq!(dec.capacity(), 0, "the read buffer is released once consumed");

    // A read buffer that grew past SHARED_READ_MAX is never shared: its frames are copies.
    let mut big = frame(0x81, b"tiny", true);
    big.extend(frame(0x82, &[5; SHARED_READ_MAX], true));
    let mut r = FrameReader { rd: &big[..], dec: Decoder::client_to_upstream() };
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    while r.dec.buf.len() < big.len() {
        assert!(matches!(r.dec.poll_fill(&mut r.rd, &mut cx), Poll::Ready(Ok(true))));
    }
    let tiny = r.dec.try_frame(1 << 20).expect("ok").expect("frame");
    assert_eq!(&tiny.payload[..], b"tiny");
    assert!(tiny.payload.try_into_mut().is_ok(), "an allocation of its own");

    // Frames for the client's outbox are never views.
    let mut dec = Decoder::client();
    dec.buf.extend_from_slice(&small);
    let first = dec.try_frame(1024).expect("ok").expect("frame");
    assert!(first.payload.try_into_mut().is_ok(), "an allocation of its own");
}

/// Parses the client frames of a run, unmasking each with the key in its header.
fn unmasked_frames(mut wire: &[u8]) -> Vec<(u8, [u8; 4], Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some(h)) = parse_header(wire, usize::MAX) {
        let mut p = wire[h.header_len..h.header_len + h.len].to_vec();
        unmask(&mut p, h.mask);
        out.push((h.opcode, h.mask, p));
        wire = &wire[h.header_len + h.len..];
    }
    out
}

#[test]
fn a_run_takes_whole_messages_up_to_the_first_frame_for_the_slow_path() {
    let mut bytes = frame(0x81, b"one", true);
    bytes.extend(frame(0x82, &[1, 2, 3], true));
    let stop = bytes.len();
    bytes.extend(frame(0x89, b"ping", true));
    bytes.extend(frame(0x81, b"two", true));
    let mut dec = Decoder::client_to_upstream();
    dec.buf.extend_from_slice(&bytes);
    let mut seen = Vec::new();
    let mut keys = [[9, 9, 9, 9], [7, 7, 7, 7]].into_iter();
    let run = dec
        .take_run(
            1024,
            |binary, p| {
                seen.push((binary, p.to_vec()));
                true
            },
            || keys.next().expect("a key per frame"),
        )
        .expect("a run");
    assert_eq!(seen, [(false, b"one".to_vec()), (true, vec![1, 2, 3])], "the judge sees unmasked payloads");
    assert_eq!((run.messages, run.payload_bytes, run.frames.len()), (2, 6, stop));
    // Masked again with the node's keys (never the client's), the header patched.
    let frames = unmasked_frames(&run.frames);
    assert_eq!(frames, [(OP_TEXT, [9, 9, 9, 9], b"one".to_vec()), (OP_BINARY, [7, 7, 7, 7], vec![1, 2, 3])]);
    // The Ping stops the run and stays for the slow path as it came, and so does what
    // follows it.
    assert!(dec.take_run(1024, |_, _| true, || [0; 4]).is_none());
    assert_eq!(&dec.buf[..], &bytes[stop..]);
    let ping = dec.try_frame(1024).expect("ok").expect("frame");
    assert_eq!((ping.opcode, &ping.payload[..]), (OP_PING, &b"ping"[..]));
    let run = dec.take_run(1024, |_, _| true, || [1, 2, 3, 4]).expect("the rest");
    assert_eq!(unmasked_frames(&run.frames), [(OP_TEXT, [1, 2, 3, 4], b"two".to_vec())]);
    assert_eq!(dec.capacity(), 0, "the read buffer is released once consumed");
}

#[test]
fn a_run_ends_at_the_first_message_the_judge_refuses_or_the_read_cut() {
    for (second, judged) in [(frame(0x81, b"no", true), 2), (frame(0x81, b"cut", true)[..8].to_vec(), 1)] {
        let mut bytes = frame(0x81, b"yes", true);
        let stop = bytes.len();
        bytes.extend(&second);
        let mut dec = Decoder::client_to_upstream();
        dec.buf.extend_from_slice(&bytes);
        let mut seen = 0;
        let run = dec
            .take_run(
                1024,
                |_, p| {
                    seen += 1;
                    p == b"yes"
                },
                || [3; 4],
            )
            .expect("the first message");
        assert_eq!((run.messages, run.frames.len(), seen), (1, stop, judged));
        assert_eq!(&dec.buf[..], &second[..], "the rest as it came");
    }
}

#[test]
fn a_refused_or_unusual_frame_stays_untouched_for_the_slow_path() {
    let refused = |bytes: &[u8], judge: bool| {
        let mut dec = Decoder::client_to_upstream();
        dec.buf.extend_from_slice(bytes);
        assert!(dec.take_run(1024, |_, _| judge, || [5; 4]).is_none(), "{bytes:02x?}");
        assert_eq!(&dec.buf[..], bytes, "left as it came");
    };
    refused(&frame(0x81, b"no", true), false);
    refused(&frame(0x01, b"fragment", true), true);
    refused(&frame(0x81, &[b'x'; 1025], true), true);
    refused(&frame(0x81, b"cut", true)[..5], true);
    refused(&frame(0x81, b"cut", true)[..8], true);
    refused(&frame(0xC1, b"rsv", true), true);
    // A length not in its shortest form (126 for 3 bytes) goes to the slow path.
    let mut long = vec![0x81, 0x80 | 126, 0, 3, 1, 2, 3, 4];
    long.extend([b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
    refused(&long, true);
    // A large read is never relayed (a run would keep it alive).
    let mut dec = Decoder::client_to_upstream();
    dec.buf.extend_from_slice(&frame(0x81, b"x", true));
    dec.big = true;
    assert!(dec.take_run(1024, |_, _| true, || [0; 4]).is_none());
    // Frames for the client's outbox (echo routes) are never relayed.
    let mut dec = Decoder::client();
    dec.buf.extend_from_slice(&frame(0x81, b"x", true));
    assert!(dec.take_run(1024, |_, _| true, || [0; 4]).is_none());
}

#[test]
fn a_servers_run_is_passed_on_unchanged() {
    let mut bytes = frame(0x81, b"hello", false);
    bytes.extend(frame(0x82, &[0; 200], false));
    let mut dec = Decoder::server();
    dec.buf.extend_from_slice(&bytes);
    let run = dec.take_run(1024, |_, _| true, || unreachable!("server frames are not masked")).expect("run");
    assert_eq!((&run.frames[..], run.messages, run.payload_bytes), (&bytes[..], 2, 205));
    assert_eq!(dec.capacity(), 0);
}
