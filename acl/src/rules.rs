//! Consul's ACL rule language, in both of its spellings, read into [`Rules`]:
//!
//! ```hcl
//! service "web" { policy = "write" }          # exact name
//! service_prefix "" { policy = "read" intentions = "read" }
//! key_prefix "app/" { policy = "write" }
//! node_prefix "" { policy = "read" }
//! operator = "write"
//! ```
//!
//! and the JSON form, `{"service": {"web": {"policy": "write"}}, "operator": "write"}`. The
//! HCL read here is the part of HCL that ACL rules use: blocks labelled by one string holding
//! `name = "value"` attributes, top-level attributes, and `#`, `//` and `/* */` comments.

use std::collections::BTreeMap;

use serde_json::Value;

/// What a rule grants. Ordered by how much it allows; merging two rules on the same segment
/// keeps `Deny` over everything, else the larger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Nothing, even where another rule would allow.
    Deny,
    /// List names (KV keys) without reading values.
    List,
    /// Read.
    Read,
    /// Read and write.
    Write,
}

impl Access {
    /// `read`, `write`, `deny` or `list`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "deny" => Self::Deny,
            "list" => Self::List,
            "read" => Self::Read,
            "write" => Self::Write,
            _ => return None,
        })
    }

    /// The access that results from two rules on the same segment: deny wins, else the
    /// larger (Consul's policy merge).
    pub fn merge(self, other: Self) -> Self {
        if self == Self::Deny || other == Self::Deny {
            Self::Deny
        } else {
            self.max(other)
        }
    }

    /// Whether this grants `need` (`Read` is granted by `Read` and `Write`, `List` by all but
    /// `Deny`).
    pub fn grants(self, need: Self) -> bool {
        self != Self::Deny && self >= need
    }
}

/// Kinds of resource named by rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `service` / `service_prefix`.
    Service,
    /// `node` / `node_prefix`.
    Node,
    /// `key` / `key_prefix`.
    Key,
    /// `event` / `event_prefix`.
    Event,
    /// `agent` / `agent_prefix` (an agent's own endpoints, by node name).
    Agent,
    /// `query` / `query_prefix` (prepared queries, by name).
    Query,
    /// `session` / `session_prefix`.
    Session,
}

impl Resource {
    const ALL: [(Self, &'static str); 7] = [
        (Self::Service, "service"),
        (Self::Node, "node"),
        (Self::Key, "key"),
        (Self::Event, "event"),
        (Self::Agent, "agent"),
        (Self::Query, "query"),
        (Self::Session, "session"),
    ];

    /// The resource and whether the block names a prefix, from a block name.
    fn of_block(name: &str) -> Option<(Self, bool)> {
        let (base, prefix) = match name.strip_suffix("_prefix") {
            Some(base) => (base, true),
            None => (name, false),
        };
        Self::ALL
            .iter()
            .find(|(_, n)| *n == base)
            .map(|(r, _)| (*r, prefix))
    }
}

/// Rules naming resources of one kind: exact names and prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    /// `service "web"`.
    pub exact: BTreeMap<String, Access>,
    /// `service_prefix "web-"`.
    pub prefix: BTreeMap<String, Access>,
}

impl Segments {
    /// What the most specific rule for `name` grants: its exact rule, else the longest prefix
    /// it starts with; `None` when no rule names it.
    pub fn decide(&self, name: &str) -> Option<Access> {
        if let Some(access) = self.exact.get(name) {
            return Some(*access);
        }
        // Prefixes of `name` are found by walking its char boundaries, longest first.
        let ends = name
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(name.len()));
        let mut ends: Vec<usize> = ends.collect();
        ends.reverse();
        ends.into_iter()
            .find_map(|end| self.prefix.get(&name[..end]).copied())
    }

    fn insert(&mut self, prefix: bool, name: String, access: Access) {
        let map = if prefix {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        map.entry(name)
            .and_modify(|a| *a = a.merge(access))
            .or_insert(access);
    }

    fn merge(&mut self, other: &Self) {
        for (name, access) in &other.exact {
            self.insert(false, name.clone(), *access);
        }
        for (name, access) in &other.prefix {
            self.insert(true, name.clone(), *access);
        }
    }
}

