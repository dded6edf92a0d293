//! The configuration's two references, README.md's key table and
//! `bankauth.example.toml`, checked against the keys [`Config`] accepts.
//! Those keys are read from the serde structs themselves, so a field added
//! without a row in the table or a line in the example fails here.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

use super::Config;

const README: &str = include_str!("../../README.md");
const EXAMPLE: &str = include_str!("../../bankauth.example.toml");

/// The name standing for any entry of a map such as `providers`, as the
/// README writes it: `providers.<name>.kind`.
const ANY_NAME: &str = "<name>";
/// The step into a list's elements: `cache.encryption_keys[].id`.
const ELEMENT: &str = "[]";

/// Every key of every struct [`Config`] holds, tables included, as dotted
/// paths with [`ANY_NAME`] and [`ELEMENT`] steps (`server.tls`,
/// `providers.<name>.kind`, `cache.encryption_keys[].id`).
fn accepted_keys() -> BTreeSet<String> {
    let keys = RefCell::new(BTreeSet::new());
    let tracer = Tracer {
        path: "",
        keys: &keys,
    };
    // Deserializing checks only each value's type (a URL must parse), so
    // one value of each type passes.
    <Config as serde::Deserialize>::deserialize(tracer).expect("the tracer reaches every field");
    keys.into_inner()
}

/// A deserializer that hands each struct one value for every field it
/// names (serde's derive passes them all, and only the accepted ones, to
/// `deserialize_struct`), one entry to each map and list, and to each
/// scalar a value of its type, recording the path of every field.
#[derive(Clone, Copy)]
struct Tracer<'a> {
    path: &'a str,
    keys: &'a RefCell<BTreeSet<String>>,
}

impl Tracer<'_> {
    fn child(&self, step: &str) -> String {
        child(self.path, step)
    }
}

/// Feeds a visitor names and a tracer for each value: a struct's fields,
/// or a map's one entry.
struct Entries<'a, I> {
    tracer: Tracer<'a>,
    names: I,
    next_path: String,
}

impl<'de, 'a, I: Iterator<Item = &'static str>> de::MapAccess<'de> for Entries<'a, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(name) = self.names.next() else {
            return Ok(None);
        };
        self.next_path = self.tracer.child(name);
        let key: StrDeserializer<Error> = name.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Tracer {
            path: &self.next_path,
            keys: self.tracer.keys,
        })
    }
}

/// Feeds `len` elements to a list or a tuple (`refresh_window` needs two).
struct Elements<'a> {
    tracer: Tracer<'a>,
    len: usize,
    path: String,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(Tracer {
            path: &self.path,
            keys: self.tracer.keys,
        })
        .map(Some)
    }
}

