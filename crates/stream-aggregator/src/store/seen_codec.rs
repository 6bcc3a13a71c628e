//! Compact binary form of the (pair, event time) keys applied in one flush, for table
//! `aggregator_seen`: per pair, its `BASE/QUOTE` text, a count, and the sorted times as
//! zigzag-varint deltas (two to three bytes per event for a steady feed).

use common::Pair;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes the times of each pair (as [`PartitionEngine::take_new_seen`] gives them: each pair
/// once, times sorted); returns the bytes and the largest time.
///
/// [`PartitionEngine::take_new_seen`]: crate::engine::PartitionEngine::take_new_seen
pub fn encode(groups: &[(Pair, Vec<i64>)]) -> (Vec<u8>, i64) {
    let n: usize = groups.iter().map(|(_, t)| t.len()).sum();
    let mut out = Vec::with_capacity(n * 3 + 16 * groups.len());
    let mut max = i64::MIN;
    for (pair, times) in groups {
        let text = pair.to_string();
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
        put_varint(&mut out, times.len() as u64);
        let mut prev = 0i64;
        for &t in times {
            put_varint(&mut out, zigzag(t.wrapping_sub(prev)));
            prev = t;
            max = max.max(t);
        }
    }
    (out, max)
}

/// Decodes what [`encode`] wrote; `None` if the bytes are corrupt.
pub fn decode(buf: &[u8]) -> Option<Vec<(Pair, i64)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let len = *buf.get(pos)? as usize;
        pos += 1;
        let pair: Pair = std::str::from_utf8(buf.get(pos..pos + len)?)
            .ok()?
            .parse()
            .ok()?;
        pos += len;
        let n = get_varint(buf, &mut pos)?;
        let mut prev = 0i64;
        for _ in 0..n {
            prev = prev.wrapping_add(unzigzag(get_varint(buf, &mut pos)?));
            out.push((pair, prev));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_compact() {
        let btc: Pair = "BTC/USD".parse().unwrap();
        let eth: Pair = "ETH/EUR".parse().unwrap();
        let groups = vec![
            (
                btc,
                (0..1000)
                    .map(|i| 1_722_864_000_000_000 + i * 10_000)
                    .collect::<Vec<i64>>(),
            ),
            (eth, (0..10).map(|i| -5 + i).collect()),
        ];
        let (bytes, max) = encode(&groups);
        assert_eq!(max, 1_722_864_000_000_000 + 999 * 10_000);
        assert!(bytes.len() < 3 * 1000 + 64, "{} bytes", bytes.len());
        let back = decode(&bytes).unwrap();
        let flat: Vec<(Pair, i64)> = groups
            .iter()
            .flat_map(|(p, ts)| ts.iter().map(move |t| (*p, *t)))
            .collect();
        assert_eq!(back, flat);
        assert!(
            decode(&bytes[..bytes.len() - 1]).is_none()
                || decode(&bytes[..bytes.len() - 1]).unwrap().len() < flat.len()
        );
    }
}
