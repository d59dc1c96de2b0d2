//! Protobuf wire bytes straight to proto3 JSON, without a `DynamicMessage` in between: the REST
//! path's answers.
//!
//! A plan per message type, compiled once from the descriptor pool (its fields in number order,
//! each field's JSON key already quoted and escaped, its kind), walks the upstream's bytes and
//! writes the same JSON as prost-reflect's serializer with the edge's options (JSON names,
//! default values left out, 64-bit integers as strings, enums by name, the well-known types'
//! own forms). Covered: every scalar, enums, nested and repeated messages, maps, oneofs, proto3
//! `optional`, `Timestamp`, `Duration`, the wrappers and `Empty`. The writer [`Declined`]s what
//! it does not cover, and the caller takes the general path (decode into a `DynamicMessage`,
//! then serialize), which also gives the error for bytes that are not a valid message:
//! `Any`, `Struct`, `Value`, `ListValue`, `FieldMask`, messages with extensions, files that are
//! not proto3, and any input the general path might read differently (a malformed or truncated
//! field, a wire type that does not fit its field, invalid UTF-8, two members of one oneof, a
//! timestamp or duration out of range, a group, nesting deeper than [`MAX_DEPTH`], a map of
//! more than [`MAX_MAP_ENTRIES`] entries).
//!
//! The two paths are held equal by a property test over every response type of the contracts
//! (`tests/wire_json.rs`) and by the `wire_json` fuzz target.

use std::collections::HashMap;
use std::ops::Range;

use base64::Engine as _;
use prost_reflect::{Cardinality, Kind, MessageDescriptor, Syntax};
use serde::Serializer as _;

/// Nesting deeper than this is declined (prost's own limit is 100).
pub const MAX_DEPTH: u32 = 64;

/// Maps with more entries are declined (duplicate keys are found pairwise).
pub const MAX_MAP_ENTRIES: usize = 256;

/// The writer does not cover this message type or these bytes: take the general path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the direct JSON writer declined the message; the general path takes it")]
pub struct Declined;

/// A message type's plan in a [`WireJson`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanId(u32);

/// The compiled plans of the message types the edge answers with.
#[derive(Debug, Default)]
pub struct WireJson {
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
    by_name: HashMap<String, u32>,
    enums_by_name: HashMap<String, u32>,
}

/// A scalar field type, as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
}

/// A field's value type.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Scalar(Scalar),
    /// An enum, by its index in [`WireJson::enums`].
    Enum(u32),
    /// A message, by its index in [`WireJson::messages`].
    Message(u32),
}

/// How many values a field holds.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One value; `presence`: written when set even if it is the default.
    Singular {
        presence: bool,
    },
    Repeated,
    /// A map of `key` to `value`.
    Map {
        key: Scalar,
        value: Ty,
    },
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// `"jsonName":`, quoted and escaped.
    key: Box<[u8]>,
    ty: Ty,
    shape: Shape,
    /// The field's real (not synthetic) oneof, by its index in the message.
    oneof: Option<u32>,
}

/// A message type with a JSON form of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    /// An ordinary message: a JSON object of its fields.
    None,
    Timestamp,
    Duration,
    /// A wrapper (`google.protobuf.Int32Value` ...): its `value` field's JSON.
    Wrapper(Scalar),
    Empty,
    /// Not covered (`Any`, `Struct`, ...).
    Declined,
}

#[derive(Debug)]
struct MessagePlan {
    special: Special,
    /// By field number.
    fields: Vec<FieldPlan>,
    /// This type or one it reaches is not covered.
    declined: bool,
}

#[derive(Debug)]
struct EnumPlan {
    /// By number: the value's name, quoted (the first name of an aliased number).
    names: Vec<(i32, Box<[u8]>)>,
}

/// One field of a message as found on the wire.
#[derive(Debug, Clone, Copy)]
struct Occurrence {
    /// The field's index in its plan.
    field: u32,
    value: Raw,
}

/// A value on the wire; lengths are ranges of the message's bytes.
#[derive(Debug, Clone, Copy)]
enum Raw {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(usize, usize),
}

impl WireJson {
    /// No plans yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles `desc` and every type it reaches (each once); `None` when the writer does not
    /// cover it, so its answers take the general path.
    pub fn compile(&mut self, desc: &MessageDescriptor) -> Option<PlanId> {
        let index = self.message(desc);
        self.settle_declined();
        (!self.messages[index as usize].declined).then_some(PlanId(index))
    }

