//! Asset ids and currency pairs: validated, stored inline (no allocation), cheap to copy and hash.

use std::{borrow::Cow, fmt, str::FromStr};

use arrayvec::ArrayString;
use serde::{Deserialize, Serialize};

use super::{ModelError, MAX_ASSET_ID_LEN};

/// An asset id such as `BTC`: 1 to 16 ASCII letters, digits, `_` or `-`, upper-cased.
/// Stored inline (no allocation) so pairs are cheap to copy and hash on the hot path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetId(pub(super) ArrayString<MAX_ASSET_ID_LEN>);

impl AssetId {
    /// Parses an asset id; `field` names the setting or JSON field in the error.
    pub fn parse_field(s: &str, field: &'static str) -> Result<Self, ModelError> {
        if s.is_empty() {
            return Err(ModelError::invalid(field, s, "must not be empty"));
        }
        if s.len() > MAX_ASSET_ID_LEN {
            return Err(ModelError::invalid(field, s, "longer than 16 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ModelError::invalid(
                field,
                s,
                "only ASCII letters, digits, '_' and '-' are allowed",
            ));
        }
        let mut id = ArrayString::new();
        id.push_str(s);
        id.make_ascii_uppercase();
        Ok(AssetId(id))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl FromStr for AssetId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AssetId::parse_field(s, "asset_id")
    }
}

/// A currency pair `BASE/QUOTE`, e.g. `BTC/USD`. Its text form is also the Kafka message key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    pub base: AssetId,
    pub quote: AssetId,
}

impl Pair {
    pub fn new(base: AssetId, quote: AssetId) -> Self {
        Pair { base, quote }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.quote)
    }
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pair({self})")
    }
}

impl FromStr for Pair {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let Some((base, quote)) = t.split_once('/') else {
            return Err(ModelError::invalid(
                "pair",
                s,
                "expected BASE/QUOTE, e.g. BTC/USD",
            ));
        };
        let pair = Pair {
            base: AssetId::parse_field(base.trim(), "pair")?,
            quote: AssetId::parse_field(quote.trim(), "pair")?,
        };
        if pair.base == pair.quote {
            return Err(ModelError::invalid("pair", s, "base and quote must differ"));
        }
        Ok(pair)
    }
}

impl Serialize for Pair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
