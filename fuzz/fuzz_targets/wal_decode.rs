//! Fuzzes the write-ahead log decoder: the input is read as a log segment, the way
//! `Wal::open` reads one, and also as the body of one correctly framed and checksummed record,
//! so that mutations reach the body parser instead of stopping at the checksum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vecrig_server::storage::wal::{Decoded, Record, decode, encode};

fuzz_target!(|data: &[u8]| {
    // As a segment: decode records until the end or the first damage.
    let mut at = 0;
    while at < data.len() {
        match decode(&data[at..]) {
            Decoded::Record {
                sequence,
                record,
                len,
            } => {
                assert!(
                    len >= 8 && len <= data.len() - at,
                    "frame of {len} bytes at {at}"
                );
                check_round_trip(sequence, &record);
                at += len;
            }
            Decoded::Torn | Decoded::Corrupt(_) => break,
        }
    }

    // As one record's body, framed and checksummed: a whole frame is never torn.
    let mut frame = Vec::with_capacity(data.len() + 8);
    frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    frame.extend_from_slice(data);
    match decode(&frame) {
        Decoded::Record {
            sequence,
            record,
            len,
        } => {
            assert_eq!(len, frame.len());
            check_round_trip(sequence, &record);
        }
        Decoded::Corrupt(_) => {}
        Decoded::Torn => panic!("a whole frame decoded as torn"),
    }
});

/// A decoded record encodes to a frame that decodes to the same encoding.
fn check_round_trip(sequence: u64, record: &Record) {
    let mut once = Vec::new();
    encode(sequence, record, &mut once);
    match decode(&once) {
        Decoded::Record {
            sequence: again,
            record: decoded,
            len,
        } => {
            assert_eq!((again, len), (sequence, once.len()));
            let mut twice = Vec::new();
            encode(again, &decoded, &mut twice);
            assert_eq!(once, twice);
        }
        other => panic!("re-encoded record decoded as {other:?}"),
    }
}
