//! The field catalogue: every field a subject may hold, with its category,
//! sensitivity, value type and size limit (`policies/fields.toml`).
//!
//! Parsing is pure (text in, catalogue or error out). Errors name the file,
//! the line and the problem. Validation of a value never quotes the value:
//! the reasons are fixed strings, so they are safe to log and to return.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};

use super::PolicyError;

/// Largest `max_bytes` a field may declare.
pub const FIELD_BYTES_LIMIT: u32 = 64 * 1024;
/// Longest field name.
pub const FIELD_NAME_BYTES_MAX: usize = 64;
/// Deepest nesting a `json` value may have.
const JSON_DEPTH_MAX: usize = 8;

/// Whether a field is ordinary personal data or special-category data (GDPR
/// Art. 9: health, religion, ethnicity, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// Ordinary personal data.
    Standard,
    /// Special-category data: never released unless named explicitly.
    Special,
}

/// The type a field's value is validated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueType {
    /// Any non-empty single- or multi-line text.
    String,
    /// An e-mail address (`local@domain.tld`).
    Email,
    /// A telephone number: digits with `+ - ( ) .` and spaces, 5 to 15 digits.
    Phone,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An ISO 3166-1 alpha-2 country code, upper case.
    Country,
    /// A BCP 47 language tag (`en`, `pt-BR`).
    Language,
    /// `true` or `false`.
    Boolean,
    /// A whole number.
    Integer,
    /// One of a fixed list of strings.
    Enum(Vec<String>),
    /// A list of non-empty strings.
    StringList,
    /// `{"lines": [..], "locality", "region", "postal_code", "country"}`.
    PostalAddress,
    /// Any JSON object or array, nested at most 8 deep.
    Json,
}

/// One catalogue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field name, as used in the API and in grants.
    pub name: String,
    /// The category purposes are allowed to touch (`contact`, `health`, ...).
    pub category: String,
    /// Standard or special-category data.
    pub sensitivity: Sensitivity,
    /// How values are validated.
    pub value_type: ValueType,
    /// The largest value, as canonical JSON, in bytes.
    pub max_bytes: u32,
    /// What the field holds, for people reading the catalogue.
    pub description: String,
}

/// Why a value was refused. Never includes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The field is not in the catalogue.
    #[error("field `{field}` is not in the field catalogue")]
    Unknown {
        /// The field name as given (names are not personal data, but are
        /// truncated so a hostile name cannot flood a log).
        field: String,
    },
    /// The value does not have the field's type.
    #[error("field `{field}`: {reason}")]
    Invalid {
        /// The field name.
        field: String,
        /// What is wrong, as a fixed sentence.
        reason: &'static str,
    },
    /// The value is larger than the field allows.
    #[error("field `{field}`: value is larger than {max_bytes} bytes")]
    TooLarge {
        /// The field name.
        field: String,
        /// The field's limit.
        max_bytes: u32,
    },
}

/// The loaded field catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    fields: BTreeMap<String, FieldSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    fields: BTreeMap<String, toml::Spanned<FieldEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldEntry {
    category: String,
    sensitivity: Sensitivity,
    #[serde(rename = "type")]
    value_type: TypeName,
    max_bytes: u32,
    #[serde(default)]
    values: Option<Vec<String>>,
    description: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum TypeName {
    String,
    Email,
    Phone,
    Date,
    Country,
    Language,
    Boolean,
    Integer,
    Enum,
    StringList,
    PostalAddress,
    Json,
}