    /// Writes the message of type `plan` in `bytes` as JSON to `out`. On [`Declined`], `out`
    /// holds a partial answer: discard it.
    pub fn write(&self, plan: PlanId, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Declined> {
        Writer::new(self, None).message(plan.0, bytes, 0, out)
    }

    /// Writes only the message field `number` of the message of type `plan` in `bytes` (a
    /// route's `response_body`); the rest of the message is checked as [`write`](Self::write)
    /// checks it. `{}` (the type's default JSON) when the field is absent.
    pub fn write_field(
        &self,
        plan: PlanId,
        number: u32,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Declined> {
        let message = &self.messages[plan.0 as usize];
        let (index, field) = message
            .fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.number == number)
            .ok_or(Declined)?;
        let (Shape::Singular { .. }, Ty::Message(inner)) = (field.shape, field.ty) else {
            return Err(Declined);
        };
        let mut whole = Vec::with_capacity(bytes.len() * 2 + 16);
        let mut writer = Writer::new(self, Some(index as u32));
        writer.message(plan.0, bytes, 0, &mut whole)?;
        match writer.captured {
            Some((start, end)) => out.extend_from_slice(&whole[start..end]),
            None => {
                writer.capture = None;
                writer.message(inner, &[], 1, out)?;
            }
        }
        Ok(())
    }

    fn message(&mut self, desc: &MessageDescriptor) -> u32 {
        if let Some(&index) = self.by_name.get(desc.full_name()) {
            return index;
        }
        let index = self.messages.len() as u32;
        self.by_name.insert(desc.full_name().to_string(), index);
        let special = special(desc);
        self.messages.push(MessagePlan {
            special,
            fields: Vec::new(),
            declined: special == Special::Declined,
        });
        if special != Special::None {
            return index;
        }
        let mut declined =
            desc.parent_file().syntax() != Syntax::Proto3 || desc.extensions().next().is_some();
        let oneofs: Vec<_> = desc.oneofs().filter(|o| !o.is_synthetic()).collect();
        let mut fields = Vec::with_capacity(desc.fields().len());
        for field in desc.fields() {
            let key = {
                let mut key = serde_json::to_vec(field.json_name()).unwrap_or_default();
                key.push(b':');
                key.into_boxed_slice()
            };
            let oneof = field.containing_oneof().and_then(|o| {
                oneofs
                    .iter()
                    .position(|x| *x == o)
                    .map(|position| position as u32)
            });
            let shape = if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    declined = true;
                    continue;
                };
                let key = entry.map_entry_key_field().kind();
                let value = entry.map_entry_value_field().kind();
                match (scalar(&key), self.ty(&value)) {
                    (Some(key), Some(value)) => Shape::Map { key, value },
                    _ => {
                        declined = true;
                        continue;
                    }
                }
            } else if field.cardinality() == Cardinality::Repeated {
                Shape::Repeated
            } else {
                Shape::Singular {
                    presence: field.supports_presence(),
                }
            };
            let ty = if let Shape::Map { value, .. } = shape {
                value
            } else if field.is_group() {
                declined = true;
                continue;
            } else {
                match self.ty(&field.kind()) {
                    Some(ty) => ty,
                    None => {
                        declined = true;
                        continue;
                    }
                }
            };
            fields.push(FieldPlan {
                number: field.number(),
                key,
                ty,
                shape,
                oneof,
            });
        }
        fields.sort_by_key(|f| f.number);
        let plan = &mut self.messages[index as usize];
        plan.fields = fields;
        plan.declined |= declined;
        index
    }

    fn ty(&mut self, kind: &Kind) -> Option<Ty> {
        Some(match kind {
            Kind::Message(m) => Ty::Message(self.message(m)),
            Kind::Enum(e) => {
                if e.full_name() == "google.protobuf.NullValue" {
                    return None;
                }
                if let Some(&index) = self.enums_by_name.get(e.full_name()) {
                    return Some(Ty::Enum(index));
                }
                let mut names: Vec<(i32, Box<[u8]>)> = Vec::new();
                for value in e.values() {
                    if names.iter().any(|(n, _)| *n == value.number()) {
                        continue;
                    }
                    // The name prost-reflect writes for this number.
                    let name = e.get_value(value.number())?;
                    let quoted = serde_json::to_vec(name.name()).ok()?;
                    names.push((value.number(), quoted.into_boxed_slice()));
                }
                names.sort_by_key(|(n, _)| *n);
                let index = self.enums.len() as u32;
                self.enums.push(EnumPlan { names });
                self.enums_by_name.insert(e.full_name().to_string(), index);
                Ty::Enum(index)
            }
            other => Ty::Scalar(scalar(other)?),
        })
    }

    /// A message is declined when a type it reaches is.
    fn settle_declined(&mut self) {
        loop {
            let mut changed = false;
            for m in 0..self.messages.len() {
                if self.messages[m].declined {
                    continue;
                }
                let reaches_declined = self.messages[m]
                    .fields
                    .iter()
                    .any(|f| matches!(f.ty, Ty::Message(t) if self.messages[t as usize].declined));
                if reaches_declined {
                    self.messages[m].declined = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
}

fn scalar(kind: &Kind) -> Option<Scalar> {
    Some(match kind {
        Kind::Double => Scalar::Double,
        Kind::Float => Scalar::Float,
        Kind::Int32 => Scalar::Int32,
        Kind::Int64 => Scalar::Int64,
        Kind::Uint32 => Scalar::Uint32,
        Kind::Uint64 => Scalar::Uint64,
        Kind::Sint32 => Scalar::Sint32,
        Kind::Sint64 => Scalar::Sint64,
        Kind::Fixed32 => Scalar::Fixed32,
        Kind::Fixed64 => Scalar::Fixed64,
        Kind::Sfixed32 => Scalar::Sfixed32,
        Kind::Sfixed64 => Scalar::Sfixed64,
        Kind::Bool => Scalar::Bool,
        Kind::String => Scalar::String,
        Kind::Bytes => Scalar::Bytes,
        Kind::Message(_) | Kind::Enum(_) => return None,
    })
}

fn special(desc: &MessageDescriptor) -> Special {
    match desc.full_name() {
        "google.protobuf.Timestamp" => Special::Timestamp,
        "google.protobuf.Duration" => Special::Duration,
        "google.protobuf.DoubleValue" => Special::Wrapper(Scalar::Double),
        "google.protobuf.FloatValue" => Special::Wrapper(Scalar::Float),
        "google.protobuf.Int64Value" => Special::Wrapper(Scalar::Int64),
        "google.protobuf.UInt64Value" => Special::Wrapper(Scalar::Uint64),
        "google.protobuf.Int32Value" => Special::Wrapper(Scalar::Int32),
        "google.protobuf.UInt32Value" => Special::Wrapper(Scalar::Uint32),
        "google.protobuf.BoolValue" => Special::Wrapper(Scalar::Bool),
        "google.protobuf.StringValue" => Special::Wrapper(Scalar::String),
        "google.protobuf.BytesValue" => Special::Wrapper(Scalar::Bytes),
        "google.protobuf.Empty" => Special::Empty,
        "google.protobuf.Any"
        | "google.protobuf.Struct"
        | "google.protobuf.Value"
        | "google.protobuf.ListValue"
        | "google.protobuf.FieldMask" => Special::Declined,
        _ => Special::None,
    }
}

/// One answer being written.
struct Writer<'p> {
    plans: &'p WireJson,
    /// Every message being written pushes its fields here and truncates them when done.
    occurrences: Vec<Occurrence>,
    /// The top-level field whose JSON to note in `captured` ([`WireJson::write_field`]).
    capture: Option<u32>,
    captured: Option<(usize, usize)>,
}

/// The writer's result.
type Written = Result<(), Declined>;

impl<'p> Writer<'p> {
    fn new(plans: &'p WireJson, capture: Option<u32>) -> Self {
        Self {
            plans,
            occurrences: Vec::with_capacity(32),
            capture,
            captured: None,
        }
    }

    fn message(&mut self, index: u32, bytes: &[u8], depth: u32, out: &mut Vec<u8>) -> Written {
        if depth > MAX_DEPTH {
            return Err(Declined);
        }
        let plan = &self.plans.messages[index as usize];
        match plan.special {
            Special::None => {}
            Special::Timestamp => return timestamp(bytes, out),
            Special::Duration => return duration(bytes, out),
            Special::Wrapper(scalar) => return wrapper(scalar, bytes, out),
            Special::Empty => {
                skip_all(bytes)?;
                out.extend_from_slice(b"{}");
                return Ok(());
            }
            Special::Declined => return Err(Declined),
        }
        let base = self.occurrences.len();
        scan(plan, bytes, &mut self.occurrences)?;
        let end = self.occurrences.len();
        // Stable: each field's occurrences stay in wire order.
        self.occurrences[base..end].sort_by_key(|o| o.field);
        out.push(b'{');
        let mut first = true;
        let mut oneofs_seen = 0u64;
        let mut i = base;
        while i < end {
            let field_index = self.occurrences[i].field;
            let mut j = i + 1;
            while j < end && self.occurrences[j].field == field_index {
                j += 1;
            }
            let field = &plan.fields[field_index as usize];
            if let Some(oneof) = field.oneof {
                // Two members of one oneof: the general path keeps the last; decline.
                let bit = 1u64.checked_shl(oneof).ok_or(Declined)?;
                if oneofs_seen & bit != 0 {
                    return Err(Declined);
                }
                oneofs_seen |= bit;
            }
            let before = out.len();
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&field.key);
            let value_start = out.len();
            let wrote = self.field(field, bytes, i..j, depth, out)?;
            if wrote {
                first = false;
                if depth == 0 && self.capture == Some(field_index) {
                    self.captured = Some((value_start, out.len()));
                }
            } else {
                out.truncate(before);
            }
            i = j;
        }
        self.occurrences.truncate(base);
        out.push(b'}');
        Ok(())
    }

    /// Writes the value of `field` from its `found` occurrences (a range of
    /// [`Writer::occurrences`]); `false` when the field is not written (a default value without
    /// presence, an empty list).
    fn field(
        &mut self,
        field: &FieldPlan,
        bytes: &[u8],
        found: Range<usize>,
        depth: u32,
        out: &mut Vec<u8>,
    ) -> Result<bool, Declined> {
        let Range {
            start: from,
            end: to,
        } = found;
        match field.shape {
            Shape::Singular { presence } => match field.ty {
                Ty::Message(inner) => {
                    self.merged_message(inner, bytes, from..to, depth + 1, out)?;
                    Ok(true)
                }
                ty => {
                    // Each occurrence is decoded in turn; the last one is checked as it is
                    // written.
                    for k in from..to - 1 {
                        check_read(ty, self.occurrences[k].value, bytes)?;
                    }
                    let last = self.occurrences[to - 1].value;
                    check_wire(ty, last)?;
                    if !presence && is_default(ty, last) {
                        return Ok(false);
                    }
                    self.plans.value(ty, last, bytes, out)?;
                    Ok(true)
                }
            },
            Shape::Repeated => {
                out.push(b'[');
                let mut count = 0usize;
                for k in from..to {
                    let raw = self.occurrences[k].value;
                    match (field.ty, raw) {
                        (Ty::Message(inner), Raw::Len(start, end)) => {
                            separate(out, &mut count);
                            self.message(inner, &bytes[start..end], depth + 1, out)?;
                        }
                        (ty @ (Ty::Scalar(_) | Ty::Enum(_)), Raw::Len(start, end))
                            if !matches!(ty, Ty::Scalar(Scalar::String | Scalar::Bytes)) =>
                        {
                            // Packed.
                            let mut packed = Reader::new(&bytes[start..end]);
                            while !packed.done() {
                                let value = packed.value_of(ty)?;
                                separate(out, &mut count);
                                self.plans.value(ty, value, bytes, out)?;
                            }
                        }
                        (ty, raw) => {
                            check_wire(ty, raw)?;
                            separate(out, &mut count);
                            self.plans.value(ty, raw, bytes, out)?;
                        }
                    }
                }
                out.push(b']');
                Ok(count > 0)
            }
            Shape::Map { key, value } => self.map((key, value), bytes, from..to, depth, out),
        }
    }

    /// A singular message field: its occurrences merge (their bytes concatenated, as the
    /// protobuf encoding defines a repeated singular message).
    fn merged_message(
        &mut self,
        inner: u32,
        bytes: &[u8],
        found: Range<usize>,
        depth: u32,
        out: &mut Vec<u8>,
    ) -> Written {
        let Range {
            start: from,
            end: to,
        } = found;
        if to - from == 1 {
            let Raw::Len(start, end) = self.occurrences[from].value else {
                return Err(Declined);
            };
            return self.message(inner, &bytes[start..end], depth, out);
        }
        let mut merged = Vec::new();
        for k in from..to {
            let Raw::Len(start, end) = self.occurrences[k].value else {
                return Err(Declined);
            };
            // Each occurrence is decoded on its own: it must be whole fields by itself, or a
            // field cut at its end could be completed by the next occurrence's bytes.
            skip_all(&bytes[start..end])?;
            merged.extend_from_slice(&bytes[start..end]);
        }
        self.message(inner, &merged, depth, out)
    }

    /// A map field of `(key type, value type)`: each entry's key and value are written (and so
    /// checked) as they come; a later entry with the same key replaces an earlier one.
    fn map(
        &mut self,
        (key_type, value_type): (Scalar, Ty),
        bytes: &[u8],
        entries_found: Range<usize>,
        depth: u32,
        out: &mut Vec<u8>,
    ) -> Result<bool, Declined> {
        let Range {
            start: from,
            end: to,
        } = entries_found;
        if to - from > MAX_MAP_ENTRIES {
            return Err(Declined);
        }
        // Each entry as `"key":value`, and the length of its `"key":` part.
        let mut entries: Vec<(Vec<u8>, usize)> = Vec::with_capacity(to - from);
        for k in from..to {
            let Raw::Len(start, end) = self.occurrences[k].value else {
                return Err(Declined);
            };
            let mut reader = Reader::new(&bytes[start..end]);
            let mut key = None;
            let values_from = self.occurrences.len();
            while !reader.done() {
                let (number, raw) = reader.field()?;
                let raw = raw.offset(start);
                match number {
                    1 => {
                        check_read(Ty::Scalar(key_type), raw, bytes)?;
                        key = Some(raw);
                    }
                    2 => self.occurrences.push(Occurrence {
                        field: 0,
                        value: raw,
                    }),
                    _ => {}
                }
            }
            let values_to = self.occurrences.len();
            let mut entry = Vec::with_capacity(32);
            map_key(key_type, key, bytes, &mut entry)?;
            entry.push(b':');
            let key_len = entry.len();
            match value_type {
                Ty::Message(inner) if values_from == values_to => {
                    self.message(inner, &[], depth + 1, &mut entry)?;
                }
                Ty::Message(inner) => {
                    self.merged_message(
                        inner,
                        bytes,
                        values_from..values_to,
                        depth + 1,
                        &mut entry,
                    )?;
                }
                ty if values_from == values_to => self.plans.default_value(ty, &mut entry)?,
                ty => {
                    // Every occurrence is read (and must be valid); the last one counts.
                    for v in values_from..values_to {
                        let raw = self.occurrences[v].value;
                        check_wire(ty, raw)?;
                        entry.truncate(key_len);
                        self.plans.value(ty, raw, bytes, &mut entry)?;
                    }
                }
            }
            self.occurrences.truncate(values_from);
            if let Some(previous) = entries
                .iter()
                .position(|(e, len)| e[..*len] == entry[..key_len])
            {
                entries.remove(previous);
            }
            entries.push((entry, key_len));
        }
        out.push(b'{');
        for (n, (entry, _)) in entries.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(entry);
        }
        out.push(b'}');
        Ok(!entries.is_empty())
    }
}

