//! Lexing: `nft -j` output read into borrowed JSON trees, one top-level object at a time.
//!
//! This stage knows JSON and the shape of the `nftables` array (`{"kind": {body}}` objects), not
//! what a chain or a rule is: [`read_objects`] hands each object's kind and [`Body`] to the table
//! stage (`table.rs`), which takes what it needs and gives the trees back to the [`Pool`]. The
//! split is here because this is the part tuned for allocation (strings borrowed from the input,
//! containers reused): a 10,000-Service table is ~45 MB of JSON and several times that as a
//! `serde_json::Value`, so nothing here builds what the table stage does not read.
//!
//! [`J`] answers as `serde_json::Value` would (a repeated key's last value, objects iterated by
//! sorted key), so the stages above it behave as they did when they read `Value`s.

use std::borrow::Cow;
use std::cell::RefCell;

use serde_json::Value;

/// Reads `{"nftables": [...]}`, giving `add` each array element that is an object (its kind, its
/// body and the pool its trees go back to); `Ok(true)` when the `nftables` key was there. The pool
/// lives as long as the read: the first objects allocate, the rest reuse their containers.
pub(super) fn read_objects<'de, F>(json: &'de str, add: F) -> Result<bool, serde_json::Error>
where
    F: FnMut(&str, Box<Body<'de>>, &RefCell<Pool<'de>>),
{
    let pool = RefCell::default();
    let mut de = serde_json::Deserializer::from_str(json);
    serde::Deserializer::deserialize_map(&mut de, RootVisitor(add, &pool)).and_then(|seen| de.end().map(|()| seen))
}

/// `{"nftables": [...]}`: feeds each array object to the sink; `true` when the key was there.
struct RootVisitor<'t, 'de, F>(F, &'t RefCell<Pool<'de>>);

impl<'de, F> serde::de::Visitor<'de> for RootVisitor<'_, 'de, F>
where
    F: FnMut(&str, Box<Body<'de>>, &RefCell<Pool<'de>>),
{
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with an \"nftables\" array")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<bool, A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key == "nftables" {
                map.next_value_seed(ObjectsSeed(&mut self.0, self.1))?;
                seen = true;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(seen)
    }
}

struct ObjectsSeed<'t, 'de, F>(&'t mut F, &'t RefCell<Pool<'de>>);

impl<'de, F> serde::de::DeserializeSeed<'de> for ObjectsSeed<'_, 'de, F>
where
    F: FnMut(&str, Box<Body<'de>>, &RefCell<Pool<'de>>),
{
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F> serde::de::Visitor<'de> for ObjectsSeed<'_, 'de, F>
where
    F: FnMut(&str, Box<Body<'de>>, &RefCell<Pool<'de>>),
{
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of nft objects")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(obj) = seq.next_element_seed(ObjectSeed(self.1))? {
            if let Some((kind, body)) = obj {
                (self.0)(&kind, body, self.1);
            }
        }
        Ok(())
    }
}

/// One element of the `nftables` array, `{"kind": {body}}`: the kind and the fields of the body
/// the reader uses, without building the rest. An object with several keys gives the smallest
/// (the last of equal ones), as a `serde_json::Value` object iterates first; other elements
/// give `None`.
#[derive(Clone, Copy)]
struct ObjectSeed<'p, 'de>(&'p RefCell<Pool<'de>>);

impl<'de> serde::de::DeserializeSeed<'de> for ObjectSeed<'_, 'de> {
    type Value = Option<(Cow<'de, str>, Box<Body<'de>>)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObjectSeed<'_, 'de> {
    type Value = Option<(Cow<'de, str>, Box<Body<'de>>)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an nft object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut best: Option<(Cow<'de, str>, Box<Body<'de>>)> = None;
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let body = map.next_value_seed(BodySeed(self.0))?;
            if best.as_ref().is_none_or(|(b, _)| k <= *b) {
                if let Some((_, old)) = best.replace((k, body)) {
                    old.recycle(self.0);
                }
            } else {
                body.recycle(self.0);
            }
        }
        Ok(best)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The fields of an object's body the reader uses, each the last value of its key (as `Value`
/// keeps); other keys are skipped unread, and a body that is not an object has none.
#[derive(Debug, Default)]
pub(super) struct Body<'a> {
    pub(super) table: J<'a>,
    pub(super) name: J<'a>,
    pub(super) family: J<'a>,
    pub(super) hook: J<'a>,
    pub(super) chain: J<'a>,
    pub(super) handle: J<'a>,
    pub(super) comment: J<'a>,
    pub(super) timeout: J<'a>,
    pub(super) expr: J<'a>,
    pub(super) elem: J<'a>,
}