/// Whether `name` is a valid field, category or purpose identifier:
/// `[a-z][a-z0-9_-]*`, at most 64 bytes.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= FIELD_NAME_BYTES_MAX
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Catalogue {
    /// Parses the catalogue file `file` (the name is used in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let parsed: CatalogueFile = toml::from_str(text).map_err(|error| PolicyError::from_toml(file, text, &error))?;
        let mut fields = BTreeMap::new();
        for (name, entry) in parsed.fields {
            let line = PolicyError::line_of(text, entry.span().start);
            let problem = |problem: String| PolicyError { file: file.to_owned(), line, problem };
            let entry = entry.into_inner();
            if !is_identifier(&name) {
                return Err(problem(format!("field name `{name}` must match [a-z][a-z0-9_-]* (at most 64 bytes)")));
            }
            if !is_identifier(&entry.category) {
                return Err(problem(format!("field `{name}`: category must match [a-z][a-z0-9_-]*")));
            }
            if entry.max_bytes == 0 || entry.max_bytes > FIELD_BYTES_LIMIT {
                return Err(problem(format!("field `{name}`: max_bytes must be between 1 and {FIELD_BYTES_LIMIT}")));
            }
            if entry.description.trim().is_empty() {
                return Err(problem(format!("field `{name}`: description must say what the field holds")));
            }
            let value_type = match (entry.value_type, entry.values) {
                (TypeName::Enum, Some(values)) if !values.is_empty() => ValueType::Enum(values),
                (TypeName::Enum, _) => {
                    return Err(problem(format!("field `{name}`: type \"enum\" needs a non-empty `values` list")));
                }
                (_, Some(_)) => return Err(problem(format!("field `{name}`: `values` is only for type \"enum\""))),
                (other, None) => other.into(),
            };
            let spec = FieldSpec {
                name: name.clone(),
                category: entry.category,
                sensitivity: entry.sensitivity,
                value_type,
                max_bytes: entry.max_bytes,
                description: entry.description,
            };
            fields.insert(name, spec);
        }
        if fields.is_empty() {
            return Err(PolicyError {
                file: file.to_owned(),
                line: 1,
                problem: "the catalogue defines no field".to_owned(),
            });
        }
        Ok(Self { fields })
    }

    /// The entry for `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.get(name)
    }

    /// Every field, by name.
    pub fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        self.fields.values()
    }

    /// Checks `value` for field `name` and returns its canonical JSON bytes,
    /// the form that is sealed and stored.
    pub fn validate(&self, name: &str, value: &Value) -> Result<Vec<u8>, FieldError> {
        let spec = self.field(name).ok_or_else(|| FieldError::Unknown { field: truncated(name) })?;
        let invalid = |reason| FieldError::Invalid { field: name.to_owned(), reason };
        check_type(&spec.value_type, value).map_err(invalid)?;
        let bytes = json_canonical(value).map_err(|_| invalid("value cannot be encoded"))?;
        if bytes.len() > spec.max_bytes as usize {
            return Err(FieldError::TooLarge { field: name.to_owned(), max_bytes: spec.max_bytes });
        }
        Ok(bytes)
    }
}

/// `value` as canonical JSON: object members in key order at every level,
/// whether or not serde_json keeps insertion order (its `preserve_order`
/// feature, which another crate in a build can switch on), so the same value
/// always has the same bytes.
pub fn json_canonical(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|left, right| left.0.cmp(right.0));
                Value::Object(members.into_iter().map(|(name, inner)| (name.clone(), sorted(inner))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(value))
}

impl From<TypeName> for ValueType {
    fn from(name: TypeName) -> Self {
        match name {
            TypeName::String => Self::String,
            TypeName::Email => Self::Email,
            TypeName::Phone => Self::Phone,
            TypeName::Date => Self::Date,
            TypeName::Country => Self::Country,
            TypeName::Language => Self::Language,
            TypeName::Boolean => Self::Boolean,
            TypeName::Integer => Self::Integer,
            TypeName::Enum => Self::Enum(Vec::new()),
            TypeName::StringList => Self::StringList,
            TypeName::PostalAddress => Self::PostalAddress,
            TypeName::Json => Self::Json,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::String => "string",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Date => "date",
            Self::Country => "country",
            Self::Language => "language",
            Self::Boolean => "boolean",
            Self::Integer => "integer",
            Self::Enum(_) => "enum",
            Self::StringList => "string_list",
            Self::PostalAddress => "postal_address",
            Self::Json => "json",
        };
        f.write_str(name)
    }
}

fn truncated(name: &str) -> String {
    name.chars().take(FIELD_NAME_BYTES_MAX).collect()
}