impl WireJson {
    /// Writes one scalar or enum value (its wire type already checked).
    fn value(&self, ty: Ty, raw: Raw, bytes: &[u8], out: &mut Vec<u8>) -> Written {
        match ty {
            Ty::Scalar(scalar) => scalar_value(scalar, raw, bytes, out),
            Ty::Enum(index) => {
                let Raw::Varint(v) = raw else {
                    return Err(Declined);
                };
                self.enum_value(index, v as i32, out);
                Ok(())
            }
            Ty::Message(_) => Err(Declined),
        }
    }

    fn enum_value(&self, index: u32, number: i32, out: &mut Vec<u8>) {
        let names = &self.enums[index as usize].names;
        match names.binary_search_by_key(&number, |(n, _)| *n) {
            Ok(at) => out.extend_from_slice(&names[at].1),
            Err(_) => out.extend_from_slice(number.to_string().as_bytes()),
        }
    }

    /// The JSON of a map value absent from its entry: the type's default.
    fn default_value(&self, ty: Ty, out: &mut Vec<u8>) -> Written {
        match ty {
            Ty::Scalar(scalar) => default_scalar(scalar, out),
            Ty::Enum(index) => self.enum_value(index, 0, out),
            Ty::Message(_) => return Err(Declined),
        }
        Ok(())
    }
}

