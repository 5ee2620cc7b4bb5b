//! Field-level masking of JSON payloads at read time.
//!
//! A [`MaskingPolicy`] is a list of [`Rule`]s, each an RFC 9535 JSONPath, a
//! [`Mask`] and the lowest [`Clearance`] that sees the field in clear. A
//! reader below that clearance gets the field masked:
//!
//! ```json
//! {"rules": [
//!   {"path": "$.card.number", "mask": {"partial": {"keep_last": 4}}, "visible_from": "L3"},
//!   {"path": "$..ssn",        "mask": "redact",                     "visible_from": "L4"},
//!   {"path": "$.email",       "mask": {"hash": {"salt": "crm"}},    "visible_from": "L2"}
//! ]}
//! ```
//!
//! Masks: `"redact"` (or `{"redact": {}}`) replaces any value with
//! [`REDACTED`]; `{"partial": {"keep_last": n}}` stars all but the last `n`
//! characters of a string or number; `{"hash": {"salt": "..."}}` replaces a
//! value with its salted SHA-256 (`"sha256:<64 hex>"`). A hash rule without
//! a salt uses the deployment secret given to
//! [`MaskingPolicy::parse_with_secret`]; with neither, the policy does not
//! parse, because an unsalted hash of a card number or an e-mail address is
//! reversed by a dictionary.
//!
//! Invariants:
//! - the stored bytes are never modified: masking parses a copy, masks the
//!   copy and serializes it into new bytes;
//! - when no rule applies to the reader's clearance, or no rule selects any
//!   node of this payload, the reader gets the original bytes (a `Bytes`
//!   clone, zero-copy, from [`MaskingPolicy::mask_bytes`]);
//! - masking never passes content through silently: if a rule applies and
//!   the payload is not JSON (by content type or by content), the read
//!   fails with a [`MaskError`];
//! - all rules select their nodes in the original payload before any mask
//!   is applied, so one rule's mask cannot hide a node from another rule's
//!   filter; a node under an already-masked ancestor is covered by the
//!   ancestor's mask (computed on the unmasked subtree), and several rules
//!   on one node apply in document order, each to the previous output.
//!
//! Fault model: policies come from operators and may be malformed; parsing
//! rejects them with a named [`PolicyError`] and never panics. Payloads may
//! be anything a producer published; masking never panics. Payloads with
//! duplicate object keys are refused as invalid JSON: two parsers may keep
//! different copies of a duplicated key, and the copy we did not mask must
//! not reach a reader.
//!
//! Limit: a masked payload is re-serialized by `serde_json`, so its
//! whitespace is compact and its numbers are written in `serde_json`'s
//! form; integers beyond 64 bits lose precision in the masked copy (never
//! in the stored record). Payloads nothing is masked in keep their bytes.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use serde_json_path::JsonPath;
use sha2::{Digest, Sha256};

use sluice_model::event::{EVENT_PAYLOAD_SIZE_MAX, EventView};

/// Largest policy document, in bytes.
pub const POLICY_SIZE_MAX: usize = 64 * 1024;

/// Most rules in one policy.
pub const RULES_MAX: usize = 256;

/// Longest JSONPath of one rule, in bytes.
pub const PATH_SIZE_MAX: usize = 1024;

/// Largest `keep_last` of a partial mask, in characters.
pub const KEEP_LAST_MAX: usize = 64;

/// Longest salt (a rule's or the deployment secret), in bytes.
pub const SALT_SIZE_MAX: usize = 1024;

/// Shortest deployment secret, in bytes: it is what keeps hashes of
/// guessable values (card numbers, e-mail addresses) from being reversed.
pub const SECRET_SIZE_MIN: usize = 16;

/// Largest payload masking parses; no event payload is larger.
pub const MASK_PAYLOAD_SIZE_MAX: usize = EVENT_PAYLOAD_SIZE_MAX;

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// Prefix of a hashed value; 64 lowercase hex digits follow.
pub const HASH_PREFIX: &str = "sha256:";

const _: () = assert!(PATH_SIZE_MAX <= POLICY_SIZE_MAX);
const _: () = assert!(SECRET_SIZE_MIN <= SALT_SIZE_MAX);

/// A reader's clearance, from least (`L1`) to most (`L4`) trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Clearance {
    /// Sees the least.
    L1,
    /// Above `L1`.
    L2,
    /// Above `L2`.
    L3,
    /// Sees the most.
    L4,
}

impl Clearance {
    /// Every level, in order.
    pub const ALL: [Clearance; 4] = [Clearance::L1, Clearance::L2, Clearance::L3, Clearance::L4];
}

/// A salt for the hash mask. Its `Debug` form shows only its size, so
/// a logged policy does not leak the deployment secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Salt(Box<[u8]>);

impl Salt {
    /// The salt's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salt(<{} bytes>)", self.0.len())
    }
}

/// How a selected value is masked. Every mask turns a value into a JSON
/// string, so a masked node has no children left to leak.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mask {
    /// Any value becomes [`REDACTED`].
    Redact,
    /// A string (or a number, as its decimal text) keeps its last
    /// `keep_last` characters; the others become `*`. A value of at most
    /// `keep_last` characters is starred whole, so a short value is never
    /// shown in clear. Other values (objects, arrays, booleans, null) are
    /// redacted.
    Partial {
        /// Characters kept at the end.
        keep_last: usize,
    },
    /// `"sha256:" + hex(SHA-256(salt size as u64 LE ‖ salt ‖ value))`,
    /// where a string's value is its UTF-8 text and any other value's is its
    /// compact JSON text. Equal values give equal hashes under one salt, so
    /// masked values still join.
    Hash {
        /// The salt.
        salt: Salt,
    },
}

