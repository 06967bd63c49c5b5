//! Structured outputs (`response_format: {"type": "json_schema", "json_schema": {"schema":
//! ...}}`): a JSON Schema compiled into a byte-level recognizer, so that constrained decoding
//! lets only answers through that parse and validate.
//!
//! What a schema may say (everything else is a 400 naming the keyword, never ignored):
//! - `type` (one, or a list), `enum`, `const`, `anyOf`/`oneOf` of alternatives that start
//!   differently (a string, a number, an object …: the first byte tells them apart), `$ref` to
//!   `#/$defs/...` or `#/definitions/...` (recursion included);
//! - objects: `properties`, `required`, `additionalProperties` (`false`, or absent: only the
//!   declared keys are written, each at most once, in any order; `true` or a schema when there
//!   are no `properties`: any keys);
//! - arrays: `items`, `minItems`, `maxItems`;
//! - annotations (`title`, `description`, `default`, `examples`, `$schema`, `$id`, `$comment`)
//!   are ignored. `{}` is any JSON value. The root must be an object.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_protocol::ApiError;

use super::json_mode::{Number, Recognizer};

/// Most properties of one object, and most `enum` values (bit masks).
const MOST_MEMBERS: usize = 64;
/// Most whitespace bytes in a row between tokens.
const MOST_WHITESPACE: u8 = 24;
/// Deepest `$ref` chain followed while compiling.
const MOST_REFERENCES: usize = 64;

/// Keywords that only describe.
const ANNOTATIONS: [&str; 8] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "$defs",
];

/// One compiled schema node.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// Any JSON value.
    Any,
    /// An object: its declared properties (JSON-escaped name, node, required); `free` when
    /// undeclared keys are allowed (then with values of that node).
    Object {
        properties: Vec<(Vec<u8>, usize, bool)>,
        free: Option<usize>,
    },
    /// An array of `items`, `min`..=`max` long.
    Array {
        items: usize,
        min: u32,
        max: Option<u32>,
    },
    String,
    Number {
        integer: bool,
    },
    /// One of these JSON texts (`enum`, `const`, `true`/`false`, `null`).
    Literals(Vec<Vec<u8>>),
    /// Alternatives told apart by their first byte.
    Union(Vec<usize>),
    /// Not compiled yet (a `$ref` being resolved).
    Pending,
}

/// A compiled schema.
#[derive(Debug, PartialEq)]
pub struct Schema {
    nodes: Vec<Node>,
}

/// Compiles the `schema` of a `json_schema` response format.
pub fn compile(schema: &Value) -> Result<Arc<Schema>, ApiError> {
    let mut compiler = Compiler {
        root: schema,
        nodes: Vec::new(),
        references: HashMap::new(),
    };
    let root = compiler.node(schema, "schema", 0)?;
    let root_is_object = matches!(compiler.nodes[root], Node::Object { .. });
    if !root_is_object || root != 0 {
        return Err(invalid(
            "schema",
            "the root must be an object (`type: object`)",
        ));
    }
    Ok(Arc::new(Schema {
        nodes: compiler.nodes,
    }))
}

