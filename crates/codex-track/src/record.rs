//! TFRecord framing, the container of TensorBoard event files: per record the length as u64 LE,
//! the masked crc32c of those 8 bytes, the data, and the masked crc32c of the data. Readers
//! (TensorBoard, tf.data) check both checksums and stop at a record that fails.

use std::io::{self, Read, Write};

const MASK_DELTA: u32 = 0xa282_ead8;

/// The checksum as TFRecord stores it: rotated and offset so that a CRC of data that itself
/// holds CRCs is not degenerate.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Appends one record.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    let mut buf = Vec::with_capacity(data.len() + 16);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
    buf.extend_from_slice(data);
    buf.extend_from_slice(&masked_crc(data).to_le_bytes());
    // One write call per record: a crash leaves at most the last record torn.
    out.write_all(&buf)
}

/// Reads every record up to the first torn or corrupt one; returns them and whether the file
/// ended cleanly (for tests and `codex sync`'s own checks).
pub fn read_records(mut input: impl Read) -> io::Result<(Vec<Vec<u8>>, bool)> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Ok((out, false));
        }
        let (len, tail) = rest.split_at(8);
        let crc = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(len) {
            return Ok((out, false));
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let tail = &tail[4..];
        if (tail.len() as u64) < n.saturating_add(4) {
            return Ok((out, false));
        }
        let (data, tail) = tail.split_at(n as usize);
        let crc = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(data) {
            return Ok((out, false));
        }
        out.push(data.to_vec());
        rest = &tail[4..];
    }
    Ok((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 (iSCSI) B.4 test vectors and the classic check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c::crc32c(&inc), 0x46dd_794e);
    }

    #[test]
    fn mask_matches_tensorflow() {
        // Values from TensorBoard's own `masked_crc32c` (tensorflow_stub.pywrap_tensorflow).
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(&[0u8; 8]), 0x0798_0329);
        // The framing of an empty record is fixed: len 0, then the two masked CRCs.
        let mut buf = Vec::new();
        write_record(&mut buf, b"").unwrap();
        assert_eq!(buf.len(), 16);
        assert_eq!(&buf[..8], &[0u8; 8]);
        assert_eq!(buf[8..12], masked_crc(&[0u8; 8]).to_le_bytes());
        assert_eq!(buf[12..], masked_crc(b"").to_le_bytes());
    }

    #[test]
    fn roundtrip_and_corruption_stops_the_reader() {
        let mut buf = Vec::new();
        for r in [&b"one"[..], b"two", b"three"] {
            write_record(&mut buf, r).unwrap();
        }
        let (recs, clean) = read_records(&buf[..]).unwrap();
        assert!(clean);
        assert_eq!(
            recs,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        // A flipped byte in the second record's data: the first survives, the rest is dropped.
        let mut bad = buf.clone();
        bad[19 + 12] ^= 0x01;
        let (recs, clean) = read_records(&bad[..]).unwrap();
        assert!(!clean);
        assert_eq!(recs, vec![b"one".to_vec()]);
        // A torn tail.
        let (recs, clean) = read_records(&buf[..buf.len() - 2]).unwrap();
        assert!(!clean);
        assert_eq!(recs.len(), 2);
    }
}