impl Mask {
    /// The masked form of `value`.
    pub fn apply(&self, value: &Value) -> Value {
        match self {
            Mask::Redact => Value::String(REDACTED.to_owned()),
            Mask::Partial { keep_last } => match value {
                Value::String(text) => Value::String(partial(text, *keep_last)),
                Value::Number(number) => Value::String(partial(&number.to_string(), *keep_last)),
                _ => Value::String(REDACTED.to_owned()),
            },
            Mask::Hash { salt } => Value::String(salted_hash(salt, value)),
        }
    }
}

/// All but the last `keep_last` characters of `text` starred; all of them
/// if there are no more than `keep_last`.
fn partial(text: &str, keep_last: usize) -> String {
    let count = text.chars().count();
    let starred = if count > keep_last {
        count - keep_last
    } else {
        count
    };
    let kept_from = text
        .char_indices()
        .nth(starred)
        .map_or(text.len(), |(at, _)| at);
    let mut masked = "*".repeat(starred);
    masked.push_str(&text[kept_from..]);
    masked
}

fn salted_hash(salt: &Salt, value: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update((salt.as_bytes().len() as u64).to_le_bytes());
    hasher.update(salt.as_bytes());
    match value {
        Value::String(text) => hasher.update(text.as_bytes()),
        other => hasher.update(serde_json::to_vec(other).expect("a JSON value serializes")),
    }
    let digest = hasher.finalize();
    let mut text = String::with_capacity(HASH_PREFIX.len() + 2 * digest.len());
    text.push_str(HASH_PREFIX);
    for byte in digest {
        text.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// One parsed rule of a policy.
#[derive(Debug, Clone)]
pub struct Rule {
    path_text: String,
    path: JsonPath,
    mask: Mask,
    visible_from: Clearance,
}

impl Rule {
    /// The JSONPath as written in the policy.
    pub fn path(&self) -> &str {
        &self.path_text
    }

    /// The mask.
    pub fn mask(&self) -> &Mask {
        &self.mask
    }

    /// The lowest clearance that sees the selected values in clear.
    pub fn visible_from(&self) -> Clearance {
        self.visible_from
    }

    /// Whether a reader at `clearance` gets this rule's values masked.
    pub fn applies_to(&self, clearance: Clearance) -> bool {
        clearance < self.visible_from
    }
}

/// A parsed, validated masking policy. See the module documentation for
/// the document format.
#[derive(Debug, Clone)]
pub struct MaskingPolicy {
    rules: Vec<Rule>,
}

/// Why a policy document does not parse. `rules[i]` names the rule by its
/// index in the document's `rules` array.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The document is larger than [`POLICY_SIZE_MAX`].
    #[error("masking policy of {size} bytes exceeds the limit of {POLICY_SIZE_MAX}: split it")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The document is not JSON.
    #[error("masking policy is not valid JSON: {source}: fix the syntax there")]
    InvalidJson {
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The document is JSON but not a policy (a missing or unknown field,
    /// a clearance other than `L1` to `L4`, a value of the wrong type).
    #[error(
        "masking policy does not have the expected shape: {source}: expected \
         {{\"rules\": [{{\"path\": ..., \"mask\": ..., \"visible_from\": \"L1\"..\"L4\"}}]}}"
    )]
    Shape {
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// More rules than [`RULES_MAX`].
    #[error("masking policy has {count} rules, more than the limit of {RULES_MAX}: merge some")]
    TooManyRules {
        /// How many it has.
        count: usize,
    },
    /// A path longer than [`PATH_SIZE_MAX`].
    #[error("rules[{rule}]: path of {size} bytes exceeds the limit of {PATH_SIZE_MAX}")]
    PathTooLong {
        /// The rule's index.
        rule: usize,
        /// The path's size.
        size: usize,
    },
    /// A path that is not an RFC 9535 JSONPath.
    #[error(
        "rules[{rule}]: `{path}` is not an RFC 9535 JSONPath: at position {position}, \
         {message}: write it like `$.card.number` or `$..ssn`"
    )]
    InvalidPath {
        /// The rule's index.
        rule: usize,
        /// The path as written.
        path: String,
        /// 1-based character position of the error.
        position: usize,
        /// What the JSONPath parser expected.
        message: String,
    },
    /// A mask that is neither a string nor an object with one key.
    #[error(
        "rules[{rule}]: mask {found} is not a mask: write \"redact\", \
         {{\"partial\": {{\"keep_last\": 4}}}} or {{\"hash\": {{\"salt\": \"...\"}}}}"
    )]
    MaskShape {
        /// The rule's index.
        rule: usize,
        /// The mask as written (JSON).
        found: String,
    },
    /// A mask name this code does not know.
    #[error("rules[{rule}]: unknown mask `{name}`: use `redact`, `partial` or `hash`")]
    UnknownMask {
        /// The rule's index.
        rule: usize,
        /// The name as written.
        name: String,
    },
    /// A mask's parameters have the wrong shape or type.
    #[error("rules[{rule}]: bad parameters for mask `{mask}`: {source}")]
    Parameters {
        /// The rule's index.
        rule: usize,
        /// The mask's name.
        mask: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// `keep_last` above [`KEEP_LAST_MAX`].
    #[error("rules[{rule}]: keep_last {keep_last} exceeds the limit of {KEEP_LAST_MAX}")]
    KeepLastTooLarge {
        /// The rule's index.
        rule: usize,
        /// The value given.
        keep_last: usize,
    },
    /// A rule's salt is empty or longer than [`SALT_SIZE_MAX`].
    #[error("rules[{rule}]: salt of {size} bytes: use 1 to {SALT_SIZE_MAX} bytes")]
    SaltSize {
        /// The rule's index.
        rule: usize,
        /// The salt's size.
        size: usize,
    },
    /// A hash rule without a salt, in a policy parsed without a secret.
    #[error(
        "rules[{rule}]: hash mask has no salt: give it {{\"hash\": {{\"salt\": \"...\"}}}} \
         or parse the policy with a deployment secret"
    )]
    MissingSalt {
        /// The rule's index.
        rule: usize,
    },
    /// A deployment secret of the wrong size.
    #[error("deployment secret of {size} bytes: use {SECRET_SIZE_MIN} to {SALT_SIZE_MAX} bytes")]
    SecretSize {
        /// The secret's size.
        size: usize,
    },
}