/// The JSON of a scalar type's default value.
fn default_scalar(scalar: Scalar, out: &mut Vec<u8>) {
    let text: &[u8] = match scalar {
        Scalar::String | Scalar::Bytes => b"\"\"",
        Scalar::Bool => b"false",
        Scalar::Int64 | Scalar::Uint64 | Scalar::Sint64 | Scalar::Fixed64 | Scalar::Sfixed64 => {
            b"\"0\""
        }
        Scalar::Double | Scalar::Float => b"0.0",
        _ => b"0",
    };
    out.extend_from_slice(text);
}

/// Counts one more element of a JSON array, after a comma unless it is the first.
fn separate(out: &mut Vec<u8>, count: &mut usize) {
    if *count > 0 {
        out.push(b',');
    }
    *count += 1;
}

/// Records the occurrences of `plan`'s fields in `bytes`; unknown fields are checked and
/// skipped.
fn scan(plan: &MessagePlan, bytes: &[u8], occurrences: &mut Vec<Occurrence>) -> Written {
    let mut reader = Reader::new(bytes);
    // Fields usually come in number order: look from the last one found.
    let mut hint = 0usize;
    while !reader.done() {
        let (number, value) = reader.field()?;
        let found = match plan.fields.get(hint) {
            Some(f) if f.number == number => Some(hint),
            _ => plan.fields.binary_search_by_key(&number, |f| f.number).ok(),
        };
        if let Some(index) = found {
            hint = index;
            occurrences.push(Occurrence {
                field: index as u32,
                value,
            });
        }
    }
    Ok(())
}

