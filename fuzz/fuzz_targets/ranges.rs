#![no_main]
//! Range and Content-Range parsing: any accepted range lies inside the blob.
use libfuzzer_sys::fuzz_target;
use wharf::http::range::{ByteRange, parse_content_range, parse_range};

fuzz_target!(|input: (&str, u64)| {
    let (header, size) = input;
    if let ByteRange::Partial { start, end } = parse_range(Some(header), size) {
        assert!(start <= end && end < size);
    }
    if let Some((a, b)) = parse_content_range(header) {
        assert!(a <= b);
    }
});
