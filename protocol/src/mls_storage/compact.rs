//! A serde adapter that stores sequences of `u8` as byte strings.
//!
//! openmls keeps keys, signatures and credentials in `Vec<u8>`s (through
//! `tls_codec::VLBytes`), which serde presents as sequences of numbers: one
//! MessagePack integer per byte, written and read one at a time. Wrapped in
//! [`Compact`], a serializer writes every sequence whose elements all serialize as
//! `u8` as one byte string (MessagePack `bin`) instead; wrapped in [`CompactDe`], a
//! deserializer hands a byte string to a visitor that asked for a sequence as a
//! sequence of `u8`. Byte strings are also still read where the type asks for
//! bytes, and sequences written element by element are still read as before.
//!
//! Everything else passes through unchanged.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};
use serde::ser::{self, Impossible, Serialize};

// ---------------------------------------------------------------- serializing

/// A serializer writing sequences of `u8` as byte strings.
pub(super) struct Compact<S>(pub(super) S);

/// A value serialized through [`Compact`].
struct Wrapped<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Wrapped<'_, T> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Compact(serializer))
    }
}

/// A compound serializer whose fields are serialized through [`Compact`].
pub(super) struct Fields<C>(C);

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $name(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> {
            self.0.$name($($arg),*)
        })*
    };
}

impl<S: ser::Serializer> ser::Serializer for Compact<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Seq<S>;
    type SerializeTuple = Fields<S::SerializeTuple>;
    type SerializeTupleStruct = Fields<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Fields<S::SerializeTupleVariant>;
    type SerializeMap = Fields<S::SerializeMap>;
    type SerializeStruct = Fields<S::SerializeStruct>;
    type SerializeStructVariant = Fields<S::SerializeStructVariant>;

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Wrapped(value))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Wrapped(value))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Wrapped(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<S>, S::Error> {
        Ok(Seq {
            serializer: Some(self.0),
            len,
            bytes: Vec::with_capacity(len.unwrap_or(0).min(1 << 16)),
            elements: None,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Fields)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Fields)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Fields)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Fields)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Fields)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(Fields)
    }
}

/// A sequence being serialized: its elements are collected as bytes while they are
/// all `u8`; the first element that is not turns it into an ordinary sequence.
pub(super) struct Seq<S: ser::Serializer> {
    /// The serializer, until the sequence is started as an ordinary one.
    serializer: Option<S>,
    len: Option<usize>,
    bytes: Vec<u8>,
    elements: Option<S::SerializeSeq>,
}

fn consumed<E: ser::Error>() -> E {
    E::custom("compact serializer used after it finished")
}

impl<S: ser::Serializer> ser::SerializeSeq for Seq<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        if let Some(elements) = &mut self.elements {
            return elements.serialize_element(&Wrapped(value));
        }
        if let Ok(byte) = value.serialize(U8Probe) {
            self.bytes.push(byte);
            return Ok(());
        }
        let serializer = self.serializer.take().ok_or_else(consumed::<S::Error>)?;
        let mut elements = serializer.serialize_seq(self.len)?;
        for byte in self.bytes.drain(..) {
            elements.serialize_element(&byte)?;
        }
        elements.serialize_element(&Wrapped(value))?;
        self.elements = Some(elements);
        Ok(())
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        match (self.elements, self.serializer) {
            (Some(elements), _) => elements.end(),
            (None, Some(serializer)) if self.bytes.is_empty() => {
                ser::SerializeSeq::end(serializer.serialize_seq(Some(0))?)
            }
            (None, Some(serializer)) => serializer.serialize_bytes(&self.bytes),
            (None, None) => Err(consumed()),
        }
    }
}

macro_rules! fields {
    ($trait:ident, $method:ident) => {
        impl<C: ser::$trait> ser::$trait for Fields<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                self.0.$method(&Wrapped(value))
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    };
    ($trait:ident) => {
        impl<C: ser::$trait> ser::$trait for Fields<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), C::Error> {
                self.0.serialize_field(key, &Wrapped(value))
            }

            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.0.skip_field(key)
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    };
}