/// Checks every field of `bytes` (an `Empty`, or the unknown fields of a special type).
fn skip_all(bytes: &[u8]) -> Written {
    let mut reader = Reader::new(bytes);
    while !reader.done() {
        reader.field()?;
    }
    Ok(())
}

/// Whether `raw` is a singular value of `ty` as prost reads it (a packed encoding is not).
fn check_wire(ty: Ty, raw: Raw) -> Written {
    let ok = match ty {
        Ty::Enum(_) => matches!(raw, Raw::Varint(_)),
        Ty::Message(_) => matches!(raw, Raw::Len(..)),
        Ty::Scalar(s) => match s {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => matches!(raw, Raw::Fixed64(_)),
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => matches!(raw, Raw::Fixed32(_)),
            Scalar::String | Scalar::Bytes => matches!(raw, Raw::Len(..)),
            _ => matches!(raw, Raw::Varint(_)),
        },
    };
    if ok { Ok(()) } else { Err(Declined) }
}

/// Checks an occurrence the decoder reads even where a later one replaces it: its wire type,
/// and for a string its UTF-8.
fn check_read(ty: Ty, raw: Raw, bytes: &[u8]) -> Written {
    check_wire(ty, raw)?;
    if let (Ty::Scalar(Scalar::String), Raw::Len(start, end)) = (ty, raw) {
        std::str::from_utf8(&bytes[start..end]).map_err(|_| Declined)?;
    }
    Ok(())
}