fn check_type(value_type: &ValueType, value: &Value) -> Result<(), &'static str> {
    match value_type {
        ValueType::String => text(value, true).map(drop),
        ValueType::Email => email(text(value, false)?),
        ValueType::Phone => phone(text(value, false)?),
        ValueType::Date => date(text(value, false)?),
        ValueType::Country => country(text(value, false)?),
        ValueType::Language => language(text(value, false)?),
        ValueType::Boolean => value.as_bool().map(drop).ok_or("expected true or false"),
        ValueType::Integer => value.as_i64().map(drop).ok_or("expected a whole number"),
        ValueType::Enum(allowed) => {
            let given = text(value, false)?;
            if allowed.iter().any(|a| a == given) { Ok(()) } else { Err("value is not one of the allowed values") }
        }
        ValueType::StringList => {
            let items = value.as_array().ok_or("expected a list of strings")?;
            items.iter().try_for_each(|item| text(item, false).map(drop))
        }
        ValueType::PostalAddress => postal_address(value),
        ValueType::Json => {
            if !(value.is_object() || value.is_array()) {
                return Err("expected a JSON object or array");
            }
            if depth(value) > JSON_DEPTH_MAX { Err("value is nested too deeply") } else { Ok(()) }
        }
    }
}

/// A non-empty string without control characters (newlines and tabs allowed
/// when `multi_line`).
fn text(value: &Value, multi_line: bool) -> Result<&str, &'static str> {
    let text = value.as_str().ok_or("expected a string")?;
    if text.trim().is_empty() {
        return Err("value is empty; delete the field instead");
    }
    let allowed = |c: char| !c.is_control() || (multi_line && (c == '\n' || c == '\t'));
    if text.chars().all(allowed) { Ok(text) } else { Err("value contains control characters") }
}

fn email(text: &str) -> Result<(), &'static str> {
    const BAD: &str = "expected an e-mail address like name@example.org";
    let (local, domain) = text.rsplit_once('@').ok_or(BAD)?;
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-'));
    let local_ok = !local.is_empty() && local.len() <= 64 && !local.contains('@');
    if local_ok && labels_ok && !text.chars().any(char::is_whitespace) { Ok(()) } else { Err(BAD) }
}

fn phone(text: &str) -> Result<(), &'static str> {
    const BAD: &str = "expected a telephone number: 5 to 15 digits, optionally with a leading + and spaces, dashes, dots or parentheses";
    let body = text.strip_prefix('+').unwrap_or(text);
    let allowed = body.chars().all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.'));
    let digits = body.chars().filter(char::is_ascii_digit).count();
    if allowed && (5..=15).contains(&digits) { Ok(()) } else { Err(BAD) }
}

fn date(text: &str) -> Result<(), &'static str> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format).map(drop).map_err(|_| "expected a calendar date YYYY-MM-DD")
}

fn country(text: &str) -> Result<(), &'static str> {
    if text.len() == 2 && text.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err("expected an ISO 3166-1 alpha-2 country code like GB")
    }
}

fn language(text: &str) -> Result<(), &'static str> {
    const BAD: &str = "expected a BCP 47 language tag like en or pt-BR";
    let mut subtags = text.split('-');
    let primary = subtags.next().ok_or(BAD)?;
    let primary_ok = (2..=3).contains(&primary.len()) && primary.chars().all(|c| c.is_ascii_alphabetic());
    let rest_ok = subtags.all(|tag| (1..=8).contains(&tag.len()) && tag.chars().all(|c| c.is_ascii_alphanumeric()));
    if primary_ok && rest_ok { Ok(()) } else { Err(BAD) }
}

fn postal_address(value: &Value) -> Result<(), &'static str> {
    let object = value
        .as_object()
        .ok_or("expected an address object with `lines` and optional locality, region, postal_code, country")?;
    for (key, member) in object {
        match key.as_str() {
            "lines" => {
                let lines = member.as_array().ok_or("`lines` must be a list of strings")?;
                if lines.is_empty() || lines.len() > 6 {
                    return Err("`lines` must hold 1 to 6 lines");
                }
                lines.iter().try_for_each(|line| text(line, false).map(drop))?;
            }
            "locality" | "region" | "postal_code" => {
                text(member, false)?;
            }
            "country" => country(text(member, false)?)?,
            _ => return Err("unknown address member; allowed: lines, locality, region, postal_code, country"),
        }
    }
    if object.contains_key("lines") { Ok(()) } else { Err("an address needs `lines`") }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// The API description of field values: how each value type reads to a