fields!(SerializeTuple, serialize_element);
fields!(SerializeTupleStruct, serialize_field);
fields!(SerializeTupleVariant, serialize_field);
fields!(SerializeStruct);
fields!(SerializeStructVariant);

impl<C: ser::SerializeMap> ser::SerializeMap for Fields<C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        self.0.serialize_key(&Wrapped(key))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        self.0.serialize_value(&Wrapped(value))
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.0.end()
    }
}

/// Serializes a value only if it is a `u8`.
struct U8Probe;

/// The value is not a `u8`.
#[derive(Debug)]
struct NotU8;

impl fmt::Display for NotU8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a u8")
    }
}

impl std::error::Error for NotU8 {}

impl ser::Error for NotU8 {
    fn custom<T: fmt::Display>(_: T) -> Self {
        NotU8
    }
}

macro_rules! not_u8 {
    ($($name:ident($($ty:ty),*);)*) => {
        $(fn $name(self, $(_: $ty),*) -> Result<u8, NotU8> {
            Err(NotU8)
        })*
    };
}

impl ser::Serializer for U8Probe {
    type Ok = u8;
    type Error = NotU8;
    type SerializeSeq = Impossible<u8, NotU8>;
    type SerializeTuple = Impossible<u8, NotU8>;
    type SerializeTupleStruct = Impossible<u8, NotU8>;
    type SerializeTupleVariant = Impossible<u8, NotU8>;
    type SerializeMap = Impossible<u8, NotU8>;
    type SerializeStruct = Impossible<u8, NotU8>;
    type SerializeStructVariant = Impossible<u8, NotU8>;

    fn serialize_u8(self, v: u8) -> Result<u8, NotU8> {
        Ok(v)
    }

    not_u8! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<u8, NotU8> {
        Err(NotU8)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<u8, NotU8> {
        Err(NotU8)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<u8, NotU8> {
        Err(NotU8)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotU8> {
        Err(NotU8)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotU8> {
        Err(NotU8)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotU8> {
        Err(NotU8)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotU8> {
        Err(NotU8)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotU8> {
        Err(NotU8)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotU8> {
        Err(NotU8)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotU8> {
        Err(NotU8)
    }
}

// -------------------------------------------------------------- deserializing

/// A deserializer reading byte strings as sequences of `u8` where a sequence is
/// asked for.
pub(super) struct CompactDe<D>(pub(super) D);

/// A visitor whose nested values are deserialized through [`CompactDe`]; with
/// `bytes_as_seq`, byte strings are visited as sequences of `u8`.
struct Vis<V> {
    inner: V,
    bytes_as_seq: bool,
}

fn vis<V>(inner: V) -> Vis<V> {
    Vis {
        inner,
        bytes_as_seq: false,
    }
}

macro_rules! forward_de {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $name<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.0.$name($($arg,)* vis(visitor))
        })*
    };
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for CompactDe<D> {
    type Error = D::Error;

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward_de! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_seq(Vis {
            inner: visitor,
            bytes_as_seq: true,
        })
    }
}

macro_rules! forward_visit {
    ($($name:ident($ty:ty);)*) => {
        $(fn $name<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$name(v)
        })*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        if self.bytes_as_seq {
            self.inner.visit_seq(Bytes::new(v))
        } else {
            self.inner.visit_bytes(v)
        }
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        if self.bytes_as_seq {
            self.inner.visit_seq(Bytes::new(v))
        } else {
            self.inner.visit_borrowed_bytes(v)
        }
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        if self.bytes_as_seq {
            self.inner.visit_seq(Bytes::new(&v))
        } else {
            self.inner.visit_byte_buf(v)
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(CompactDe(d))
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(CompactDe(d))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Access(seq))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Access(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Access(data))
    }
}

/// A byte string read as a sequence of `u8`.
struct Bytes<'a, E> {
    rest: std::slice::Iter<'a, u8>,
    error: std::marker::PhantomData<E>,
}

impl<'a, E> Bytes<'a, E> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes.iter(),
            error: std::marker::PhantomData,
        }
    }
}

impl<'de, E: de::Error> de::SeqAccess<'de> for Bytes<'_, E> {
    type Error = E;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, E> {
        self.rest
            .next()
            .map(|byte| seed.deserialize(byte.into_deserializer()))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.rest.len())
    }
}

