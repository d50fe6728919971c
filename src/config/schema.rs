//! The configuration's schema, read from the `Settings` types themselves (so a field added there is known here at
//! once): every key, the TOML type it takes, the variants of an enum, which fields a table requires.
//!
//! It is found by deserializing `Settings` from a probe that answers every request serde makes with a placeholder
//! and records what was asked for (`deserialize_u32` → a whole number in `0..=u32::MAX`, `deserialize_enum` → one of
//! these names, `deserialize_struct` → a table with these keys, …). A table's required fields are found by probing
//! it again with fields left out until serde stops asking for one. A value whose type the probe cannot describe
//! (a custom type that takes "anything", such as a price) is checked by `Schema::check`, which deserializes that one
//! value, in place, with everything else a placeholder.
//!
//! A type that parses its value (a time zone, a URL, an hour window, a limit of at least 1) refuses the probe's
//! placeholder (`""`, `0`). The probe then knows that key's value is *parsed*: it probes again with that key left
//! out (its table's default, an empty list) to describe the rest, and `Schema::parsed` tells the shape check to let
//! the type itself judge each value given there.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use super::settings::Settings;

/// One step of a path through the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    /// A field of a struct (a fixed key of a table).
    Field(&'static str),
    /// Any entry of a map (a table with free keys, such as `[models.<name>]`).
    Entry,
    /// Any element of a list.
    Elem,
}

/// What a key takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Bool,
    /// A whole number in `min..=max`.
    Int {
        min: i128,
        max: i128,
    },
    Float,
    Str,
    /// A string, one of these.
    Enum(&'static [&'static str]),
    /// A list; its elements are described at `path + Elem`.
    List,
    /// A table with free keys; its values are described at `path + Entry`.
    Map,
    /// A table with these keys.
    Struct(Vec<Field>),
    /// Anything the type's own deserializer accepts (checked with `Schema::check`).
    Any,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
}

#[derive(Debug)]
pub struct Schema {
    kinds: HashMap<Vec<Seg>, Kind>,
    /// Keys whose type parses the value, refusing some values of the right TOML type.
    parsed: BTreeSet<Vec<Seg>>,
}

impl Schema {
    /// The schema of `Settings`, computed once.
    pub fn of_settings() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(Schema::probe)
    }

    pub fn kind(&self, path: &[Seg]) -> Option<&Kind> {
        self.kinds.get(path)
    }

    /// True when the type at `path` parses its value: a value of the right TOML type may still be refused, and
    /// only `check` can tell.
    pub fn parsed(&self, path: &[Seg]) -> bool {
        self.parsed.contains(path)
    }

    /// True when the field at `path` is one its table cannot do without.
    fn required(&self, path: &[Seg]) -> bool {
        match path.split_last() {
            Some((Seg::Field(name), table)) => matches!(
                self.kinds.get(table),
                Some(Kind::Struct(fields)) if fields.iter().any(|f| f.name == *name && f.required)
            ),
            _ => false,
        }
    }

    /// Deserializes `value` as the type at `path`: `Err` carries the type's own message. Only the tables on the
    /// way to `path` are visited, with the fields they cannot do without.
    pub fn check(&self, path: &[Seg], value: &toml::Value) -> Result<(), String> {
        let ctx = Ctx {
            feed: Some((path.to_vec(), value.clone())),
            within: Some(self),
            ..Ctx::default()
        };
        match ctx.run() {
            Err(ProbeError::Fed(message)) => Err(message),
            _ => Ok(()),
        }
    }

    fn probe() -> Schema {
        let mut kinds = HashMap::new();
        let mut parsed = BTreeSet::new();
        loop {
            let ctx = Ctx {
                omit: Some(&parsed),
                ..Ctx::default()
            };
            let result = ctx.run();
            for (path, kind) in ctx.kinds.into_inner() {
                kinds.entry(path).or_insert(kind);
            }
            match result {
                // A parsed value refused its placeholder: probe the rest without it.
                Err(ProbeError::Refused(path)) if parsed.insert(path.clone()) => {}
                // Otherwise only the probe's own placeholders were deserialized: an error would be a probe bug,
                // and the schema is then as complete as the probe got (the strict deserialization after the
                // checks still runs).
                _ => break,
            }
        }
        let structs: Vec<Vec<Seg>> = kinds
            .iter()
            .filter(|(_, k)| matches!(k, Kind::Struct(_)))
            .map(|(p, _)| p.clone())
            .collect();
        for path in structs {
            let required = required_fields(&path, &parsed);
            if let Some(Kind::Struct(fields)) = kinds.get_mut(&path) {
                for f in fields {
                    f.required = required.contains(f.name);
                }
            }
        }
        Schema { kinds, parsed }
    }
}

