//! `#[serde(with = "crate::serde_pairs")]` for maps whose keys are not strings (tuples such as
//! `(Timestamp, u64)`): written as a sequence of `(key, value)` pairs in key order, so they go
//! through any serde format, JSON included (whose map keys must be strings). Used by the
//! write-model snapshots (`command-service/src/snapshot.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

pub fn serialize<K, V, S>(map: &BTreeMap<K, V>, se: S) -> Result<S::Ok, S::Error>
where
    K: Serialize,
    V: Serialize,
    S: Serializer,
{
    let mut seq = se.serialize_seq(Some(map.len()))?;
    for pair in map {
        seq.serialize_element(&pair)?;
    }
    seq.end()
}

pub fn deserialize<'de, K, V, D>(de: D) -> Result<BTreeMap<K, V>, D::Error>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
    D: Deserializer<'de>,
{
    de.deserialize_seq(Pairs(PhantomData))
}

struct Pairs<K, V>(PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for Pairs<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of [key, value] pairs in ascending key order")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut map = BTreeMap::new();
        while let Some((k, v)) = seq.next_element::<(K, V)>()? {
            // Written in key order, so a repeated or unordered key means damaged input.
            if map.last_key_value().is_some_and(|(last, _)| *last >= k) {
                return Err(serde::de::Error::custom("pairs are not in ascending key order"));
            }
            map.insert(k, v);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::Timestamp;
    use rust_decimal::Decimal;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Holder {
        #[serde(with = "super")]
        map: BTreeMap<(Timestamp, u64), Decimal>,
    }

    #[test]
    fn tuple_keys_round_trip_through_json_and_unordered_input_is_refused() {
        let t: Timestamp = "2024-05-01T10:00:00.000001Z".parse().unwrap();
        let map = BTreeMap::from([((t, 7), Decimal::new(15, 1)), ((t, 9), Decimal::NEGATIVE_ONE)]);
        let holder = Holder { map };
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(
            json,
            r#"{"map":[[["2024-05-01T10:00:00.000001Z",7],"1.5"],[["2024-05-01T10:00:00.000001Z",9],"-1"]]}"#
        );
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
        let swapped =
            r#"{"map":[[["2024-05-01T10:00:00Z",9],"1"],[["2024-05-01T10:00:00Z",7],"1"]]}"#;
        assert!(serde_json::from_str::<Holder>(swapped).is_err());
    }
}
