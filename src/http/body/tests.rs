use super::*;

/// A buffer that received `bytes`.
fn input(bytes: &[u8]) -> ReadBuf {
    let mut b = ReadBuf::new(64, true);
    let mut v = b.lend();
    v.extend_from_slice(bytes);
    b.restore(v);
    b
}

/// Every run `next_run` yields from `bytes`, then what it says at the end of them.
fn runs(state: &mut BodyState, bytes: &[u8]) -> (Vec<Vec<u8>>, Run) {
    let mut buf = input(bytes);
    let mut out = Vec::new();
    loop {
        match state.next_run(&mut buf).unwrap() {
            Run::Bytes(r) => out.push(buf.consumed(r).to_vec()),
            other => return (out, other),
        }
    }
}

#[test]
fn content_length_stops_at_its_length_and_leaves_the_next_request() {
    let mut state = BodyState::reading(Framing::Length(5));
    let mut buf = input(b"helloGET / HTTP/1.1");
    assert_eq!(state.next_run(&mut buf).unwrap(), Run::Bytes(0..5));
    assert_eq!(state.next_run(&mut buf).unwrap(), Run::End);
    assert_eq!(buf.unread(), b"GET / HTTP/1.1");
}

#[test]
fn a_short_body_asks_for_more_input() {
    let mut state = BodyState::reading(Framing::Length(10));
    let (got, end) = runs(&mut state, b"hello");
    assert_eq!((got, end), (vec![b"hello".to_vec()], Run::NeedInput));
    assert!(matches!(state, BodyState::Length(5)));
}

#[test]
fn chunked_runs_are_the_data_without_framing() {
    let mut state = BodyState::reading(Framing::Chunked);
    let (got, end) = runs(&mut state, b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\nNEXT");
    assert_eq!(got.concat(), b"abcde");
    assert_eq!(end, Run::End);
    assert!(matches!(state, BodyState::Done));
}

#[test]
fn chunked_framing_is_squeezed_out_of_a_block_in_place() {
    let mut state = BodyState::reading(Framing::Chunked);
    let mut buf = input(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\nrest");
    let mut end = 0;
    state.absorb(&mut buf, &mut end).unwrap();
    assert_eq!(buf.consumed(0..end), b"abcdefg");
    assert!(matches!(state, BodyState::Done));
    assert_eq!(buf.unread(), b"rest");
}

#[test]
fn a_chunked_block_split_across_reads_keeps_its_bytes_in_order() {
    let mut state = BodyState::reading(Framing::Chunked);
    let mut buf = input(b"5\r\nab");
    let mut end = 0;
    state.absorb(&mut buf, &mut end).unwrap();
    assert_eq!(buf.consumed(0..end), b"ab");
    let mut v = buf.lend();
    v.extend_from_slice(b"cde\r\n0\r\n\r\n");
    buf.restore(v);
    state.absorb(&mut buf, &mut end).unwrap();
    assert_eq!(buf.consumed(0..end), b"abcde");
    assert!(matches!(state, BodyState::Done));
}

#[test]
fn malformed_chunk_framing_is_an_error() {
    let mut state = BodyState::reading(Framing::Chunked);
    let mut buf = input(b"zz\r\n");
    assert!(state.next_run(&mut buf).is_err());
}

#[test]
fn no_body_is_done_at_once_and_nothing_is_read_before_100_continue() {
    assert!(matches!(BodyState::reading(Framing::None), BodyState::Done));
    let mut state = BodyState::AwaitingContinue(Framing::Length(3));
    assert_eq!(state.next_run(&mut input(b"abc")).unwrap(), Run::End);
}