// client, so that a generated client types a customer's data field by field.

/// A customer's field values by catalogue field name, as the API
/// description names them. Its own schema is the one before a catalogue is
/// known; the document a vault serves has [`Catalogue::values_schema`] of
/// the catalogue in force instead.
#[derive(Debug)]
pub struct FieldValues;

impl utoipa::PartialSchema for FieldValues {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("Field values by catalogue field name; each value is checked against its field's type."))
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for FieldValues {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("FieldValues")
    }
}

impl Catalogue {
    /// The schema of field values under this catalogue: one optional
    /// property per field, typed as the catalogue types it.
    pub fn values_schema(&self) -> Schema {
        let mut object = ObjectBuilder::new().description(Some(
            "Field values by catalogue field name, each typed as the field catalogue in force types it; \
         a name outside the catalogue is refused on writes.",
        ));
        for field in self.fields() {
            object = object.property(&field.name, value_schema(&field.value_type, &field.description));
        }
        object.build().into()
    }
}

fn value_schema(value_type: &ValueType, description: &str) -> Schema {
    let text = |format: Option<KnownFormat>, pattern: Option<&str>| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(format.map(SchemaFormat::KnownFormat))
            .pattern(pattern)
            .min_length(Some(1))
    };
    let builder = match value_type {
        ValueType::String | ValueType::Language => text(None, None),
        ValueType::Email => text(Some(KnownFormat::Email), None),
        ValueType::Phone => text(None, Some(r"^[0-9+\-(). ]+$")),
        ValueType::Date => text(Some(KnownFormat::Date), None),
        ValueType::Country => text(None, Some("^[A-Z]{2}$")),
        ValueType::Boolean => ObjectBuilder::new().schema_type(Type::Boolean),
        ValueType::Integer => {
            ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        }
        ValueType::Enum(values) => ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.clone())),
        ValueType::StringList => {
            let item = text(None, None).build();
            return ArrayBuilder::new().items(item).description(Some(description)).build().into();
        }
        ValueType::PostalAddress => {
            let line = || text(None, None).build();
            let lines = ArrayBuilder::new().items(line()).build();
            ObjectBuilder::new()
                .property("lines", lines)
                .required("lines")
                .property("locality", line())
                .property("region", line())
                .property("postal_code", line())
                .property("country", text(None, Some("^[A-Z]{2}$")).build())
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        }
        ValueType::Json => {
            let object = ObjectBuilder::new().schema_type(Type::Object).build();
            let array = ArrayBuilder::new().items(RefOr::T(Schema::default())).build();
            return OneOfBuilder::new().item(object).item(array).description(Some(description)).build().into();
        }
    };
    builder.description(Some(description)).build().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_json_orders_members_by_key_at_every_level() {
        let value: Value = serde_json::from_str(r#"{"b": [{"z": 1, "a": 2}], "a": {"d": null, "c": true}}"#).unwrap();
        let bytes = json_canonical(&value).unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), r#"{"a":{"c":true,"d":null},"b":[{"a":2,"z":1}]}"#);
    }
    use serde_json::json;

    const SHIPPED: &str = include_str!("../../policies/fields.toml");

    fn shipped() -> Catalogue {
        Catalogue::parse("fields.toml", SHIPPED).unwrap()
    }

    #[test]
    fn shipped_catalogue_has_the_fields_the_spec_names() {
        let catalogue = shipped();
        for name in ["email", "phone"] {
            assert_eq!(catalogue.field(name).unwrap().category, "contact");
        }
        assert!(catalogue.fields().any(|f| f.sensitivity == Sensitivity::Special && f.category == "health"));
        for category in ["identity", "contact", "address", "preferences", "purchases"] {
            assert!(catalogue.fields().any(|f| f.category == category), "{category}");
        }
    }

    #[test]
    fn values_are_checked_against_their_type() {
        let catalogue = shipped();
        let cases: &[(&str, Value, bool)] = &[
            ("email", json!("ada@example.org"), true),
            ("email", json!("ada@"), false),
            ("email", json!("ada example.org"), false),
            ("email", json!(42), false),
            ("phone", json!("+44 20 7946 0000"), true),
            ("phone", json!("call me"), false),
            ("phone", json!("+1"), false),
            ("date_of_birth", json!("1815-12-10"), true),
            ("date_of_birth", json!("1815-02-30"), false),
            ("country", json!("GB"), true),
            ("country", json!("gb"), false),
            ("preferred_language", json!("pt-BR"), true),
            ("preferred_language", json!("português"), false),
            ("clothing_size", json!("M"), true),
            ("clothing_size", json!("XXXXL"), false),
            ("marketing_topics", json!(["pizza", "offers"]), true),
            ("marketing_topics", json!(["pizza", ""]), false),
            ("postal_address", json!({"lines": ["1 High St"], "locality": "London", "country": "GB"}), true),
            ("postal_address", json!({"lines": []}), false),
            ("postal_address", json!({"lines": ["x"], "planet": "Mars"}), false),
            ("purchase_history", json!([{"order": "A1", "total": 12.5}]), true),
            ("purchase_history", json!("a string"), false),
            ("allergies", json!(["peanuts"]), true),
            ("given_name", json!("Ada"), true),
            ("given_name", json!("   "), false),
            ("given_name", json!("Ada\u{0007}"), false),
        ];
        for (field, value, ok) in cases {
            assert_eq!(catalogue.validate(field, value).is_ok(), *ok, "{field} {value}");
        }
    }

    #[test]
    fn unknown_fields_and_oversized_values_are_refused_without_the_value() {
        let catalogue = shipped();
        assert!(matches!(catalogue.validate("shoe_colour", &json!("red")), Err(FieldError::Unknown { .. })));
        let huge = "x".repeat(10_000);
        let error = catalogue.validate("given_name", &json!(huge)).unwrap_err();
        assert!(matches!(error, FieldError::TooLarge { .. }));
        assert!(!error.to_string().contains("xxxx"));
        let invalid = catalogue.validate("email", &json!("secret-canary-value")).unwrap_err();
        assert!(!invalid.to_string().contains("secret-canary-value"));
    }

    #[test]
    fn deep_json_is_refused() {
        let catalogue = shipped();
        let mut value = json!([]);
        for _ in 0..10 {
            value = json!([value]);
        }
        assert!(catalogue.validate("purchase_history", &value).is_err());
    }

    #[test]
    fn catalogue_errors_name_file_line_and_problem() {
        let cases = [
            (
                "[fields.email]\ncategory = \"contact\"\nsensitivity = \"standard\"\ntype = \"emial\"\nmax_bytes = 10\ndescription = \"x\"\n",
                4,
                "emial",
            ),
            (
                "[fields.a]\ncategory = \"c\"\nsensitivity = \"standard\"\ntype = \"string\"\nmax_bytes = 0\ndescription = \"x\"\n",
                1,
                "max_bytes",
            ),
            (
                "[fields.a]\ncategory = \"c\"\nsensitivity = \"standard\"\ntype = \"enum\"\nmax_bytes = 9\ndescription = \"x\"\n",
                1,
                "values",
            ),
            (
                "\n\n[fields.Bad]\ncategory = \"c\"\nsensitivity = \"standard\"\ntype = \"string\"\nmax_bytes = 9\ndescription = \"x\"\n",
                3,
                "field name",
            ),
            (
                "[fields.a]\ncategory = \"c\"\nsensitivity = \"secret\"\ntype = \"string\"\nmax_bytes = 9\ndescription = \"x\"\n",
                3,
                "secret",
            ),
            ("[fields.a]\ncategory = \"c\"\ncolour = 1\n", 3, "colour"),
            ("fields = 3", 1, "invalid type"),
            ("[fields]\n", 1, "no field"),
        ];
        for (text, line, needle) in cases {
            let error = Catalogue::parse("fields.toml", text).unwrap_err();
            assert_eq!((error.file.as_str(), error.line), ("fields.toml", line), "{error}");
            assert!(error.to_string().contains(needle), "{error} should mention {needle}");
        }
    }
}
