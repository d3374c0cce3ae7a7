//! Which objects a list or watch sees: the namespace from the URL plus `fieldSelector`
//! and `labelSelector`. Anything the fake cannot evaluate is refused with 400, as the real
//! server refuses unknown field labels, so that a selector is never silently ignored
//! (an ignored `spec.nodeName` would hand a node agent the whole cluster).

use serde_json::Value;

use super::error::ApiError;
use super::resource::{field_value, Resource};

/// The namespace and selectors of one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    namespace: Option<String>,
    fields: Vec<FieldRequirement>,
    labels: Vec<LabelRequirement>,
}

#[derive(Debug, Clone)]
struct FieldRequirement {
    path: &'static [&'static str],
    value: String,
    equal: bool,
}

#[derive(Debug, Clone)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Filter {
    pub(crate) fn parse(
        resource: Resource,
        namespace: Option<String>,
        field_selector: Option<&str>,
        label_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            namespace,
            fields: parse_fields(resource, field_selector.unwrap_or_default())?,
            labels: parse_labels(label_selector.unwrap_or_default())?,
        })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if field_value(obj, &["metadata", "namespace"]) != *ns {
                return false;
            }
        }
        let fields_ok = self
            .fields
            .iter()
            .all(|req| (field_value(obj, req.path) == req.value) == req.equal);
        fields_ok && self.labels.iter().all(|req| req.matches(obj))
    }
}

fn parse_fields(resource: Resource, selector: &str) -> Result<Vec<FieldRequirement>, ApiError> {
    if selector.contains('\\') {
        // Escaped separators are legal but no client of ours sends them; refuse rather
        // than mis-split.
        return Err(ApiError::bad_request(format!(
            "invalid field selector {selector:?}: escape sequences are not supported by the fake API server"
        )));
    }
    let mut reqs = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (label, value, equal) = if let Some((l, v)) = term.split_once("!=") {
            (l, v, false)
        } else if let Some((l, v)) = term.split_once("==") {
            (l, v, true)
        } else if let Some((l, v)) = term.split_once('=') {
            (l, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{selector}'; can't understand '{term}'"
            )));
        };
        let label = label.trim();
        let path = resource.field_path(label).ok_or_else(|| {
            ApiError::bad_request(format!(
                "field label not supported: {label} (for {} the fake API server supports: {})",
                resource.plural(),
                resource.field_labels().join(", ")
            ))
        })?;
        reqs.push(FieldRequirement {
            path,
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(reqs)
}

fn parse_labels(selector: &str) -> Result<Vec<LabelRequirement>, ApiError> {
    let mut reqs = Vec::new();
    for term in split_outside_parens(selector)
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        let invalid = || {
            ApiError::bad_request(format!(
                "unable to parse requirement: invalid label selector term {term:?} in {selector:?}"
            ))
        };
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelRequirement::Absent(check_key(key.trim()).ok_or_else(invalid)?)
        } else if let Some((head, rest)) = term.split_once('(') {
            let values = rest.strip_suffix(')').ok_or_else(invalid)?;
            let values = values
                .split(',')
                .map(|v| check_value(v.trim()).ok_or_else(invalid))
                .collect::<Result<Vec<_>, _>>()?;
            let mut words = head.split_whitespace();
            let key = check_key(words.next().unwrap_or_default()).ok_or_else(invalid)?;
            match (words.next(), words.next()) {
                (Some("in"), None) => LabelRequirement::In(key, values),
                (Some("notin"), None) => LabelRequirement::NotIn(key, values),
                _ => return Err(invalid()),
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelRequirement::NotEquals(
                check_key(k.trim()).ok_or_else(invalid)?,
                check_value(v.trim()).ok_or_else(invalid)?,
            )
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelRequirement::Equals(
                check_key(k.trim()).ok_or_else(invalid)?,
                check_value(v.trim()).ok_or_else(invalid)?,
            )
        } else {
            // `key` alone means "has the label"; `>`/`<` and anything else land here and
            // fail the key check.
            LabelRequirement::Exists(check_key(term).ok_or_else(invalid)?)
        };
        reqs.push(req);
    }
    Ok(reqs)
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A label key: an optional DNS prefix and `/`, then a name of [A-Za-z0-9._-].
fn check_key(key: &str) -> Option<String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = !name.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    ok.then(|| key.to_owned())
}

/// A label value: empty, or [A-Za-z0-9._-].
fn check_value(value: &str) -> Option<String> {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .then(|| value.to_owned())
}

impl LabelRequirement {
    fn matches(&self, obj: &Value) -> bool {
        let label = |key: &str| {
            obj.get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match self {
            LabelRequirement::Equals(k, v) => label(k).as_deref() == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k).as_deref() != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.contains(&l)),
            LabelRequirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.contains(&l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::Absent(k) => label(k).is_none(),
        }
    }
}