/// The fields serde refuses to do without in the struct at `path`: probe it with none of its fields, then with
/// the missing one added, until it is complete.
fn required_fields(path: &[Seg], omit: &BTreeSet<Vec<Seg>>) -> BTreeSet<&'static str> {
    let mut present = BTreeSet::new();
    loop {
        let ctx = Ctx {
            only: Some((path.to_vec(), present.clone())),
            omit: Some(omit),
            ..Ctx::default()
        };
        match ctx.run() {
            Err(ProbeError::Missing(field)) if present.insert(field) => {}
            _ => return present,
        }
    }
}

#[derive(Default)]
struct Ctx<'s> {
    kinds: RefCell<HashMap<Vec<Seg>, Kind>>,
    /// The struct at this path yields only these fields.
    only: Option<(Vec<Seg>, BTreeSet<&'static str>)>,
    /// The value at this path is this one, deserialized for real.
    feed: Option<(Vec<Seg>, toml::Value)>,
    /// These values are left out: a key absent, a list or a map empty.
    omit: Option<&'s BTreeSet<Vec<Seg>>>,
    /// With a feed, the schema already known: everything not on the way to the fed value and not required is
    /// left out.
    within: Option<&'s Schema>,
}

impl Ctx<'_> {
    fn run(&self) -> Result<Settings, ProbeError> {
        Settings::deserialize(Probe {
            ctx: self,
            path: Vec::new(),
        })
    }

    fn child<'de, T: DeserializeSeed<'de>>(
        &self,
        path: Vec<Seg>,
        seed: T,
    ) -> Result<T::Value, ProbeError> {
        match &self.feed {
            Some((at, value)) if *at == path => seed
                .deserialize(value.clone())
                .map_err(|e| ProbeError::Fed(e.message().to_owned())),
            // The type refused its placeholder (the innermost value that did is blamed).
            _ => seed
                .deserialize(Probe {
                    ctx: self,
                    path: path.clone(),
                })
                .map_err(|e| match e {
                    ProbeError::Other(_) => ProbeError::Refused(path),
                    e => e,
                }),
        }
    }

    fn omitted(&self, path: &[Seg]) -> bool {
        match (&self.feed, self.within) {
            (Some((at, _)), _) if at.starts_with(path) => false,
            (Some(_), Some(schema)) => !schema.required(path),
            _ => self.omit.is_some_and(|omit| omit.contains(path)),
        }
    }
}

#[derive(Debug)]
enum ProbeError {
    /// serde asked for a field the probe left out.
    Missing(&'static str),
    /// The fed value was refused, with this message.
    Fed(String),
    /// The type at this path refused the probe's placeholder.
    Refused(Vec<Seg>),
    Other(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Missing(field) => write!(f, "missing field {field}"),
            ProbeError::Refused(path) => write!(f, "the placeholder is refused at {path:?}"),
            ProbeError::Fed(m) | ProbeError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError::Other(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        ProbeError::Missing(field)
    }
}

struct Probe<'c> {
    ctx: &'c Ctx<'c>,
    path: Vec<Seg>,
}

impl Probe<'_> {
    fn record(&self, kind: Kind) {
        self.ctx
            .kinds
            .borrow_mut()
            .entry(self.path.clone())
            .or_insert(kind);
    }

    fn with(&self, seg: Seg) -> Vec<Seg> {
        let mut p = self.path.clone();
        p.push(seg);
        p
    }
}

macro_rules! unsigned {
    ($($method:ident: $t:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
            self.record(Kind::Int { min: 0, max: <$t>::MAX as i128 });
            visitor.visit_u64(0)
        }
    )*};
}