#[derive(Clone, Copy)]
struct BodySeed<'p, 'de>(&'p RefCell<Pool<'de>>);

impl<'de> BodySeed<'_, 'de> {
    /// An empty body, from the pool when there is one: bodies are boxed so that the ~300-byte
    /// struct is not copied on its way from the reader to [`Table::add`](super::table::Table::add).
    fn empty(&self) -> Box<Body<'de>> {
        self.0.borrow_mut().bodies.pop().unwrap_or_default()
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_, 'de> {
    type Value = Box<Body<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Box<Body<'de>>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_, 'de> {
    type Value = Box<Body<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an nft object body")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Box<Body<'de>>, A::Error> {
        let mut b = self.empty();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let slot = match k.as_ref() {
                "table" => &mut b.table,
                "name" => &mut b.name,
                "family" => &mut b.family,
                "hook" => &mut b.hook,
                "chain" => &mut b.chain,
                "handle" => &mut b.handle,
                "comment" => &mut b.comment,
                "timeout" => &mut b.timeout,
                "expr" => &mut b.expr,
                "elem" => &mut b.elem,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            let old = std::mem::replace(slot, map.next_value_seed(JVisitor(Some(self.0)))?);
            self.0.borrow_mut().recycle(old);
        }
        Ok(b)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Box<Body<'de>>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(self.empty())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_str<E>(self, _: &str) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_unit<E>(self) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
}

/// A JSON value whose strings borrow from the input (unless they hold escapes), with objects as
/// key/value lists: reading `nft -j` output into these is several times cheaper than into
/// `serde_json::Value` (a `String` per string and a `BTreeMap` per object). The accessors answer
/// as `Value`'s do: a repeated key's last value wins, and [`J::first_entry`] is the entry a
/// `Value` object iterates first (the smallest key).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) enum J<'a> {
    #[default]
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    Obj(Vec<(Cow<'a, str>, J<'a>)>),
}

static NULL: J<'static> = J::Null;

impl<'a> J<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&J<'a>> {
        match self {
            J::Obj(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `get` or `Null`.
    pub(super) fn at(&self, key: &str) -> &J<'a> {
        self.get(key).unwrap_or(&NULL)
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string, keeping the borrow from the input.
    pub(super) fn as_cow(&self) -> Option<Cow<'a, str>> {
        match self {
            J::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub(super) fn as_u64(&self) -> Option<u64> {
        match self {
            J::Num(n) => n.as_u64(),
            _ => None,
        }
    }

    pub(super) fn as_array(&self) -> Option<&Vec<J<'a>>> {
        match self {
            J::Arr(a) => Some(a),
            _ => None,
        }
    }

    pub(super) fn is_null(&self) -> bool {
        matches!(self, J::Null)
    }

    pub(super) fn is_array(&self) -> bool {
        matches!(self, J::Arr(_))
    }

    /// The entry a `serde_json::Value` object lists first: the smallest key, its last value.
    pub(super) fn first_entry(&self) -> Option<(&str, &J<'a>)> {
        let J::Obj(m) = self else { return None };
        let mut best: Option<(&str, &J<'a>)> = None;
        for (k, v) in m {
            if best.is_none_or(|(b, _)| k.as_ref() <= b) {
                best = Some((k.as_ref(), v));
            }
        }
        best
    }

    /// Takes the value of `key` out (the last one, as [`J::get`] reads), leaving `Null`.
    pub(super) fn take(&mut self, key: &str) -> J<'a> {
        match self {
            J::Obj(m) => m
                .iter_mut()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| std::mem::replace(v, J::Null))
                .unwrap_or(J::Null),
            _ => J::Null,
        }
    }

    pub(super) fn to_value(&self) -> Value {
        match self {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Num(n) => Value::Number(n.clone()),
            J::Str(s) => Value::String(s.to_string()),
            J::Arr(a) => Value::Array(a.iter().map(J::to_value).collect()),
            J::Obj(m) => Value::Object(m.iter().map(|(k, v)| (k.to_string(), v.to_value())).collect()),
        }
    }
}

/// Compact JSON, as `serde_json::Value` prints it (for statements the renderer does not know).
impl std::fmt::Display for J<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_value().fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for J<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor(None))
    }
}