/// What one or more policies' rules say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Rules by resource kind (`policy = …`).
    pub resources: BTreeMap<Resource, Segments>,
    /// `intentions = …` inside service rules: who may read and write the intentions whose
    /// destination is that service.
    pub intentions: Segments,
    /// `operator = …` (CA rotation, keyring, raft-less operator endpoints).
    pub operator: Option<Access>,
    /// `acl = …` (tokens and policies).
    pub acl: Option<Access>,
    /// `keyring = …`.
    pub keyring: Option<Access>,
    /// `mesh = …`.
    pub mesh: Option<Access>,
}

/// Why rules could not be read; the text follows Consul's `Failed to parse ACL rules: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Failed to parse ACL rules: {0}")]
pub struct RulesError(pub String);

fn err(why: impl Into<String>) -> RulesError {
    RulesError(why.into())
}

impl Rules {
    /// Reads rules written in HCL or JSON (JSON when the text starts with `{`). Empty text is
    /// no rules.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let items = if text.trim_start().starts_with('{') {
            json_items(text)?
        } else {
            hcl_items(text)?
        };
        let mut rules = Self::default();
        for item in items {
            rules.add(item)?;
        }
        Ok(rules)
    }

    fn add(&mut self, item: Item) -> Result<(), RulesError> {
        match item {
            Item::Attribute(name, value) => {
                let access = Access::parse(&value)
                    .ok_or_else(|| err(format!("invalid access level {value:?} for {name}")))?;
                let slot = match name.as_str() {
                    "operator" => &mut self.operator,
                    "acl" => &mut self.acl,
                    "keyring" => &mut self.keyring,
                    "mesh" | "peering" => &mut self.mesh,
                    other => return Err(err(format!("unknown rule {other:?}"))),
                };
                *slot = Some(slot.map_or(access, |a| a.merge(access)));
            }
            Item::Block(kind, label, attributes) => {
                let (resource, prefix) = Resource::of_block(&kind)
                    .ok_or_else(|| err(format!("unknown rule block {kind:?}")))?;
                for (name, value) in attributes {
                    let access = Access::parse(&value).ok_or_else(|| {
                        err(format!(
                            "invalid access level {value:?} in {kind} {label:?}"
                        ))
                    })?;
                    match (name.as_str(), resource) {
                        ("policy", _) => self.resources.entry(resource).or_default().insert(
                            prefix,
                            label.clone(),
                            access,
                        ),
                        ("intentions", Resource::Service) => {
                            self.intentions.insert(prefix, label.clone(), access);
                        }
                        (other, _) => {
                            return Err(err(format!(
                                "unknown attribute {other:?} in {kind} {label:?}"
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The rules of several policies together (a token's).
    pub fn merge(&mut self, other: &Self) {
        for (resource, segments) in &other.resources {
            self.resources.entry(*resource).or_default().merge(segments);
        }
        self.intentions.merge(&other.intentions);
        for (mine, theirs) in [
            (&mut self.operator, other.operator),
            (&mut self.acl, other.acl),
            (&mut self.keyring, other.keyring),
            (&mut self.mesh, other.mesh),
        ] {
            if let Some(theirs) = theirs {
                *mine = Some(mine.map_or(theirs, |m| m.merge(theirs)));
            }
        }
    }
}

/// A top-level item of either spelling.
enum Item {
    /// `operator = "write"`.
    Attribute(String, String),
    /// `service "web" { policy = "write" }`: kind, label, attributes.
    Block(String, String, Vec<(String, String)>),
}

/// Items of the JSON form: `{"operator": "write", "service": {"web": {"policy": "write"}}}`.
fn json_items(text: &str) -> Result<Vec<Item>, RulesError> {
    let value: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(err("the rules must be a JSON object"));
    };
    let mut items = Vec::new();
    for (name, value) in top {
        match value {
            Value::String(access) => items.push(Item::Attribute(name, access)),
            Value::Object(blocks) => {
                for (label, body) in blocks {
                    let Value::Object(attributes) = body else {
                        return Err(err(format!("{name} {label:?} must be an object")));
                    };
                    let attributes = attributes
                        .into_iter()
                        .map(|(k, v)| match v {
                            Value::String(s) => Ok((k, s)),
                            _ => Err(err(format!("{name} {label:?}: {k} must be a string"))),
                        })
                        .collect::<Result<_, _>>()?;
                    items.push(Item::Block(name.clone(), label, attributes));
                }
            }
            _ => return Err(err(format!("{name} must be a string or an object"))),
        }
    }
    Ok(items)
}

/// A token of the HCL subset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Equals,
    Open,
    Close,
    Comma,
}

/// Splits HCL text into tokens; line and column in errors count from 1.
fn tokens(text: &str) -> Result<Vec<(Token, usize)>, RulesError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
            '/' => {
                chars.next();
                match chars.next() {
                    Some((_, '/')) => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
                    Some((_, '*')) => {
                        let mut last = ' ';
                        loop {
                            let Some((_, c)) = chars.next() else {
                                return Err(err(format!(
                                    "line {}: a /* comment is never closed",
                                    line_of(at)
                                )));
                            };
                            if last == '*' && c == '/' {
                                break;
                            }
                            last = c;
                        }
                    }
                    _ => return Err(err(format!("line {}: unexpected '/'", line_of(at)))),
                }
            }
            '=' | '{' | '}' | ',' => {
                chars.next();
                let token = match c {
                    '=' => Token::Equals,
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::Comma,
                };
                out.push((token, at));
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, c)) => s.push(c),
                            None => break,
                        },
                        Some((_, '\n')) | None => {
                            return Err(err(format!(
                                "line {}: a string is never closed",
                                line_of(at)
                            )));
                        }
                        Some((_, c)) => s.push(c),
                    }
                }
                out.push((Token::Str(s), at));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some((_, c)) =
                    chars.next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    s.push(c);
                }
                out.push((Token::Ident(s), at));
            }
            other => {
                return Err(err(format!(
                    "line {}: unexpected character {other:?}",
                    line_of(at)
                )));
            }
        }
    }
    Ok(out)
}