/// A seed whose value is deserialized through [`CompactDe`].
struct Seed<T>(T);

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<T> {
    type Value = T::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        self.0.deserialize(CompactDe(d))
    }
}

/// A sequence, map, enum or variant access whose values are deserialized through
/// [`CompactDe`].
struct Access<A>(A);

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(value, variant)| (value, Access(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, vis(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, vis(visitor))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Kind {
        Unit,
        Bytes(Vec<u8>),
        Tuple(Vec<u8>, u16),
        Struct { data: Vec<u8> },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Value {
        bytes: Vec<u8>,
        empty: Vec<u8>,
        nested: Vec<Vec<u8>>,
        numbers: Vec<u16>,
        fixed: [u8; 4],
        optional: Option<Vec<u8>>,
        kinds: Vec<Kind>,
        map: std::collections::BTreeMap<String, Vec<u8>>,
        #[serde(with = "serde_bytes_like")]
        blob: Vec<u8>,
    }

    /// A field serialized as bytes, as `serde_bytes` does.
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            struct Buf;
            impl serde::de::Visitor<'_> for Buf {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
            }
            d.deserialize_byte_buf(Buf)
        }
    }

    fn sample() -> Value {
        Value {
            bytes: (0..=255).collect(),
            empty: vec![],
            nested: vec![vec![1, 2], vec![], vec![200]],
            numbers: vec![1, 300],
            fixed: [9, 8, 7, 6],
            optional: Some(vec![5; 40]),
            kinds: vec![
                Kind::Unit,
                Kind::Bytes(vec![1, 2, 3]),
                Kind::Tuple(vec![4], 5),
                Kind::Struct { data: vec![6, 7] },
            ],
            map: [("k".to_string(), vec![255, 0])].into_iter().collect(),
            blob: vec![3, 2, 1],
        }
    }

    fn to_msgpack<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        value
            .serialize(Compact(
                &mut rmp_serde::Serializer::new(&mut out).with_struct_map(),
            ))
            .unwrap();
        out
    }

    fn from_msgpack<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> T {
        T::deserialize(CompactDe(&mut rmp_serde::Deserializer::from_read_ref(
            bytes,
        )))
        .unwrap()
    }

    #[test]
    fn round_trips_and_writes_byte_strings() {
        let value = sample();
        let compact = to_msgpack(&value);
        assert_eq!(from_msgpack::<Value>(&compact), value);
        // 0..=255 as one bin 16 (0xC5, length 256, then the bytes), not 256 integers.
        let mut bin = vec![0xC5, 1, 0];
        bin.extend(0..=255u8);
        assert!(compact.windows(bin.len()).any(|w| w == bin.as_slice()));
        // Plain MessagePack (numbers one by one) is still read.
        let mut plain = Vec::new();
        value
            .serialize(&mut rmp_serde::Serializer::new(&mut plain).with_struct_map())
            .unwrap();
        assert!(
            plain.len() > compact.len() + 100,
            "{} vs {}",
            plain.len(),
            compact.len()
        );
        assert_eq!(from_msgpack::<Value>(&plain), value);
    }

    #[test]
    fn mixed_sequences_stay_sequences() {
        // A sequence whose first elements are u8 and later ones are not.
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(untagged)]
        enum Item {
            Small(u8),
            Text(String),
        }
        let items = vec![Item::Small(1), Item::Small(2), Item::Text("x".into())];
        let compact = to_msgpack(&items);
        assert_eq!(from_msgpack::<Vec<Item>>(&compact), items);
    }
}