/// Whether a singular value is its type's default (then a field without presence is left out).
fn is_default(ty: Ty, raw: Raw) -> bool {
    match (ty, raw) {
        (Ty::Scalar(Scalar::Double), Raw::Fixed64(v)) => f64::from_bits(v) == 0.0,
        (Ty::Scalar(Scalar::Float), Raw::Fixed32(v)) => f32::from_bits(v) == 0.0,
        (Ty::Scalar(Scalar::Int32 | Scalar::Uint32 | Scalar::Sint32), Raw::Varint(v))
        | (Ty::Enum(_), Raw::Varint(v)) => v as u32 == 0,
        (Ty::Scalar(Scalar::Fixed32 | Scalar::Sfixed32), Raw::Fixed32(v)) => v == 0,
        (Ty::Scalar(Scalar::Fixed64 | Scalar::Sfixed64), Raw::Fixed64(v)) => v == 0,
        (Ty::Scalar(_), Raw::Varint(v)) => v == 0,
        (_, Raw::Len(start, end)) => start == end,
        _ => false,
    }
}

fn scalar_value(scalar: Scalar, raw: Raw, bytes: &[u8], out: &mut Vec<u8>) -> Written {
    let mut ser = serde_json::Serializer::new(&mut *out);
    let result = match (scalar, raw) {
        (Scalar::Double, Raw::Fixed64(v)) => {
            let v = f64::from_bits(v);
            if v.is_finite() {
                ser.serialize_f64(v)
            } else {
                ser.serialize_str(non_finite(v.is_nan(), v > 0.0))
            }
        }
        (Scalar::Float, Raw::Fixed32(v)) => {
            let v = f32::from_bits(v);
            if v.is_finite() {
                ser.serialize_f32(v)
            } else {
                ser.serialize_str(non_finite(v.is_nan(), v > 0.0))
            }
        }
        (Scalar::Int32, Raw::Varint(v)) => ser.serialize_i32(v as i32),
        (Scalar::Uint32, Raw::Varint(v)) => ser.serialize_u32(v as u32),
        (Scalar::Sint32, Raw::Varint(v)) => ser.serialize_i32(zigzag32(v as u32)),
        (Scalar::Fixed32, Raw::Fixed32(v)) => ser.serialize_u32(v),
        (Scalar::Sfixed32, Raw::Fixed32(v)) => ser.serialize_i32(v as i32),
        (Scalar::Int64, Raw::Varint(v)) => ser.collect_str(&(v as i64)),
        (Scalar::Uint64, Raw::Varint(v)) => ser.collect_str(&v),
        (Scalar::Sint64, Raw::Varint(v)) => ser.collect_str(&zigzag64(v)),
        (Scalar::Fixed64, Raw::Fixed64(v)) => ser.collect_str(&v),
        (Scalar::Sfixed64, Raw::Fixed64(v)) => ser.collect_str(&(v as i64)),
        (Scalar::Bool, Raw::Varint(v)) => ser.serialize_bool(v != 0),
        (Scalar::String, Raw::Len(start, end)) => {
            let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| Declined)?;
            ser.serialize_str(text)
        }
        (Scalar::Bytes, Raw::Len(start, end)) => {
            out.push(b'"');
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes[start..end]);
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'"');
            return Ok(());
        }
        _ => return Err(Declined),
    };
    result.map_err(|_| Declined)
}

