#![no_main]
//! Chunked decoder: byte-at-a-time decoding agrees with whole-buffer decoding.
use libfuzzer_sys::fuzz_target;
use wharf::http::chunked::{ChunkedDecoder, decode_all};

fuzz_target!(|data: &[u8]| {
    let whole = decode_all(data);
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut used = 0;
    let mut failed = false;
    for i in 0..data.len() {
        if dec.is_done() {
            break;
        }
        match dec.step(&data[i..=i]) {
            Ok(step) => {
                used += step.consumed;
                if let Some(r) = step.data {
                    out.extend_from_slice(&data[i..=i][r]);
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if let Ok((body, n)) = whole {
        if dec.is_done() {
            assert_eq!(body, out);
            assert_eq!(n, used);
        }
    } else {
        assert!(failed || !dec.is_done());
    }
});