/// Containers of [`J`] trees that were read and dropped, for the next ones: the objects of `nft -j`
/// output are read one at a time, so after the first few a tree needs no allocation.
#[derive(Default)]
pub(super) struct Pool<'a> {
    pub(super) arrs: Vec<Vec<J<'a>>>,
    pub(super) objs: Vec<Vec<(Cow<'a, str>, J<'a>)>>,
    /// Emptied bodies. Boxed on purpose: a body moves from the pool to a rule and back by
    /// pointer, never copied (they are large and there are 60,000 of them at 10,000 Services).
    #[allow(clippy::vec_box, reason = "bodies move in and out of the pool by pointer")]
    bodies: Vec<Box<Body<'a>>>,
}

impl<'a> Pool<'a> {
    /// An empty body, reused when there is one (the kernel reader builds its bodies itself).
    pub(super) fn body(&mut self) -> Box<Body<'a>> {
        self.bodies.pop().unwrap_or_default()
    }

    /// Drops the containers kept for reuse (a reader that does not reuse them keeps the pool
    /// from growing with every object).
    pub(super) fn drop_containers(&mut self) {
        self.arrs.clear();
        self.objs.clear();
    }

    pub(super) fn recycle(&mut self, j: J<'a>) {
        match j {
            J::Arr(mut a) => {
                for x in a.drain(..) {
                    self.recycle(x);
                }
                self.arrs.push(a);
            }
            J::Obj(mut m) => {
                for (_, x) in m.drain(..) {
                    self.recycle(x);
                }
                self.objs.push(m);
            }
            _ => {}
        }
    }
}

impl<'a> Body<'a> {
    /// Gives the body's trees back to the pool.
    pub(super) fn recycle(mut self: Box<Self>, pool: &RefCell<Pool<'a>>) {
        let mut p = pool.borrow_mut();
        let b = &mut *self;
        for j in [
            &mut b.table,
            &mut b.name,
            &mut b.family,
            &mut b.hook,
            &mut b.chain,
            &mut b.handle,
            &mut b.comment,
            &mut b.timeout,
            &mut b.expr,
            &mut b.elem,
        ] {
            let j = std::mem::take(j);
            p.recycle(j);
        }
        p.bodies.push(self);
    }
}

/// Reads a [`J`], taking its containers from the pool when there is one.
#[derive(Clone, Copy)]
pub(super) struct JVisitor<'p, 'de>(pub(super) Option<&'p RefCell<Pool<'de>>>);

impl<'de> serde::de::DeserializeSeed<'de> for JVisitor<'_, 'de> {
    type Value = J<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<J<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JVisitor<'_, 'de> {
    type Value = J<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J<'de>, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J<'de>, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<J<'de>, E> {
        Ok(serde_json::Number::from_f64(v).map_or(J::Null, J::Num))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v)))
    }
    fn visit_none<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_unit<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<J<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        let mut v = self.0.and_then(|p| p.borrow_mut().arrs.pop()).unwrap_or_default();
        while let Some(x) = seq.next_element_seed(self)? {
            v.push(x);
        }
        Ok(J::Arr(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        let mut m = self.0.and_then(|p| p.borrow_mut().objs.pop()).unwrap_or_default();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            m.push((k, map.next_value_seed(self)?));
        }
        Ok(J::Obj(m))
    }
}

/// An object key, borrowed from the input when it holds no escapes.
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}