/// An enum's first variant, whatever its shape.
impl<'de, 'a> de::EnumAccess<'de> for Tracer<'a> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        seed.deserialize(de::value::U32Deserializer::<Error>::new(0))
            .map(|variant| (variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Tracer<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

/// Narrower number types read the widest of their kind: the primitive
/// visitors accept any value in range, and 0 is in every range.
macro_rules! narrower_numbers {
    ($($widest:ident: $($narrower:ident)*,)*) => {
        $($(
            fn $narrower<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.$widest(visitor)
            }
        )*)*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    /// Strings: one that parses as a URL too, since `Url` fields read one.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("https://bankauth.invalid/")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_tuple(1, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            tracer: self,
            len,
            path: self.child(ELEMENT),
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Entries {
            tracer: self,
            names: std::iter::once(ANY_NAME),
            next_path: String::new(),
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        (self.keys.borrow_mut()).extend(fields.iter().map(|field| self.child(field)));
        visitor.visit_map(Entries {
            tracer: self,
            names: fields.iter().copied(),
            next_path: String::new(),
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    /// `SocketAddr` and its kin read themselves as numbers, not strings.
    fn is_human_readable(&self) -> bool {
        false
    }

    forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct identifier ignored_any
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    narrower_numbers! {
        deserialize_i64: deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i128,
        deserialize_u64: deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u128,
        deserialize_f64: deserialize_f32,
    }
}

/// The path of `step` below `path`.
fn child(path: &str, step: &str) -> String {
    match (path, step) {
        ("", step) => step.to_owned(),
        (path, ELEMENT) => format!("{path}{ELEMENT}"),
        (path, step) => format!("{path}.{step}"),
    }
}

/// The keys README.md's table under "## Configuration" documents, each
/// with its row. A row's first cell names a key in full
/// (`server.listen_addr`) or relative to the table of the last key named
/// in full (`….issuer` after `providers.<name>.kind`), then perhaps keys
/// beside it in the same table (`/ key_file`, `, signing_algorithm`).
fn readme_keys(readme: &str) -> Result<BTreeMap<String, String>, String> {
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with("Configuration\n"))
        .ok_or("README.md has no \"## Configuration\" section")?;
    let table_of = |key: &str| {
        key.rsplit_once('.')
            .map_or("", |(table, _)| table)
            .to_owned()
    };
    let mut last_full = None::<String>;
    let mut keys = BTreeMap::new();
    for row in section.lines().filter(|line| line.starts_with("| `")) {
        let first_cell = row[1..].split(" | ").next().unwrap_or_default();
        let mut row_table = None::<String>;
        for name in first_cell.split('`').skip(1).step_by(2) {
            let key = if let Some(relative) = name.strip_prefix("….") {
                let table = last_full
                    .as_deref()
                    .map(table_of)
                    .ok_or_else(|| format!("{name} comes before any key written in full: {row}"))?;
                child(&table, relative)
            } else if name.contains('.') {
                last_full = Some(name.to_owned());
                name.to_owned()
            } else {
                let table = row_table.as_deref().ok_or_else(|| {
                    format!("{name} is not the row's first key, whose table it shares: {row}")
                })?;
                child(table, name)
            };
            row_table.get_or_insert_with(|| table_of(&key));
            if keys.insert(key.clone(), row.to_owned()).is_some() {
                return Err(format!("{key} has two rows"));
            }
        }
    }
    Ok(keys)
}

/// What README.md's table and the accepted keys disagree on. Each key has
/// a row, except tables; a list of tables (`cache.encryption_keys`) has
/// one row that names each of its elements' keys.
fn table_drift(accepted: &BTreeSet<String>, documented: &BTreeMap<String, String>) -> Vec<String> {
    let is_table = |key: &String| {
        let below = format!("{key}.");
        accepted.iter().any(|other| other.starts_with(&below))
    };
    let rows: BTreeSet<_> = (accepted.iter())
        .filter(|key| !key.contains(ELEMENT) && !is_table(key))
        .collect();
    let mut drift = Vec::new();
    for key in &rows {
        if !documented.contains_key(*key) {
            drift.push(format!("no row for {key}"));
        }
    }
    for key in documented.keys() {
        if !rows.contains(key) {
            drift.push(format!(
                "a row for {key}, which is not a key bankauth accepts"
            ));
        }
    }
    let element_keys = (accepted.iter()).filter_map(|key| key.split_once(&format!("{ELEMENT}.")));
    for (list, key) in element_keys {
        let names = |row: &str| {
            row.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == key)
        };
        if !documented.get(list).is_some_and(|row| names(row)) {
            drift.push(format!(
                "the row for {list} does not name its elements' key {key}"
            ));
        }
    }
    drift
}

/// `# key = value` → `key = value`: a key the example shows commented out,
/// as the alternative to one set beside it. Prose comments stay comments.
fn uncomment(line: &str) -> &str {
    let Some(rest) = line.trim_start().strip_prefix('#').map(str::trim_start) else {
        return line;
    };
    let assigns = rest.split_once('=').is_some_and(|(key, _)| {
        let key = key.trim_end();
        !key.is_empty()
            && (key.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    if assigns { rest } else { line }
}

/// The keys `example` sets or shows commented out, in the accepted keys'
/// notation: any entry of a map is `<name>`, any element of a list `[]`.
fn example_keys(example: &str, accepted: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    let uncommented = example
        .lines()
        .map(uncomment)
        .collect::<Vec<_>>()
        .join("\n");
    let document: serde_json::Value = Figment::from(Toml::string(&uncommented))
        .extract()
        .map_err(|e| format!("with its commented-out keys restored, it is not TOML: {e}"))?;
    let mut keys = BTreeSet::new();
    let mut pending = vec![(String::new(), &document)];
    while let Some((path, value)) = pending.pop() {
        match value {
            serde_json::Value::Object(entries) => {
                let named = child(&path, ANY_NAME);
                let is_map = accepted.iter().any(|key| key.starts_with(&named));
                for (name, value) in entries {
                    let step = if is_map { ANY_NAME } else { name };
                    let key = child(&path, step);
                    if !is_map {
                        keys.insert(key.clone());
                    }
                    pending.push((key, value));
                }
            }
            serde_json::Value::Array(elements) => {
                let element = child(&path, ELEMENT);
                pending.extend(elements.iter().map(|value| (element.clone(), value)));
            }
            _ => {}
        }
    }
    Ok(keys)
}

/// What `bankauth.example.toml` and the accepted keys disagree on.
fn example_drift(accepted: &BTreeSet<String>, example: &str) -> Vec<String> {
    let shown = match example_keys(example, accepted) {
        Ok(keys) => keys,
        Err(error) => return vec![error],
    };
    let missing = (accepted.difference(&shown)).map(|key| format!("neither sets nor shows {key}"));
    let unknown = (shown.difference(accepted))
        .map(|key| format!("has {key}, which is not a key bankauth accepts"));
    missing.chain(unknown).collect()
}

#[test]
fn the_keys_are_read_from_the_structs() {
    let accepted = accepted_keys();
    for key in [
        "server.tls.cert_file",
        "telemetry.metrics_addr",
        "access.callers.<name>.burst",
        "cache.encryption_keys[].key_env",
        "providers.<name>.base_url",
    ] {
        assert!(accepted.contains(key), "{key} not in {accepted:?}");
    }
    // Fields serde skips are not configuration: tests and the demo set them.
    assert!(!accepted.iter().any(|key| key.ends_with("private_key_pem")));
}

#[test]
fn the_readme_table_has_a_row_for_every_key_and_for_no_other() {
    let drift = table_drift(&accepted_keys(), &readme_keys(README).unwrap());
    assert!(
        drift.is_empty(),
        "README.md's configuration table and the configuration structs disagree:\n{}",
        drift.join("\n")
    );
}

/// What an edit of README.md adds to the table's drift (none, while the
/// test above passes), so this test checks the checker alone.
fn table_drift_of(readme: &str) -> Vec<String> {
    let accepted = accepted_keys();
    let before = table_drift(&accepted, &readme_keys(README).unwrap());
    let mut drift = table_drift(&accepted, &readme_keys(readme).unwrap());
    drift.retain(|line| !before.contains(line));
    drift
}

#[test]
fn a_missing_row_and_a_misspelt_key_are_both_found() {
    let without_row: String = (README.lines())
        .filter(|line| !line.starts_with("| `telemetry.metrics_addr`"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(
        table_drift_of(&without_row),
        ["no row for telemetry.metrics_addr"]
    );
    assert_eq!(
        table_drift_of(&README.replacen("/ `burst`", "/ `bursts`", 1)),
        [
            "no row for access.callers.<name>.burst",
            "a row for access.callers.<name>.bursts, which is not a key bankauth accepts"
        ]
    );
    assert_eq!(
        table_drift_of(&README.replacen("key_file \\| key_env", "key_file", 1)),
        ["the row for cache.encryption_keys does not name its elements' key key_env"]
    );
}

#[test]
fn the_example_sets_or_shows_every_key_and_no_other() {
    let drift = example_drift(&accepted_keys(), EXAMPLE);
    assert!(
        drift.is_empty(),
        "bankauth.example.toml and the configuration structs disagree: it\n{}",
        drift.join("\n")
    );
}

/// What an edit of the example adds to its drift (none, while the test
/// above passes), so this test checks the checker alone.
fn example_drift_of(example: &str) -> Vec<String> {
    let accepted = accepted_keys();
    let before = example_drift(&accepted, EXAMPLE);
    let mut drift = example_drift(&accepted, example);
    drift.retain(|line| !before.contains(line));
    drift
}

#[test]
fn a_key_missing_from_the_example_or_misspelt_in_a_comment_is_found() {
    let without_burst: String = (EXAMPLE.lines())
        .filter(|line| !line.trim_start().starts_with("burst ="))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(
        example_drift_of(&without_burst),
        ["neither sets nor shows access.callers.<name>.burst"]
    );
    assert_eq!(
        example_drift_of(&EXAMPLE.replacen("# redis_cluster_urls =", "# redis_cluster_url =", 1)),
        [
            "neither sets nor shows cache.redis_cluster_urls",
            "has cache.redis_cluster_url, which is not a key bankauth accepts"
        ]
    );
}