/// Items of the HCL form.
fn hcl_items(text: &str) -> Result<Vec<Item>, RulesError> {
    let tokens = tokens(text)?;
    let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut at = 0;
    let mut items = Vec::new();
    let expected = |what: &str, found: Option<&(Token, usize)>| match found {
        Some((token, pos)) => err(format!(
            "line {}: expected {what}, found {token:?}",
            line_of(*pos)
        )),
        None => err(format!("expected {what} at the end of the rules")),
    };
    while at < tokens.len() {
        let Token::Ident(name) = &tokens[at].0 else {
            return Err(expected("a rule name", tokens.get(at)));
        };
        at += 1;
        match tokens.get(at).map(|t| &t.0) {
            Some(Token::Equals) => {
                let Some((Token::Str(value), _)) = tokens.get(at + 1) else {
                    return Err(expected("a quoted access level", tokens.get(at + 1)));
                };
                items.push(Item::Attribute(name.clone(), value.clone()));
                at += 2;
            }
            Some(Token::Str(label)) => {
                if tokens.get(at + 1).map(|t| &t.0) != Some(&Token::Open) {
                    return Err(expected("'{'", tokens.get(at + 1)));
                }
                at += 2;
                let mut attributes = Vec::new();
                loop {
                    match tokens.get(at).map(|t| &t.0) {
                        Some(Token::Close) => {
                            at += 1;
                            break;
                        }
                        Some(Token::Comma) => at += 1,
                        Some(Token::Ident(key)) => {
                            if tokens.get(at + 1).map(|t| &t.0) != Some(&Token::Equals) {
                                return Err(expected("'='", tokens.get(at + 1)));
                            }
                            let Some((Token::Str(value), _)) = tokens.get(at + 2) else {
                                return Err(expected("a quoted value", tokens.get(at + 2)));
                            };
                            attributes.push((key.clone(), value.clone()));
                            at += 3;
                        }
                        _ => return Err(expected("an attribute or '}'", tokens.get(at))),
                    }
                }
                items.push(Item::Block(name.clone(), label.clone(), attributes));
            }
            _ => return Err(expected("'=' or a quoted name", tokens.get(at))),
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_and_json_read_alike() {
        let hcl = r#"
            # web writes itself, reads all
            service "web" { policy = "write" }
            service_prefix "" {
              policy = "read"
              intentions = "read"
            }
            key_prefix "app/" { policy = "write" } // app's keys
            /* a block
               comment */
            operator = "read"
        "#;
        let json = r#"{"service": {"web": {"policy": "write"}},
            "service_prefix": {"": {"policy": "read", "intentions": "read"}},
            "key_prefix": {"app/": {"policy": "write"}}, "operator": "read"}"#;
        let a = Rules::parse(hcl).unwrap();
        assert_eq!(a, Rules::parse(json).unwrap());
        let services = &a.resources[&Resource::Service];
        assert_eq!(services.decide("web"), Some(Access::Write));
        assert_eq!(services.decide("db"), Some(Access::Read));
        assert_eq!(a.intentions.decide("db"), Some(Access::Read));
        assert_eq!(a.operator, Some(Access::Read));
        assert_eq!(
            a.resources[&Resource::Key].decide("app/x"),
            Some(Access::Write)
        );
        assert_eq!(a.resources[&Resource::Key].decide("other"), None);
    }

    #[test]
    fn bad_rules_say_where_and_what() {
        for (text, says) in [
            (
                r#"service "web" { policy = "writ" }"#,
                "invalid access level \"writ\"",
            ),
            (
                r#"servce "web" { policy = "write" }"#,
                "unknown rule block \"servce\"",
            ),
            (
                r#"service "web" { policy = write }"#,
                "expected a quoted value",
            ),
            (
                r#"service "web" { policy = "write" "#,
                "expected an attribute or '}'",
            ),
            ("service \"web\n", "line 1: a string is never closed"),
            ("\n\n!", "line 3: unexpected character '!'"),
            (r#"{"service": 3}"#, "must be a string or an object"),
            (r#"flying = "write""#, "unknown rule \"flying\""),
        ] {
            let e = Rules::parse(text).unwrap_err().to_string();
            assert!(e.starts_with("Failed to parse ACL rules: "), "{e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins() {
        let rules = Rules::parse(
            r#"key_prefix "" { policy = "read" }
               key_prefix "app/" { policy = "write" }
               key_prefix "app/secret/" { policy = "deny" }
               key "app/secret/shared" { policy = "read" }"#,
        )
        .unwrap();
        let keys = &rules.resources[&Resource::Key];
        assert_eq!(keys.decide("other"), Some(Access::Read));
        assert_eq!(keys.decide("app/config"), Some(Access::Write));
        assert_eq!(keys.decide("app/secret/pw"), Some(Access::Deny));
        assert_eq!(keys.decide("app/secret/shared"), Some(Access::Read));
        assert_eq!(keys.decide("ä/x"), Some(Access::Read), "char boundaries");
    }

    #[test]
    fn merging_keeps_deny_else_the_larger() {
        let mut a = Rules::parse(r#"service "web" { policy = "read" } operator = "read""#).unwrap();
        let b = Rules::parse(r#"service "web" { policy = "write" } operator = "write""#).unwrap();
        let c = Rules::parse(r#"service "web" { policy = "deny" }"#).unwrap();
        a.merge(&b);
        assert_eq!(
            a.resources[&Resource::Service].decide("web"),
            Some(Access::Write)
        );
        assert_eq!(a.operator, Some(Access::Write));
        a.merge(&c);
        assert_eq!(
            a.resources[&Resource::Service].decide("web"),
            Some(Access::Deny)
        );
    }
}