/// Why a payload cannot be masked for a reader. Each one fails the read:
/// the reader never gets the payload unmasked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    /// A rule applies to this reader but the payload is not JSON.
    #[error(
        "masking rules apply to this reader but the payload's content type is \
         `{content_type}`, not application/json or +json: refusing to pass it \
         through unmasked; publish it as JSON or deny this reader"
    )]
    NotJson {
        /// The payload's content type.
        content_type: String,
    },
    /// The payload claims JSON but does not parse (or repeats a key).
    #[error(
        "payload with content type `{content_type}` is not valid JSON ({source}): \
         refusing to pass it through unmasked"
    )]
    InvalidJson {
        /// The payload's content type.
        content_type: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The payload is larger than [`MASK_PAYLOAD_SIZE_MAX`].
    #[error("payload of {size} bytes exceeds the masking limit of {MASK_PAYLOAD_SIZE_MAX}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    rules: Vec<RuleDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDocument {
    path: String,
    mask: Value,
    visible_from: Clearance,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialParameters {
    keep_last: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashParameters {
    #[serde(default)]
    salt: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactParameters {}

impl MaskingPolicy {
    /// Parses a policy document whose hash rules all carry their own salt.
    pub fn parse(document: &[u8]) -> Result<MaskingPolicy, PolicyError> {
        Self::parse_inner(document, None)
    }

    /// Parses a policy document; hash rules without a salt use `secret`,
    /// the per-deployment secret.
    pub fn parse_with_secret(document: &[u8], secret: &[u8]) -> Result<MaskingPolicy, PolicyError> {
        if !(SECRET_SIZE_MIN..=SALT_SIZE_MAX).contains(&secret.len()) {
            return Err(PolicyError::SecretSize { size: secret.len() });
        }
        Self::parse_inner(document, Some(Salt(secret.into())))
    }

    fn parse_inner(document: &[u8], secret: Option<Salt>) -> Result<MaskingPolicy, PolicyError> {
        if document.len() > POLICY_SIZE_MAX {
            return Err(PolicyError::TooLarge {
                size: document.len(),
            });
        }
        let parsed: PolicyDocument =
            serde_json::from_slice(document).map_err(|source| match source.classify() {
                serde_json::error::Category::Data => PolicyError::Shape { source },
                _ => PolicyError::InvalidJson { source },
            })?;
        if parsed.rules.len() > RULES_MAX {
            return Err(PolicyError::TooManyRules {
                count: parsed.rules.len(),
            });
        }
        let rules = (parsed.rules.into_iter().enumerate())
            .map(|(index, rule)| parse_rule(index, rule, secret.as_ref()))
            .collect::<Result<Vec<Rule>, PolicyError>>()?;
        Ok(MaskingPolicy { rules })
    }

    /// The rules, in document order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule masks something for a reader at `clearance`.
    pub fn applies_to(&self, clearance: Clearance) -> bool {
        self.rules.iter().any(|rule| rule.applies_to(clearance))
    }

    /// `payload` as a reader at `clearance` may see it. Copies `payload`
    /// when nothing is masked; [`MaskingPolicy::mask_bytes`] does not.
    pub fn mask(
        &self,
        payload: &[u8],
        content_type: &str,
        clearance: Clearance,
    ) -> Result<Bytes, MaskError> {
        let masked = self.masked(payload, content_type, clearance)?;
        Ok(masked.unwrap_or_else(|| Bytes::copy_from_slice(payload)))
    }

    /// `payload` as a reader at `clearance` may see it; the same `Bytes`
    /// (no copy) when nothing is masked.
    pub fn mask_bytes(
        &self,
        payload: &Bytes,
        content_type: &str,
        clearance: Clearance,
    ) -> Result<Bytes, MaskError> {
        let masked = self.masked(payload, content_type, clearance)?;
        Ok(masked.unwrap_or_else(|| payload.clone()))
    }

    /// The payload of a stored event as a reader at `clearance` may see
    /// it; a slice of the batch (no copy) when nothing is masked.
    pub fn mask_view(
        &self,
        view: &EventView<'_>,
        clearance: Clearance,
    ) -> Result<Bytes, MaskError> {
        self.mask_bytes(&view.payload(), view.content_type(), clearance)
    }

    /// The masked payload, or `None` when nothing in it is masked for
    /// this reader (the caller then returns the original bytes).
    fn masked(
        &self,
        payload: &[u8],
        content_type: &str,
        clearance: Clearance,
    ) -> Result<Option<Bytes>, MaskError> {
        if !self.applies_to(clearance) {
            return Ok(None);
        }
        if !is_json_content_type(content_type) {
            return Err(MaskError::NotJson {
                content_type: content_type.to_owned(),
            });
        }
        if payload.len() > MASK_PAYLOAD_SIZE_MAX {
            return Err(MaskError::TooLarge {
                size: payload.len(),
            });
        }
        let mut value = parse_payload(payload, content_type)?;
        let targets = self.targets(&value, clearance);
        if targets.is_empty() {
            return Ok(None);
        }
        for (pointer, rule) in &targets {
            // `None`: an ancestor was masked first and covers this node.
            if let Some(node) = value.pointer_mut(pointer) {
                *node = self.rules[*rule].mask.apply(node);
            }
        }
        let bytes = serde_json::to_vec(&value).expect("a JSON value serializes");
        Ok(Some(Bytes::from(bytes)))
    }

    /// Every (JSON pointer, rule index) that applies to `clearance`,
    /// selected in the unmasked `value`. Sorted so that an ancestor comes
    /// before its descendants (its pointer is their prefix) and, on one
    /// node, rules come in document order; duplicates removed.
    fn targets(&self, value: &Value, clearance: Clearance) -> Vec<(String, usize)> {
        let mut targets: Vec<(String, usize)> = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.applies_to(clearance) {
                let located = rule.path.query_located(value);
                targets.extend(located.locations().map(|at| (at.to_json_pointer(), index)));
            }
        }
        targets.sort_unstable();
        targets.dedup();
        targets
    }
}

fn parse_rule(
    index: usize,
    rule: RuleDocument,
    secret: Option<&Salt>,
) -> Result<Rule, PolicyError> {
    if rule.path.len() > PATH_SIZE_MAX {
        return Err(PolicyError::PathTooLong {
            rule: index,
            size: rule.path.len(),
        });
    }
    let path = JsonPath::parse(&rule.path).map_err(|error| PolicyError::InvalidPath {
        rule: index,
        path: rule.path.clone(),
        position: error.position(),
        message: error.message().to_owned(),
    })?;
    let mask = parse_mask(index, rule.mask, secret)?;
    Ok(Rule {
        path_text: rule.path,
        path,
        mask,
        visible_from: rule.visible_from,
    })
}

/// A mask is written `"name"` or `{"name": {parameters}}`.
fn parse_mask(rule: usize, mask: Value, secret: Option<&Salt>) -> Result<Mask, PolicyError> {
    let (name, parameters) = match mask {
        Value::String(name) => (name, Value::Object(Map::new())),
        Value::Object(map) if map.len() == 1 => map.into_iter().next().expect("one entry"),
        other => {
            return Err(PolicyError::MaskShape {
                rule,
                found: other.to_string(),
            });
        }
    };
    match name.as_str() {
        "redact" => {
            parameters_of::<RedactParameters>(rule, "redact", parameters)?;
            Ok(Mask::Redact)
        }
        "partial" => parse_partial(rule, parameters),
        "hash" => parse_hash(rule, parameters, secret),
        _ => Err(PolicyError::UnknownMask { rule, name }),
    }
}

fn parameters_of<T: for<'de> Deserialize<'de>>(
    rule: usize,
    mask: &'static str,
    parameters: Value,
) -> Result<T, PolicyError> {
    serde_json::from_value(parameters).map_err(|source| PolicyError::Parameters {
        rule,
        mask,
        source,
    })
}

fn parse_partial(rule: usize, parameters: Value) -> Result<Mask, PolicyError> {
    let PartialParameters { keep_last } = parameters_of(rule, "partial", parameters)?;
    if keep_last > KEEP_LAST_MAX {
        return Err(PolicyError::KeepLastTooLarge { rule, keep_last });
    }
    Ok(Mask::Partial { keep_last })
}

fn parse_hash(rule: usize, parameters: Value, secret: Option<&Salt>) -> Result<Mask, PolicyError> {
    let HashParameters { salt } = parameters_of(rule, "hash", parameters)?;
    let salt = match (salt, secret) {
        (Some(salt), _) if (1..=SALT_SIZE_MAX).contains(&salt.len()) => {
            Salt(salt.into_bytes().into_boxed_slice())
        }
        (Some(salt), _) => {
            return Err(PolicyError::SaltSize {
                rule,
                size: salt.len(),
            });
        }
        (None, Some(secret)) => secret.clone(),
        (None, None) => return Err(PolicyError::MissingSalt { rule }),
    };
    Ok(Mask::Hash { salt })
}

/// `application/json` or any `+json` media type, ignoring case and
/// parameters (`; charset=utf-8`).
fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    let json_subtype = subtype == "json" && kind.eq_ignore_ascii_case("application");
    !kind.is_empty() && (json_subtype || subtype.ends_with("+json"))
}

fn parse_payload(payload: &[u8], content_type: &str) -> Result<Value, MaskError> {
    match serde_json::from_slice::<StrictValue>(payload) {
        Ok(StrictValue(value)) => Ok(value),
        Err(source) => Err(MaskError::InvalidJson {
            content_type: content_type.to_owned(),
            source,
        }),
    }
}

/// A JSON value that refuses duplicate object keys.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use sluice_model::event::{Event, EventBatch, Headers};

    const JSON: &str = "application/json";

    const SAMPLE_POLICY: &str = r#"{"rules": [
        {"path": "$.card.number", "mask": {"partial": {"keep_last": 4}}, "visible_from": "L3"},
        {"path": "$..ssn", "mask": "redact", "visible_from": "L4"},
        {"path": "$.email", "mask": {"hash": {"salt": "crm"}}, "visible_from": "L2"}
    ]}"#;

    fn sample_policy() -> MaskingPolicy {
        MaskingPolicy::parse(SAMPLE_POLICY.as_bytes()).expect("sample policy parses")
    }

    fn sample_payload() -> Bytes {
        let value = json!({
            "card": {"number": "4111111111111111", "brand": "visa"},
            "email": "alice@example.com",
            "customer": {"ssn": "078-05-1120", "name": "Alice"},
            "amount": 1250
        });
        Bytes::from(serde_json::to_vec(&value).unwrap())
    }

    fn policy(rules: Value) -> Result<MaskingPolicy, PolicyError> {
        MaskingPolicy::parse(json!({ "rules": rules }).to_string().as_bytes())
    }

    fn masked_value(policy: &MaskingPolicy, payload: &Bytes, clearance: Clearance) -> Value {
        let masked = policy.mask_bytes(payload, JSON, clearance).expect("masks");
        serde_json::from_slice(&masked).expect("masked payload is JSON")
    }

    fn salt(text: &str) -> Salt {
        Salt(text.as_bytes().into())
    }

    fn hash_of(salt_text: &str, value: &Value) -> String {
        salted_hash(&salt(salt_text), value)
    }

    #[test]
    fn redact_replaces_any_type() {
        for value in [
            json!("x"),
            json!(42),
            json!(null),
            json!(true),
            json!({"a": [1]}),
            json!([]),
        ] {
            assert_eq!(Mask::Redact.apply(&value), json!(REDACTED));
        }
    }

    #[test]
    fn partial_keeps_the_last_characters_on_char_boundaries() {
        let mask = Mask::Partial { keep_last: 4 };
        assert_eq!(
            mask.apply(&json!("4111111111111111")),
            json!("************1111")
        );
        assert_eq!(mask.apply(&json!("äö€😀x1234")), json!("*****1234"));
        assert_eq!(mask.apply(&json!("ab😀€ü")), json!("*b😀€ü"));
        assert_eq!(
            Mask::Partial { keep_last: 0 }.apply(&json!("abc")),
            json!("***")
        );
    }

    #[test]
    fn partial_stars_a_short_value_whole() {
        let mask = Mask::Partial { keep_last: 4 };
        assert_eq!(mask.apply(&json!("1234")), json!("****"));
        assert_eq!(mask.apply(&json!("12")), json!("**"));
        assert_eq!(mask.apply(&json!("")), json!(""));
    }

    #[test]
    fn partial_turns_numbers_into_strings_and_redacts_the_rest() {
        let mask = Mask::Partial { keep_last: 2 };
        assert_eq!(mask.apply(&json!(123456)), json!("****56"));
        assert_eq!(mask.apply(&json!(-12.5)), json!("***.5"));
        for value in [json!(null), json!(false), json!({"a": 1}), json!([1, 2])] {
            assert_eq!(mask.apply(&value), json!(REDACTED));
        }
    }

    #[test]
    fn hash_is_deterministic_with_a_salt_and_differs_across_salts() {
        let value = json!("alice@example.com");
        let first = hash_of("crm", &value);
        assert_eq!(first, hash_of("crm", &value));
        assert_ne!(first, hash_of("billing", &value));
        assert_ne!(first, hash_of("crm", &json!("bob@example.com")));
        assert!(first.starts_with(HASH_PREFIX));
        let hex = &first[HASH_PREFIX.len()..];
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // The salt is length-prefixed: moving bytes between salt and value
        // changes the hash.
        assert_ne!(hash_of("ab", &json!("c")), hash_of("a", &json!("bc")));
    }

    #[test]
    fn hash_is_pinned() {
        // SHA-256 of 03 00 00 00 00 00 00 00 "crm" "alice@example.com",
        // computed independently with Python's hashlib; a change here breaks
        // joins against data masked earlier.
        assert_eq!(
            hash_of("crm", &json!("alice@example.com")),
            "sha256:5a0cacd1fb6d5dbb4dab860fe7f1f275c1733caee078ccb753a7dcb463337a31"
        );
    }

    #[test]
    fn hash_of_equal_values_joins_across_events() {
        let policy = sample_policy();
        let one = Bytes::from_static(br#"{"email": "alice@example.com", "n": 1}"#);
        let two = Bytes::from_static(br#"{"n": 2, "email": "alice@example.com"}"#);
        let (one, two) = (
            masked_value(&policy, &one, Clearance::L1),
            masked_value(&policy, &two, Clearance::L1),
        );
        assert_eq!(one["email"], two["email"]);
        assert_eq!(
            one["email"],
            json!(hash_of("crm", &json!("alice@example.com")))
        );
    }

    #[test]
    fn hash_without_salt_uses_the_deployment_secret() {
        let document =
            json!({"rules": [{"path": "$.id", "mask": {"hash": {}}, "visible_from": "L2"}]});
        let document = document.to_string();
        assert!(matches!(
            MaskingPolicy::parse(document.as_bytes()),
            Err(PolicyError::MissingSalt { rule: 0 })
        ));
        let secret = b"deployment-secret-0123456789";
        let policy = MaskingPolicy::parse_with_secret(document.as_bytes(), secret).unwrap();
        let other =
            MaskingPolicy::parse_with_secret(document.as_bytes(), b"another-secret-0123456")
                .unwrap();
        let payload = Bytes::from_static(br#"{"id": "u-1"}"#);
        let masked = masked_value(&policy, &payload, Clearance::L1);
        let expected = salted_hash(&Salt(secret.as_slice().into()), &json!("u-1"));
        assert_eq!(masked["id"], json!(expected));
        assert_ne!(masked, masked_value(&other, &payload, Clearance::L1));
        assert!(matches!(
            MaskingPolicy::parse_with_secret(document.as_bytes(), b"short"),
            Err(PolicyError::SecretSize { size: 5 })
        ));
        assert!(!format!("{policy:?}").contains("deployment-secret"));
    }

    #[test]
    fn clearance_levels_see_progressively_more() {
        let policy = sample_policy();
        let payload = sample_payload();
        let clear: Value = serde_json::from_slice(&payload).unwrap();
        let email_hash = json!(hash_of("crm", &json!("alice@example.com")));

        let l1 = masked_value(&policy, &payload, Clearance::L1);
        assert_eq!(l1["card"]["number"], json!("************1111"));
        assert_eq!(l1["customer"]["ssn"], json!(REDACTED));
        assert_eq!(l1["email"], email_hash);
        assert_eq!(l1["amount"], json!(1250));
        assert_eq!(l1["card"]["brand"], json!("visa"));

        let l2 = masked_value(&policy, &payload, Clearance::L2);
        assert_eq!(l2["email"], clear["email"]);
        assert_eq!(l2["card"]["number"], json!("************1111"));

        let l3 = masked_value(&policy, &payload, Clearance::L3);
        assert_eq!(l3["card"]["number"], clear["card"]["number"]);
        assert_eq!(l3["customer"]["ssn"], json!(REDACTED));

        let l4 = policy.mask_bytes(&payload, JSON, Clearance::L4).unwrap();
        assert_eq!(l4, payload);
        assert!(Clearance::L1 < Clearance::L2 && Clearance::L3 < Clearance::L4);
    }

    #[test]
    fn nested_and_wildcard_paths() {
        let policy = policy(json!([
            {"path": "$..ssn", "mask": "redact", "visible_from": "L4"},
            {"path": "$.items[*].card", "mask": {"partial": {"keep_last": 4}}, "visible_from": "L4"}
        ]))
        .unwrap();
        let payload = Bytes::from(
            json!({
                "ssn": "1",
                "a": {"b": {"ssn": "2", "list": [{"ssn": "3"}, {"other": "x"}]}},
                "items": [{"card": "4111111111111111"}, {"card": 5500000000000004_u64}, {"no": 1}]
            })
            .to_string(),
        );
        let masked = masked_value(&policy, &payload, Clearance::L3);
        assert_eq!(masked["ssn"], json!(REDACTED));
        assert_eq!(masked["a"]["b"]["ssn"], json!(REDACTED));
        assert_eq!(masked["a"]["b"]["list"][0]["ssn"], json!(REDACTED));
        assert_eq!(masked["a"]["b"]["list"][1]["other"], json!("x"));
        assert_eq!(masked["items"][0]["card"], json!("************1111"));
        assert_eq!(masked["items"][1]["card"], json!("************0004"));
        assert_eq!(masked["items"][2], json!({"no": 1}));
    }

    #[test]
    fn filters_select_in_the_unmasked_payload() {
        // Rule 0 masks the field rule 1's filter reads; rule 1 must still
        // select by the original value.
        let policy = policy(json!([
            {"path": "$.items[*].kind", "mask": "redact", "visible_from": "L2"},
            {"path": "$.items[?@.kind == 'card'].number", "mask": "redact", "visible_from": "L2"}
        ]))
        .unwrap();
        let payload = Bytes::from_static(
            br#"{"items": [{"kind": "card", "number": "4111"}, {"kind": "iban", "number": "DE89"}]}"#,
        );
        let masked = masked_value(&policy, &payload, Clearance::L1);
        assert_eq!(
            masked["items"][0],
            json!({"kind": REDACTED, "number": REDACTED})
        );
        assert_eq!(
            masked["items"][1],
            json!({"kind": REDACTED, "number": "DE89"})
        );
    }

    #[test]
    fn an_ancestor_mask_covers_its_descendants() {
        let policy = policy(json!([
            {"path": "$.card.number", "mask": {"partial": {"keep_last": 4}}, "visible_from": "L2"},
            {"path": "$.card", "mask": {"hash": {"salt": "s"}}, "visible_from": "L2"}
        ]))
        .unwrap();
        let payload = Bytes::from_static(br#"{"card": {"number": "4111111111111111"}}"#);
        let masked = masked_value(&policy, &payload, Clearance::L1);
        // The hash is of the original card, whatever the rule order.
        let expected = hash_of("s", &json!({"number": "4111111111111111"}));
        assert_eq!(masked, json!({"card": expected}));
    }

    #[test]
    fn unparseable_policy_names_the_problem() {
        let error = MaskingPolicy::parse(b"{\"rules\": [").unwrap_err();
        assert!(matches!(error, PolicyError::InvalidJson { .. }), "{error}");
        assert!(error.to_string().contains("line 1"), "{error}");

        let cases: [(&str, &str); 4] = [
            (r#"{"rulez": []}"#, "rulez"),
            (
                r#"{"rules": [{"path": "$.a", "mask": "redact"}]}"#,
                "visible_from",
            ),
            (
                r#"{"rules": [{"path": "$.a", "mask": "redact", "visible_from": "L5"}]}"#,
                "L5",
            ),
            (
                r#"{"rules": [{"path": "$.a", "mask": "redact", "visible_from": "L1", "x": 1}]}"#,
                "`x`",
            ),
        ];
        for (document, named) in cases {
            let error = MaskingPolicy::parse(document.as_bytes()).unwrap_err();
            assert!(
                matches!(error, PolicyError::Shape { .. }),
                "{document}: {error}"
            );
            assert!(error.to_string().contains(named), "{document}: {error}");
        }
        let large = vec![b' '; POLICY_SIZE_MAX + 1];
        assert!(matches!(
            MaskingPolicy::parse(&large),
            Err(PolicyError::TooLarge { .. })
        ));
    }

    #[test]
    fn invalid_jsonpath_names_the_path_and_position() {
        let error = policy(json!([
            {"path": "$.ok", "mask": "redact", "visible_from": "L2"},
            {"path": "$.card[", "mask": "redact", "visible_from": "L2"}
        ]))
        .unwrap_err();
        let PolicyError::InvalidPath {
            rule,
            path,
            position,
            ..
        } = &error
        else {
            panic!("expected InvalidPath, got {error}");
        };
        assert_eq!((*rule, path.as_str()), (1, "$.card["));
        assert!(*position > 0);
        let message = error.to_string();
        assert!(
            message.contains("rules[1]") && message.contains("$.card["),
            "{message}"
        );
        for bad in ["card.number", "$.", "$[?@.a ==]", ""] {
            let error = policy(json!([{"path": bad, "mask": "redact", "visible_from": "L2"}]));
            assert!(
                matches!(error, Err(PolicyError::InvalidPath { .. })),
                "{bad}"
            );
        }
        let long = format!("$.{}", "a".repeat(PATH_SIZE_MAX));
        let error = policy(json!([{"path": long, "mask": "redact", "visible_from": "L2"}]));
        assert!(matches!(
            error,
            Err(PolicyError::PathTooLong { rule: 0, .. })
        ));
    }

    #[test]
    fn unknown_mask_and_bad_shapes_are_named() {
        let error = policy(json!([{"path": "$.a", "mask": "scramble", "visible_from": "L2"}]));
        let error = error.unwrap_err();
        assert!(matches!(&error, PolicyError::UnknownMask { rule: 0, name } if name == "scramble"));
        assert!(error.to_string().contains("scramble"));
        let error = policy(json!([{"path": "$.a", "mask": {"rot13": {}}, "visible_from": "L2"}]));
        assert!(matches!(error, Err(PolicyError::UnknownMask { .. })));
        for shape in [
            json!(7),
            json!({}),
            json!({"redact": {}, "hash": {}}),
            json!(null),
        ] {
            let error = policy(json!([{"path": "$.a", "mask": shape, "visible_from": "L2"}]));
            assert!(
                matches!(error, Err(PolicyError::MaskShape { rule: 0, .. })),
                "{shape}"
            );
        }
        let ok = policy(json!([{"path": "$.a", "mask": {"redact": {}}, "visible_from": "L2"}]));
        assert_eq!(ok.unwrap().rules()[0].mask(), &Mask::Redact);
    }

    #[test]
    fn bad_parameters_are_named() {
        let parameters = [
            json!({"partial": {}}),
            json!({"partial": {"keep_last": -1}}),
            json!({"partial": {"keep_last": "4"}}),
            json!({"partial": {"keep_last": 4, "keep_first": 2}}),
            json!({"partial": 4}),
            json!({"hash": {"salt": 7}}),
            json!({"hash": {"pepper": "x"}}),
            json!({"redact": {"marker": "x"}}),
        ];
        for mask in parameters {
            let error = policy(json!([{"path": "$.a", "mask": mask, "visible_from": "L2"}]));
            let error = error.unwrap_err();
            assert!(
                matches!(error, PolicyError::Parameters { rule: 0, .. }),
                "{mask}: {error}"
            );
        }
        let mask = json!({"partial": {"keep_last": KEEP_LAST_MAX + 1}});
        let error = policy(json!([{"path": "$.a", "mask": mask, "visible_from": "L2"}]));
        assert!(matches!(
            error,
            Err(PolicyError::KeepLastTooLarge { rule: 0, .. })
        ));
        for salt in [String::new(), "s".repeat(SALT_SIZE_MAX + 1)] {
            let mask = json!({"hash": {"salt": salt}});
            let error = policy(json!([{"path": "$.a", "mask": mask, "visible_from": "L2"}]));
            assert!(matches!(error, Err(PolicyError::SaltSize { rule: 0, .. })));
        }
        let rule = json!({"path": "$.a", "mask": "redact", "visible_from": "L2"});
        let error = policy(Value::Array(vec![rule; RULES_MAX + 1]));
        assert!(matches!(error, Err(PolicyError::TooManyRules { .. })));
    }

    #[test]
    fn non_json_payload_with_an_applicable_rule_is_an_error() {
        let policy = sample_policy();
        let payload = Bytes::from_static(b"card=4111111111111111");
        for content_type in [
            "text/plain",
            "application/octet-stream",
            "",
            "json",
            "text/json",
        ] {
            let error = policy
                .mask_bytes(&payload, content_type, Clearance::L1)
                .unwrap_err();
            assert!(
                matches!(&error, MaskError::NotJson { content_type: c } if c == content_type),
                "{content_type}: {error}"
            );
        }
        // No rule applies at L4: nothing to mask, whatever the content.
        let clear = policy
            .mask_bytes(&payload, "text/plain", Clearance::L4)
            .unwrap();
        assert_eq!(clear.as_ptr(), payload.as_ptr());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let json = [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.sluice.payment+json",
            "application/problem+json;v=2",
        ];
        for content_type in json {
            assert!(is_json_content_type(content_type), "{content_type}");
        }
        for content_type in ["application/jsonx", "/json", "application/", "text/plain"] {
            assert!(!is_json_content_type(content_type), "{content_type}");
        }
    }

    #[test]
    fn invalid_json_payload_is_an_error() {
        let policy = sample_policy();
        for payload in [
            &b"{\"email\": "[..],
            b"not json",
            b"",
            b"\xff\xfe",
            b"{\"a\":1} x",
        ] {
            let error = policy.mask(payload, JSON, Clearance::L1).unwrap_err();
            assert!(matches!(error, MaskError::InvalidJson { .. }), "{error}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let policy = sample_policy();
        let payload = br#"{"customer": {"ssn": "078-05-1120", "ssn": "x"}}"#;
        let error = policy.mask(payload, JSON, Clearance::L1).unwrap_err();
        assert!(error.to_string().contains("duplicate key `ssn`"), "{error}");
    }

    #[test]
    fn no_applicable_rule_returns_the_payload_zero_copy() {
        let policy = sample_policy();
        let payload = sample_payload();
        let same = policy.mask_bytes(&payload, JSON, Clearance::L4).unwrap();
        assert_eq!(same.as_ptr(), payload.as_ptr());
        assert_eq!(same.len(), payload.len());
        // Rules apply but select nothing: still the original bytes.
        let unrelated = Bytes::from_static(b"{ \"amount\" : 1.50 }");
        let same = policy.mask_bytes(&unrelated, JSON, Clearance::L1).unwrap();
        assert_eq!(same.as_ptr(), unrelated.as_ptr());
        let empty = MaskingPolicy::parse(br#"{"rules": []}"#).unwrap();
        let same = empty
            .mask_bytes(&payload, "text/plain", Clearance::L1)
            .unwrap();
        assert_eq!(same.as_ptr(), payload.as_ptr());
        assert_eq!(policy.mask(&payload, JSON, Clearance::L4).unwrap(), payload);
    }

    #[test]
    fn stored_bytes_stay_intact_and_still_verify() {
        let event = Event {
            topic: "payments".into(),
            payload: sample_payload(),
            headers: Headers {
                content_type: JSON.into(),
                ..Headers::default()
            },
            ..Event::default()
        };
        let batch = EventBatch::encode(&[event]).unwrap();
        let before = batch.as_bytes().to_vec();
        let policy = sample_policy();
        for clearance in Clearance::ALL {
            let view = batch.iter().next().unwrap();
            let masked = policy.mask_view(&view, clearance).unwrap();
            assert_eq!(masked == sample_payload(), clearance == Clearance::L4);
        }
        assert_eq!(batch.as_bytes()[..], before[..]);
        let again = EventBatch::from_bytes(batch.as_bytes().clone()).expect("checksum verifies");
        assert_eq!(again.iter().next().unwrap().payload(), sample_payload());
    }

    #[test]
    fn payload_above_the_limit_is_refused() {
        let policy = sample_policy();
        let payload = vec![b' '; MASK_PAYLOAD_SIZE_MAX + 1];
        let error = policy.mask(&payload, JSON, Clearance::L1).unwrap_err();
        assert!(matches!(error, MaskError::TooLarge { .. }));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
            any::<String>().prop_map(Value::String),
            prop::sample::select(vec!["ssn", "card", "4111111111111111", "ä😀"])
                .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let keys = prop::sample::select(vec!["ssn", "card", "items", "email", "kind", "a"]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys.prop_map(String::from), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn wide_policy() -> MaskingPolicy {
        policy(json!([
            {"path": "$..ssn", "mask": "redact", "visible_from": "L4"},
            {"path": "$..card", "mask": {"partial": {"keep_last": 4}}, "visible_from": "L3"},
            {"path": "$.items[*]", "mask": {"hash": {"salt": "s"}}, "visible_from": "L2"},
            {"path": "$..[?@.kind == 'card']", "mask": "redact", "visible_from": "L3"},
            {"path": "$..*", "mask": {"partial": {"keep_last": 1}}, "visible_from": "L2"},
            {"path": "$", "mask": "redact", "visible_from": "L1"}
        ]))
        .expect("wide policy parses")
    }

    proptest! {
        #[test]
        fn masking_never_panics_on_arbitrary_json(
            value in json_value(),
            level in 0..4usize,
        ) {
            let policy = wide_policy();
            let payload = Bytes::from(serde_json::to_vec(&value).unwrap());
            let clearance = Clearance::ALL[level];
            let masked = policy.mask_bytes(&payload, JSON, clearance).expect("JSON masks");
            let parsed: Value = serde_json::from_slice(&masked).expect("masked is JSON");
            if clearance == Clearance::L4 {
                prop_assert_eq!(masked.as_ptr(), payload.as_ptr());
            }
            if clearance == Clearance::L3 {
                let ssn = JsonPath::parse("$..ssn").unwrap();
                for node in ssn.query(&parsed).all() {
                    prop_assert_eq!(node, &json!(REDACTED));
                }
            }
        }

        #[test]
        fn masking_never_panics_on_arbitrary_bytes(
            data in prop::collection::vec(any::<u8>(), 0..256),
            level in 0..4usize,
        ) {
            let _ = wide_policy().mask(&data, JSON, Clearance::ALL[level]);
        }
    }
}
