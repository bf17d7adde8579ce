//! `google.protobuf.Timestamp` with the canonical proto3 JSON form: RFC 3339, always
//! Z-normalized, with 0, 3, 6 or 9 fractional digits ("2026-11-27T10:01:02.123Z").

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.seconds, u32::try_from(self.nanos).ok()?)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self
            .to_datetime()
            .ok_or_else(|| serde::ser::Error::custom(format!("timestamp out of range: {self:?}")))?;
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = DateTime::parse_from_rfc3339(&s)
            .map_err(|e| D::Error::custom(format!("timestamp {s:?}: {e}")))?;
        Ok(t.with_timezone(&Utc).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json() {
        let json = |seconds, nanos| serde_json::to_string(&Timestamp { seconds, nanos }).expect("serializes");
        assert_eq!(json(1_800_000_000, 0), "\"2027-01-15T08:00:00Z\"");
        assert_eq!(json(1_800_000_000, 123_000_000), "\"2027-01-15T08:00:00.123Z\"");
        assert_eq!(json(1_800_000_000, 5), "\"2027-01-15T08:00:00.000000005Z\"");
        let back: Timestamp = serde_json::from_str("\"2027-01-15T09:00:00.5+01:00\"").expect("parses");
        assert_eq!(back, Timestamp { seconds: 1_800_000_000, nanos: 500_000_000 });
    }
}