fn non_finite(nan: bool, positive: bool) -> &'static str {
    match (nan, positive) {
        (true, _) => "NaN",
        (false, true) => "Infinity",
        (false, false) => "-Infinity",
    }
}

fn zigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ (-((v & 1) as i32))
}

fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ (-((v & 1) as i64))
}

/// A map key's JSON (always a string); an absent key is its type's default.
fn map_key(key_type: Scalar, raw: Option<Raw>, bytes: &[u8], out: &mut Vec<u8>) -> Written {
    let raw = raw.unwrap_or(match key_type {
        Scalar::String => Raw::Len(0, 0),
        Scalar::Fixed32 | Scalar::Sfixed32 => Raw::Fixed32(0),
        Scalar::Fixed64 | Scalar::Sfixed64 => Raw::Fixed64(0),
        _ => Raw::Varint(0),
    });
    let text = match (key_type, raw) {
        (Scalar::String, _) => return scalar_value(Scalar::String, raw, bytes, out),
        (Scalar::Bool, Raw::Varint(v)) => (if v != 0 { "true" } else { "false" }).to_string(),
        (Scalar::Int32, Raw::Varint(v)) => (v as i32).to_string(),
        (Scalar::Uint32, Raw::Varint(v)) => (v as u32).to_string(),
        (Scalar::Sint32, Raw::Varint(v)) => zigzag32(v as u32).to_string(),
        (Scalar::Int64, Raw::Varint(v)) => (v as i64).to_string(),
        (Scalar::Uint64, Raw::Varint(v)) => v.to_string(),
        (Scalar::Sint64, Raw::Varint(v)) => zigzag64(v).to_string(),
        (Scalar::Fixed32, Raw::Fixed32(v)) => v.to_string(),
        (Scalar::Sfixed32, Raw::Fixed32(v)) => (v as i32).to_string(),
        (Scalar::Fixed64, Raw::Fixed64(v)) => v.to_string(),
        (Scalar::Sfixed64, Raw::Fixed64(v)) => (v as i64).to_string(),
        _ => return Err(Declined),
    };
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Reads `seconds` (1) and `nanos` (2) of a `Timestamp` or `Duration`.
fn seconds_nanos(bytes: &[u8]) -> Result<(i64, i32), Declined> {
    let mut reader = Reader::new(bytes);
    let (mut seconds, mut nanos) = (0i64, 0i32);
    while !reader.done() {
        match reader.field()? {
            (1, Raw::Varint(v)) => seconds = v as i64,
            (2, Raw::Varint(v)) => nanos = v as i32,
            (1 | 2, _) => return Err(Declined),
            _ => {}
        }
    }
    Ok((seconds, nanos))
}

fn timestamp(bytes: &[u8], out: &mut Vec<u8>) -> Written {
    // The range prost-reflect accepts: years 1 to 9999.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    let (seconds, nanos) = seconds_nanos(bytes)?;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return Err(Declined);
    }
    let text = prost_types::Timestamp { seconds, nanos }.to_string();
    serde_json::Serializer::new(&mut *out)
        .serialize_str(&text)
        .map_err(|_| Declined)
}

