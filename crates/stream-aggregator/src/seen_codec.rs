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

/// Encodes keys (any order); returns the bytes and the largest time.
pub fn encode(keys: &[(Pair, i64)]) -> (Vec<u8>, i64) {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::with_capacity(keys.len() * 2 + 16);
    let mut max = i64::MIN;
    let mut i = 0;
    while i < sorted.len() {
        let pair = sorted[i].0;
        let j = sorted[i..]
            .iter()
            .position(|(p, _)| *p != pair)
            .map_or(sorted.len(), |k| i + k);
        let text = pair.to_string();
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
        put_varint(&mut out, (j - i) as u64);
        let mut prev = 0i64;
        for (_, t) in &sorted[i..j] {
            put_varint(&mut out, zigzag(t.wrapping_sub(prev)));
            prev = *t;
            max = max.max(*t);
        }
        i = j;
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
        let mut keys: Vec<(Pair, i64)> = (0..1000)
            .map(|i| (btc, 1_722_864_000_000_000 + i * 10_000))
            .collect();
        keys.extend((0..10).map(|i| (eth, -5 + i)));
        keys.reverse();
        let (bytes, max) = encode(&keys);
        assert_eq!(max, 1_722_864_000_000_000 + 999 * 10_000);
        assert!(bytes.len() < 3 * 1000 + 64, "{} bytes", bytes.len());
        let mut back = decode(&bytes).unwrap();
        back.sort_unstable();
        keys.sort_unstable();
        assert_eq!(back, keys);
        assert!(
            decode(&bytes[..bytes.len() - 1]).is_none()
                || decode(&bytes[..bytes.len() - 1]).unwrap().len() < keys.len()
        );
    }
}