fn invalid(path: &str, message: &str) -> ApiError {
    ApiError::invalid(format!("`response_format.json_schema.{path}`: {message}"))
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    references: HashMap<String, usize>,
}

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &Value, path: &str, depth: usize) -> Result<usize, ApiError> {
        let schema = match schema {
            Value::Bool(true) => return Ok(self.push(Node::Any)),
            Value::Object(schema) => schema,
            _ => return Err(invalid(path, "a schema is an object")),
        };
        if let Some(reference) = schema.get("$ref") {
            return self.reference(reference, path, depth);
        }
        let at = self.push(Node::Pending);
        let node = self.compile(schema, path, depth)?;
        self.nodes[at] = node;
        Ok(at)
    }

    fn reference(
        &mut self,
        reference: &Value,
        path: &str,
        depth: usize,
    ) -> Result<usize, ApiError> {
        let Some(name) = reference.as_str() else {
            return Err(invalid(path, "`$ref` is a string"));
        };
        if let Some(&at) = self.references.get(name) {
            return Ok(at);
        }
        if depth > MOST_REFERENCES {
            return Err(invalid(path, "`$ref` chains too deep"));
        }
        let target = name
            .strip_prefix("#/$defs/")
            .map(|key| self.root.get("$defs").and_then(|defs| defs.get(key)))
            .or_else(|| {
                name.strip_prefix("#/definitions/")
                    .map(|key| self.root.get("definitions").and_then(|defs| defs.get(key)))
            })
            .flatten();
        let target = match (name, target) {
            ("#", _) => self.root,
            (_, Some(target)) => target,
            _ => {
                return Err(invalid(
                    path,
                    &format!("`$ref` `{name}` names nothing in `$defs` or `definitions`"),
                ));
            }
        };
        // Recursive references point at the node while it compiles.
        let at = self.push(Node::Pending);
        self.references.insert(name.to_string(), at);
        let node = match target {
            Value::Object(schema) if schema.contains_key("$ref") => {
                let inner = self.node(target, path, depth + 1)?;
                Node::Union(vec![inner])
            }
            Value::Object(schema) => self.compile(schema, path, depth + 1)?,
            Value::Bool(true) => Node::Any,
            _ => return Err(invalid(path, "a schema is an object")),
        };
        self.nodes[at] = node;
        Ok(at)
    }

    fn compile(
        &mut self,
        schema: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Node, ApiError> {
        const TYPED: [&str; 9] = [
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "strict",
            "definitions",
        ];
        for key in schema.keys() {
            let known = ANNOTATIONS.contains(&key.as_str())
                || TYPED.contains(&key.as_str())
                || matches!(key.as_str(), "enum" | "const" | "anyOf" | "oneOf");
            if !known {
                return Err(invalid(
                    &format!("{path}.{key}"),
                    "this keyword is not supported by the builtin runtime's structured outputs",
                ));
            }
        }
        if let Some(values) = schema.get("enum") {
            let Some(values) = values.as_array().filter(|values| !values.is_empty()) else {
                return Err(invalid(&format!("{path}.enum"), "a non-empty list"));
            };
            return literals(values, &format!("{path}.enum"));
        }
        if let Some(value) = schema.get("const") {
            return literals(std::slice::from_ref(value), &format!("{path}.const"));
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(alternatives) = schema.get(keyword) {
                let Some(alternatives) = alternatives.as_array().filter(|list| !list.is_empty())
                else {
                    return Err(invalid(&format!("{path}.{keyword}"), "a non-empty list"));
                };
                let mut nodes = Vec::new();
                for (index, alternative) in alternatives.iter().enumerate() {
                    nodes.push(self.node(
                        alternative,
                        &format!("{path}.{keyword}[{index}]"),
                        depth,
                    )?);
                }
                return self.union(nodes, &format!("{path}.{keyword}"));
            }
        }
        match schema.get("type") {
            None => Ok(if schema.contains_key("properties") {
                self.object(schema, path, depth)?
            } else {
                Node::Any
            }),
            Some(Value::String(kind)) => self.typed(kind, schema, path, depth),
            Some(Value::Array(kinds)) => {
                let mut nodes = Vec::new();
                for kind in kinds {
                    let Some(kind) = kind.as_str() else {
                        return Err(invalid(&format!("{path}.type"), "a list of type names"));
                    };
                    let node = self.typed(kind, schema, path, depth)?;
                    nodes.push(self.push(node));
                }
                self.union(nodes, &format!("{path}.type"))
            }
            Some(_) => Err(invalid(
                &format!("{path}.type"),
                "a type name or a list of them",
            )),
        }
    }

    fn typed(
        &mut self,
        kind: &str,
        schema: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Node, ApiError> {
        Ok(match kind {
            "object" => self.object(schema, path, depth)?,
            "array" => {
                let items = match schema.get("items") {
                    None => self.push(Node::Any),
                    Some(items) => self.node(items, &format!("{path}.items"), depth)?,
                };
                let bound = |key: &str| -> Result<Option<u32>, ApiError> {
                    schema
                        .get(key)
                        .map(|value| {
                            value
                                .as_u64()
                                .and_then(|n| u32::try_from(n).ok())
                                .ok_or_else(|| invalid(&format!("{path}.{key}"), "a count"))
                        })
                        .transpose()
                };
                Node::Array {
                    items,
                    min: bound("minItems")?.unwrap_or(0),
                    max: bound("maxItems")?,
                }
            }
            "string" => Node::String,
            "number" => Node::Number { integer: false },
            "integer" => Node::Number { integer: true },
            "boolean" => Node::Literals(vec![b"true".to_vec(), b"false".to_vec()]),
            "null" => Node::Literals(vec![b"null".to_vec()]),
            other => {
                return Err(invalid(
                    &format!("{path}.type"),
                    &format!("`{other}` is not a JSON Schema type"),
                ));
            }
        })
    }

    fn object(
        &mut self,
        schema: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Node, ApiError> {
        let required: Vec<&str> = match schema.get("required") {
            None => Vec::new(),
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(invalid(&format!("{path}.required"), "a list of names")),
        };
        let declared = match schema.get("properties") {
            None => Map::new(),
            Some(Value::Object(properties)) => properties.clone(),
            Some(_) => return Err(invalid(&format!("{path}.properties"), "an object")),
        };
        if declared.len() > MOST_MEMBERS {
            return Err(invalid(
                &format!("{path}.properties"),
                &format!("at most {MOST_MEMBERS} properties"),
            ));
        }
        if let Some(missing) = required.iter().find(|name| !declared.contains_key(**name)) {
            return Err(invalid(
                &format!("{path}.required"),
                &format!("`{missing}` is required but not among the properties"),
            ));
        }
        let mut properties = Vec::new();
        for (name, property) in &declared {
            let node = self.node(property, &format!("{path}.properties.{name}"), depth)?;
            let escaped = serde_json::to_string(name).unwrap_or_default();
            let escaped = escaped.as_bytes()[1..escaped.len() - 1].to_vec();
            if escaped.contains(&b'\\') {
                return Err(invalid(
                    &format!("{path}.properties"),
                    &format!("the property name {name:?} needs escaping, which is not supported"),
                ));
            }
            properties.push((escaped, node, required.contains(&name.as_str())));
        }
        let free = match (schema.get("additionalProperties"), declared.is_empty()) {
            (Some(Value::Bool(false)), _) | (None, false) => None,
            (None | Some(Value::Bool(true)), true) => Some(self.push(Node::Any)),
            (Some(Value::Bool(true)), false) => None,
            (Some(extra), true) => {
                Some(self.node(extra, &format!("{path}.additionalProperties"), depth)?)
            }
            (Some(_), false) => None,
        };
        Ok(Node::Object { properties, free })
    }

    fn union(&mut self, nodes: Vec<usize>, path: &str) -> Result<Node, ApiError> {
        let mut seen = [false; 256];
        for &node in &nodes {
            let mut starts = [false; 256];
            first_bytes(&self.nodes, node, &mut starts, 0);
            for byte in 0..256 {
                if starts[byte] && std::mem::replace(&mut seen[byte], true) {
                    return Err(invalid(
                        path,
                        "alternatives must start differently (a string, a number, an object, \
                         an array, true/false, null); two of these can begin with the same byte",
                    ));
                }
            }
        }
        Ok(Node::Union(nodes))
    }
}

/// The bytes a value of `node` can begin with.
fn first_bytes(nodes: &[Node], node: usize, starts: &mut [bool; 256], depth: usize) {
    if depth > MOST_REFERENCES {
        return;
    }
    let mut mark = |bytes: &[u8]| bytes.iter().for_each(|&b| starts[b as usize] = true);
    match &nodes[node] {
        Node::Any | Node::Pending => mark(b"{[\"-0123456789tfn"),
        Node::Object { .. } => mark(b"{"),
        Node::Array { .. } => mark(b"["),
        Node::String => mark(b"\""),
        Node::Number { .. } => mark(b"-0123456789"),
        Node::Literals(texts) => texts.iter().for_each(|text| mark(&text[..1])),
        Node::Union(inner) => {
            for &inner in inner {
                first_bytes(nodes, inner, starts, depth + 1);
            }
        }
    }
}

fn literals(values: &[Value], path: &str) -> Result<Node, ApiError> {
    if values.len() > MOST_MEMBERS {
        return Err(invalid(path, &format!("at most {MOST_MEMBERS} values")));
    }
    Ok(Node::Literals(
        values
            .iter()
            .map(|value| serde_json::to_vec(value).unwrap_or_default())
            .collect(),
    ))
}

/// Where the recognizer is inside an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjectAt {
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,`: a key.
    Key,
    /// Inside a declared key: the properties it can still be, and the bytes read.
    DeclaredKey { candidates: u64, read: usize },
    /// Inside an undeclared key (a free object).
    FreeKey,
    /// After a key: `:`; then its value (`None`: a free key's).
    Colon(Option<usize>),
    /// After a value: `,` or `}`.
    AfterValue,
}

/// Where the recognizer is inside an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrayAt {
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After a value: `,` or `]`.
    AfterValue,
}

/// One open level of the value being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A value of `node` is expected here.
    Expect(usize),
    /// Inside an object of `node`; `seen`: its declared properties written so far.
    Object {
        node: usize,
        seen: u64,
        at: ObjectAt,
    },
    /// Inside an array of `node`, `count` values written.
    Array {
        node: usize,
        count: u32,
        at: ArrayAt,
    },
    /// A number.
    Number { state: Number, integer: bool },
    /// One of the literals of `node` (the `candidates` still matching, `read` bytes in).
    Literal {
        node: usize,
        candidates: u64,
        read: usize,
    },
    /// Any value, or a free string (read by the plain JSON recognizer).
    Free(Recognizer),
}

/// What a leaf did with a byte.
enum Leaf {
    Took,
    Refused,
    /// The value ended before this byte, which the level above reads.
    EndedBefore,
}

/// A byte-level recognizer of the JSON texts a schema accepts.
#[derive(Clone, Debug)]
pub struct SchemaRecognizer {
    schema: Arc<Schema>,
    frames: Vec<Frame>,
    done: bool,
    whitespace: u8,
}

impl SchemaRecognizer {
    /// A recognizer at the start of an answer.
    pub fn new(schema: Arc<Schema>) -> Self {
        Self {
            schema,
            frames: vec![Frame::Expect(0)],
            done: false,
            whitespace: 0,
        }
    }

    /// Whether the root object is whole.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds `bytes`; false when they cannot continue a valid answer.
    pub fn feed_all(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&byte| self.feed(byte))
    }

    /// Feeds one byte.
    pub fn feed(&mut self, byte: u8) -> bool {
        if self.done {
            return false;
        }
        let Some(&frame) = self.frames.last() else {
            return false;
        };
        let leaf = match frame {
            Frame::Number { state, integer } => Some(match state.next(byte) {
                Some(next) if !integer || next.integral() => {
                    self.set(Frame::Number {
                        state: next,
                        integer,
                    });
                    Leaf::Took
                }
                _ if state.whole() => Leaf::EndedBefore,
                _ => Leaf::Refused,
            }),
            Frame::Literal {
                node,
                candidates,
                read,
            } => Some(self.literal(node, candidates, read, byte)),
            Frame::Free(recognizer) => {
                let mut next = recognizer;
                Some(if next.feed(byte) {
                    self.set(Frame::Free(next));
                    Leaf::Took
                } else if recognizer.ended() {
                    Leaf::EndedBefore
                } else {
                    Leaf::Refused
                })
            }
            _ => None,
        };
        match leaf {
            Some(Leaf::Took) => return true,
            Some(Leaf::Refused) => return false,
            Some(Leaf::EndedBefore) => {
                self.frames.pop();
                self.value_ended();
                return self.feed(byte);
            }
            None => {}
        }
        let in_key = matches!(
            frame,
            Frame::Object {
                at: ObjectAt::DeclaredKey { .. } | ObjectAt::FreeKey,
                ..
            }
        );
        if !in_key && matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            self.whitespace += 1;
            return self.whitespace <= MOST_WHITESPACE;
        }
        self.whitespace = 0;
        match frame {
            Frame::Expect(node) => self.start(node, byte),
            Frame::Object { node, seen, at } => self.object(node, seen, at, byte),
            Frame::Array { node, count, at } => self.array(node, count, at, byte),
            _ => false,
        }
    }

    fn set(&mut self, frame: Frame) {
        if let Some(last) = self.frames.last_mut() {
            *last = frame;
        }
    }

    /// The value on top was whole: the level above moves on.
    fn value_ended(&mut self) {
        match self.frames.last_mut() {
            None => self.done = true,
            Some(Frame::Object { at, .. }) => *at = ObjectAt::AfterValue,
            Some(Frame::Array { count, at, .. }) => {
                *count += 1;
                *at = ArrayAt::AfterValue;
            }
            Some(_) => {}
        }
    }

    /// The first byte of a value of `node` (replacing its `Expect` frame).
    fn start(&mut self, node: usize, byte: u8) -> bool {
        let schema = Arc::clone(&self.schema);
        let frame = match &schema.nodes[node] {
            Node::Object { .. } if byte == b'{' => Frame::Object {
                node,
                seen: 0,
                at: ObjectAt::KeyOrClose,
            },
            Node::Array { .. } if byte == b'[' => Frame::Array {
                node,
                count: 0,
                at: ArrayAt::ValueOrClose,
            },
            Node::String | Node::Any => {
                let mut recognizer = Recognizer::any();
                if matches!(schema.nodes[node], Node::String) && byte != b'"' {
                    return false;
                }
                if !recognizer.feed(byte) {
                    return false;
                }
                Frame::Free(recognizer)
            }
            Node::Number { integer } => match Number::start(byte) {
                Some(state) => Frame::Number {
                    state,
                    integer: *integer,
                },
                None => return false,
            },
            Node::Literals(texts) => {
                let candidates = texts
                    .iter()
                    .enumerate()
                    .filter(|(_, text)| text.first() == Some(&byte))
                    .fold(0u64, |mask, (index, _)| mask | 1 << index);
                if candidates == 0 {
                    return false;
                }
                let frame = Frame::Literal {
                    node,
                    candidates,
                    read: 1,
                };
                self.set(frame);
                // A one-byte literal (a digit) is whole already, but may go on.
                return true;
            }
            Node::Union(nodes) => {
                let mut starts = [false; 256];
                let chosen = nodes.iter().copied().find(|&inner| {
                    starts = [false; 256];
                    first_bytes(&schema.nodes, inner, &mut starts, 0);
                    starts[byte as usize]
                });
                return match chosen {
                    Some(inner) => {
                        self.set(Frame::Expect(inner));
                        self.start(inner, byte)
                    }
                    None => false,
                };
            }
            _ => return false,
        };
        self.set(frame);
        true
    }

    fn literal(&mut self, node: usize, candidates: u64, read: usize, byte: u8) -> Leaf {
        let schema = Arc::clone(&self.schema);
        let Node::Literals(texts) = &schema.nodes[node] else {
            return Leaf::Refused;
        };
        let mut next = 0u64;
        let mut complete = false;
        for (index, text) in texts.iter().enumerate() {
            if candidates & (1 << index) == 0 {
                continue;
            }
            complete |= text.len() == read;
            if text.get(read) == Some(&byte) {
                next |= 1 << index;
            }
        }
        if next != 0 {
            self.set(Frame::Literal {
                node,
                candidates: next,
                read: read + 1,
            });
            Leaf::Took
        } else if complete {
            Leaf::EndedBefore
        } else {
            Leaf::Refused
        }
    }

    fn object(&mut self, node: usize, seen: u64, at: ObjectAt, byte: u8) -> bool {
        let schema = Arc::clone(&self.schema);
        let Node::Object { properties, free } = &schema.nodes[node] else {
            return false;
        };
        let unseen = (0..properties.len())
            .filter(|index| seen & (1 << index) == 0)
            .fold(0u64, |mask, index| mask | 1 << index);
        let required_done = properties
            .iter()
            .enumerate()
            .all(|(index, (_, _, required))| !required || seen & (1 << index) != 0);
        let set = |this: &mut Self, seen: u64, at: ObjectAt| {
            this.set(Frame::Object { node, seen, at });
            true
        };
        match (at, byte) {
            (ObjectAt::KeyOrClose | ObjectAt::AfterValue, b'}') if required_done => {
                self.frames.pop();
                self.value_ended();
                true
            }
            (ObjectAt::KeyOrClose | ObjectAt::Key, b'"') => {
                if free.is_some() {
                    set(self, seen, ObjectAt::FreeKey)
                } else if unseen != 0 {
                    set(
                        self,
                        seen,
                        ObjectAt::DeclaredKey {
                            candidates: unseen,
                            read: 0,
                        },
                    )
                } else {
                    false
                }
            }
            (ObjectAt::AfterValue, b',') => {
                // Another key must be possible.
                (free.is_some() || unseen != 0) && set(self, seen, ObjectAt::Key)
            }
            (ObjectAt::DeclaredKey { candidates, read }, b'"') => {
                match (0..properties.len()).find(|&index| {
                    candidates & (1 << index) != 0 && properties[index].0.len() == read
                }) {
                    Some(index) => set(self, seen | 1 << index, ObjectAt::Colon(Some(index))),
                    None => false,
                }
            }
            (ObjectAt::DeclaredKey { candidates, read }, _) => {
                let next = (0..properties.len())
                    .filter(|&index| {
                        candidates & (1 << index) != 0
                            && properties[index].0.get(read) == Some(&byte)
                    })
                    .fold(0u64, |mask, index| mask | 1 << index);
                next != 0
                    && set(
                        self,
                        seen,
                        ObjectAt::DeclaredKey {
                            candidates: next,
                            read: read + 1,
                        },
                    )
            }
            (ObjectAt::FreeKey, b'"') => set(self, seen, ObjectAt::Colon(None)),
            (ObjectAt::FreeKey, b'\\' | 0x00..=0x1f) => false,
            (ObjectAt::FreeKey, _) => true,
            (ObjectAt::Colon(property), b':') => {
                let value = match property {
                    Some(index) => properties[index].1,
                    None => free.unwrap_or(0),
                };
                self.set(Frame::Object {
                    node,
                    seen,
                    at: ObjectAt::AfterValue,
                });
                self.frames.push(Frame::Expect(value));
                true
            }
            _ => false,
        }
    }

    fn array(&mut self, node: usize, count: u32, at: ArrayAt, byte: u8) -> bool {
        let Node::Array { items, min, max } = self.schema.nodes[node] else {
            return false;
        };
        match (at, byte) {
            (_, b']') if count >= min && (at == ArrayAt::AfterValue || count == 0) => {
                self.frames.pop();
                self.value_ended();
                true
            }
            (ArrayAt::AfterValue, b',') if max.is_none_or(|max| count < max) => {
                self.frames.push(Frame::Expect(items));
                true
            }
            (ArrayAt::ValueOrClose, _) if max.is_none_or(|max| max > 0) => {
                self.frames.push(Frame::Expect(items));
                self.feed(byte)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn accepts(schema: &Value, text: &str) -> (bool, bool) {
        let mut recognizer = SchemaRecognizer::new(compile(schema).unwrap());
        let fed = recognizer.feed_all(text.as_bytes());
        (fed, fed && recognizer.is_done())
    }

    fn person() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "pet": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pet"}]},
                "score": {"type": ["number", "null"]},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "age"],
            "additionalProperties": false,
            "$defs": {"pet": {"type": "object", "properties": {"kind": {"const": "cat"}},
                              "required": ["kind"]}}
        })
    }

    #[test]
    fn valid_answers_are_whole_and_their_prefixes_alive() {
        let schema = person();
        for text in [
            r#"{"name": "Ann", "age": 3}"#,
            r#"{"age": -12, "name": "B\"o", "tags": ["a", "b"], "pet": {"kind": "cat"}}"#,
            r#"{ "name" : "x" , "age" : 0 , "pet" : null , "score" : 1.5e3, "ok": true }"#,
            r#"{"name": "x", "age": 1, "score": null, "tags": []}"#,
        ] {
            assert_eq!(accepts(&schema, text), (true, true), "{text}");
            for end in 0..text.len() {
                assert!(accepts(&schema, &text[..end]).0, "prefix {}", &text[..end]);
            }
        }
    }

    #[test]
    fn invalid_answers_are_refused() {
        let schema = person();
        for text in [
            r#"{"name": "x"}"#,                                    // age missing
            r#"{"name": "x", "age": 1.5}"#,                        // not an integer
            r#"{"name": "x", "age": 1, "other": 2}"#,              // undeclared key
            r#"{"name": "x", "name": "y", "age": 1}"#,             // key twice
            r#"{"name": 1, "age": 1}"#,                            // wrong type
            r#"{"name": "x", "age": 1, "tags": ["c"]}"#,           // not in the enum
            r#"{"name": "x", "age": 1, "tags": ["a", "a", "b"]}"#, // too many
            r#"{"name": "x", "age": 1, "pet": {"kind": "dog"}}"#,
            r#"{"name": "x", "age": 1, "ok": "yes"}"#,
            r#"["x"]"#,
        ] {
            assert!(!accepts(&schema, text).1, "{text}");
        }
    }

    #[test]
    fn free_objects_any_values_and_recursion() {
        let schema = json!({"type": "object", "additionalProperties": {"type": "number"}});
        assert_eq!(accepts(&schema, r#"{"a": 1, "b": -2.5}"#), (true, true));
        assert!(!accepts(&schema, r#"{"a": "x"}"#).1);
        let schema = json!({"type": "object", "properties": {"x": {}}, "required": ["x"]});
        assert_eq!(
            accepts(&schema, r#"{"x": {"deep": [1, "two", null]}}"#),
            (true, true)
        );
        assert_eq!(accepts(&schema, r#"{"x": 12}"#), (true, true));
        let tree = json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}});
        assert_eq!(
            accepts(&tree, r#"{"children": [{"children": []}, {}]}"#),
            (true, true)
        );
    }

    #[test]
    fn what_cannot_be_enforced_is_named() {
        for (schema, needle) in [
            (
                json!({"type": "object", "properties": {"s": {"type": "string", "pattern": "x"}}}),
                "properties.s.pattern",
            ),
            (json!({"type": "string"}), "root must be an object"),
            (
                json!({"type": "object", "properties": {"u": {"anyOf": [{"type": "object"},
                {"type": "object", "properties": {}}]}}}),
                "start differently",
            ),
            (
                json!({"type": "object", "properties": {"r": {"$ref": "#/$defs/none"}}}),
                "names nothing",
            ),
            (
                json!({"type": "object", "required": ["z"], "properties": {}}),
                "`z` is required",
            ),
        ] {
            let error = compile(&schema).unwrap_err().message;
            assert!(error.contains(needle), "{error}");
        }
    }
}