fn duration(bytes: &[u8], out: &mut Vec<u8>) -> Written {
    const MAX_SECONDS: u64 = 315_576_000_000;
    const MAX_NANOS: u32 = 999_999_999;
    let (seconds, nanos) = seconds_nanos(bytes)?;
    if seconds.unsigned_abs() > MAX_SECONDS || nanos.unsigned_abs() > MAX_NANOS {
        return Err(Declined);
    }
    let text = prost_types::Duration { seconds, nanos }.to_string();
    serde_json::Serializer::new(&mut *out)
        .serialize_str(&text)
        .map_err(|_| Declined)
}

/// A wrapper's `value` (1), written even when it is the default.
fn wrapper(scalar: Scalar, bytes: &[u8], out: &mut Vec<u8>) -> Written {
    let mut reader = Reader::new(bytes);
    let mut value = None;
    while !reader.done() {
        let (number, raw) = reader.field()?;
        if number == 1 {
            check_read(Ty::Scalar(scalar), raw, bytes)?;
            value = Some(raw);
        }
    }
    match value {
        Some(raw) => scalar_value(scalar, raw, bytes, out),
        None => {
            default_scalar(scalar, out);
            Ok(())
        }
    }
}

impl Raw {
    /// The same value with its byte range moved by `by` (from a slice back to its message).
    fn offset(self, by: usize) -> Raw {
        match self {
            Raw::Len(start, end) => Raw::Len(start + by, end + by),
            other => other,
        }
    }
}

/// Reads protobuf fields from a byte slice, as strictly as prost does.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// One varint, at most ten bytes, the tenth at most 1 (prost's rule).
    fn varint(&mut self) -> Result<u64, Declined> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.bytes.get(self.at).ok_or(Declined)?;
            self.at += 1;
            if i == 9 && byte > 1 {
                return Err(Declined);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Declined)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Declined> {
        let end = self.at.checked_add(n).ok_or(Declined)?;
        let slice = self.bytes.get(self.at..end).ok_or(Declined)?;
        self.at = end;
        Ok(slice)
    }

    /// One field: its number and value (a length-delimited value as a range of the slice).
    fn field(&mut self) -> Result<(u32, Raw), Declined> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(Declined);
        }
        let number = (key >> 3) as u32;
        if number == 0 {
            return Err(Declined);
        }
        let raw = match key & 7 {
            0 => Raw::Varint(self.varint()?),
            1 => Raw::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| Declined)?,
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Declined)?;
                let start = self.at;
                self.take(len)?;
                Raw::Len(start, start + len)
            }
            5 => Raw::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| Declined)?,
            )),
            // Groups (3, 4) and the undefined wire types 6 and 7.
            _ => return Err(Declined),
        };
        Ok((number, raw))
    }

    /// One element of a packed list of `ty`, with its byte range relative to the list.
    fn value_of(&mut self, ty: Ty) -> Result<Raw, Declined> {
        Ok(match ty {
            Ty::Scalar(Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64) => Raw::Fixed64(
                u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Declined)?),
            ),
            Ty::Scalar(Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32) => Raw::Fixed32(
                u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Declined)?),
            ),
            Ty::Scalar(Scalar::String | Scalar::Bytes) | Ty::Message(_) => return Err(Declined),
            _ => Raw::Varint(self.varint()?),
        })
    }
}