macro_rules! signed {
    ($($method:ident: $t:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
            self.record(Kind::Int { min: <$t>::MIN as i128, max: <$t>::MAX as i128 });
            visitor.visit_i64(0)
        }
    )*};
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Any);
        visitor.visit_u64(0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Bool);
        visitor.visit_bool(false)
    }

    unsigned!(deserialize_u8: u8, deserialize_u16: u16, deserialize_u32: u32, deserialize_u64: u64);
    signed!(deserialize_i8: i8, deserialize_i16: i16, deserialize_i32: i32, deserialize_i64: i64);

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Int {
            min: 0,
            max: i128::MAX,
        });
        visitor.visit_u64(0)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Int {
            min: i128::MIN,
            max: i128::MAX,
        });
        visitor.visit_i64(0)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Float);
        visitor.visit_f64(0.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Float);
        visitor.visit_f64(0.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Str);
        visitor.visit_char('x')
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Str);
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Str);
        visitor.visit_string(String::new())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Any);
        visitor.visit_bytes(&[])
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Any);
        visitor.visit_byte_buf(Vec::new())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        // TOML has no null: an optional key is its inner type, absent or present.
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Any);
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::List);
        let elem = self.with(Seg::Elem);
        let left = usize::from(!self.ctx.omitted(&elem));
        visitor.visit_seq(Elements {
            ctx: self.ctx,
            path: elem,
            left,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.record(Kind::List);
        let elem = self.with(Seg::Elem);
        visitor.visit_seq(Elements {
            ctx: self.ctx,
            path: elem,
            left: len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Map);
        let entry = self.with(Seg::Entry);
        let keys = if self.ctx.omitted(&entry) {
            Vec::new()
        } else {
            vec!["*"]
        };
        visitor.visit_map(Entries {
            ctx: self.ctx,
            path: entry,
            keys,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.record(Kind::Struct(
            fields
                .iter()
                .map(|&name| Field {
                    name,
                    required: false,
                })
                .collect(),
        ));
        let keys = fields
            .iter()
            .copied()
            .filter(|f| match &self.ctx.only {
                Some((at, only)) if *at == self.path => only.contains(f),
                _ => true,
            })
            .filter(|f| !self.ctx.omitted(&self.with(Seg::Field(f))))
            .collect();
        let path = self.path.clone();
        visitor.visit_map(Entries {
            ctx: self.ctx,
            path,
            keys,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.record(Kind::Enum(variants));
        let Some(first) = variants.first() else {
            return Err(ProbeError::Other("an enum without variants".into()));
        };
        visitor.visit_enum(UnitVariant(first))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }
}

/// A list of `left` placeholder elements.
struct Elements<'c> {
    ctx: &'c Ctx<'c>,
    path: Vec<Seg>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.ctx.child(self.path.clone(), seed).map(Some)
    }
}

/// A struct's fields (each at `path + Field(key)`), or one map entry `"*"` (at `path`, already `… + Entry`).
struct Entries<'c> {
    ctx: &'c Ctx<'c>,
    path: Vec<Seg>,
    keys: Vec<&'static str>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        match self.keys.first() {
            None => Ok(None),
            Some(key) => seed
                .deserialize(StrDeserializer::<ProbeError>::new(key))
                .map(Some),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        if self.keys.is_empty() {
            return Err(ProbeError::Other("a value without a key".into()));
        }
        let key = self.keys.remove(0);
        let path = match self.path.last() {
            Some(Seg::Entry) if key == "*" => self.path.clone(),
            _ => {
                let mut p = self.path.clone();
                p.push(Seg::Field(key));
                p
            }
        };
        self.ctx.child(path, seed)
    }
}

/// The first variant of an enum, as a unit variant.
struct UnitVariant(&'static str);

impl<'de> EnumAccess<'de> for UnitVariant {
    type Error = ProbeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), ProbeError> {
        let v = seed.deserialize(StrDeserializer::<ProbeError>::new(self.0))?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant {
    type Error = ProbeError;

    fn unit_variant(self) -> Result<(), ProbeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, ProbeError> {
        Err(ProbeError::Other("only unit variants are described".into()))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Other("only unit variants are described".into()))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Other("only unit variants are described".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(path: &[Seg]) -> Kind {
        Schema::of_settings()
            .kind(path)
            .cloned()
            .unwrap_or_else(|| panic!("no kind at {path:?}"))
    }

    #[test]
    fn the_schema_describes_every_kind_of_key() {
        use Seg::*;
        assert!(matches!(kind(&[]), Kind::Struct(f) if f.iter().any(|f| f.name == "upstream")));
        assert_eq!(
            kind(&[Field("server"), Field("max_body_bytes")]),
            Kind::Int {
                min: 0,
                max: u64::MAX as i128
            }
        );
        assert_eq!(
            kind(&[
                Field("policy"),
                Field("defaults"),
                Field("requests_per_minute")
            ]),
            Kind::Int {
                min: 0,
                max: u32::MAX as i128
            }
        );
        assert_eq!(kind(&[Field("upstream"), Field("api_key")]), Kind::Str);
        assert_eq!(kind(&[Field("upstream"), Field("api_key_file")]), Kind::Str);
        assert_eq!(
            kind(&[Field("policy"), Field("defaults"), Field("off_peak")]),
            Kind::Enum(&["allow", "force", "forbid", "fallback"])
        );
        assert_eq!(kind(&[Field("auth"), Field("algorithms")]), Kind::List);
        assert_eq!(kind(&[Field("auth"), Field("algorithms"), Elem]), Kind::Str);
        assert_eq!(kind(&[Field("models")]), Kind::Map);
        assert_eq!(
            kind(&[
                Field("models"),
                Entry,
                Field("credits"),
                Field("base"),
                Entry
            ]),
            Kind::Any
        );
        assert_eq!(kind(&[Field("auth"), Field("require_team")]), Kind::Bool);
    }

    #[test]
    fn required_fields_are_those_without_a_default() {
        let required = |path: &[Seg]| match kind(path) {
            Kind::Struct(fields) => fields
                .into_iter()
                .filter(|f| f.required)
                .map(|f| f.name)
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert!(required(&[]).is_empty());
        assert!(required(&[Seg::Field("server")]).is_empty());
        assert_eq!(
            required(&[Seg::Field("models"), Seg::Entry]),
            ["durations", "resolutions", "default_resolution", "credits"]
        );
        assert_eq!(
            required(&[Seg::Field("models"), Seg::Entry, Seg::Field("durations")]),
            ["min", "max", "default"]
        );
        assert!(required(&[Seg::Field("policy"), Seg::Field("defaults")]).is_empty());
    }

    #[test]
    fn a_value_the_schema_cannot_describe_is_checked_by_its_own_type() {
        let path = [Seg::Field("pricing"), Seg::Field("off_peak_factor")];
        let schema = Schema::of_settings();
        assert!(schema.check(&path, &toml::Value::Float(0.5)).is_ok());
        assert!(
            schema
                .check(&path, &toml::Value::String("0.25".into()))
                .is_ok()
        );
        let e = schema.check(&path, &toml::Value::Integer(-1)).unwrap_err();
        assert!(e.contains("not a non-negative decimal"), "{e}");
    }

    #[test]
    fn the_schema_knows_which_keys_parse_their_value() {
        use Seg::*;
        let schema = Schema::of_settings();
        for (path, kind) in [
            (vec![Field("policy"), Field("timezone")], Kind::Str),
            (vec![Field("upstream"), Field("base_url")], Kind::Str),
            (
                vec![
                    Field("policy"),
                    Field("defaults"),
                    Field("immediate_hours"),
                    Elem,
                ],
                Kind::Str,
            ),
            (
                vec![Field("policy"), Field("teams"), Entry, Field("team_burst")],
                Kind::Int {
                    min: 0,
                    max: i128::from(u32::MAX),
                },
            ),
            (
                vec![Field("policy"), Field("global"), Field("max_in_flight")],
                Kind::Int {
                    min: 0,
                    max: i128::from(u32::MAX),
                },
            ),
        ] {
            assert!(schema.parsed(&path), "{path:?}");
            assert_eq!(schema.kind(&path), Some(&kind), "{path:?}");
        }
        for plain in [
            vec![Field("server"), Field("listen")],
            vec![Field("policy"), Field("defaults"), Field("daily_credits")],
        ] {
            assert!(!schema.parsed(&plain), "{plain:?}");
        }
        // The type judges a value given there.
        let zone = [Field("policy"), Field("timezone")];
        assert!(schema.check(&zone, &"Europe/Berlin".into()).is_ok());
        let e = schema.check(&zone, &"Mars/Olympus".into()).unwrap_err();
        assert!(e.contains("is not an IANA time zone"), "{e}");
        // Keys after a parsed one are still described (the probe went on without it).
        assert_eq!(
            schema.kind(&[Field("policy"), Field("team_can_read_tasks")]),
            Some(&Kind::Bool)
        );
    }
}
