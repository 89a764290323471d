//! Consul's `?filter=` expressions, for the common cases: a selector (`Service.Tags`,
//! `NodeMeta.env`, `Checks.Status`) matched with `==`, `!=`, `contains`, `not contains`,
//! `in`, `not in`, `is empty`, `is not empty`, `matches`, `not matches`, combined with `and`,
//! `or`, `not` and parentheses. A selector through a list matches if any element does (as
//! `Checks.Status == critical` reads). Filters apply to the JSON an endpoint answers with, one
//! element of the list (or value of the map) at a time.

use regex::Regex;
use serde_json::Value;

/// A parsed filter.
#[derive(Debug)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Match { selector: Vec<String>, test: Test },
}

/// What a selector's values are tested for.
#[derive(Debug)]
pub enum Test {
    Equal(String),
    Contains(String),
    Empty,
    Matches(Regex),
}

/// Splits an expression into words, quoted strings and parentheses.
fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(Token::Word(c.to_string()));
            }
            '"' | '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("a quoted value is not closed".into()),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => {
                            s.push(chars.next().ok_or("a quoted value ends in \\")?)
                        }
                        Some(other) => s.push(other),
                    }
                }
                out.push(Token::Quoted(s));
            }
            '=' | '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(format!("expected {c}= "));
                }
                out.push(Token::Word(format!("{c}=")));
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if " \t\n()\"`=!".contains(c) {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(Token::Word(s));
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self) -> Option<&str> {
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn eat(&mut self, word: &str) -> bool {
        if self.peek_word() == Some(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.tokens.get(self.at).cloned() {
            Some(Token::Quoted(s)) => {
                self.at += 1;
                Ok(s)
            }
            Some(Token::Word(s)) if !matches!(s.as_str(), "(" | ")") => {
                self.at += 1;
                Ok(s)
            }
            _ => Err("expected a value".into()),
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.eat("or") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.eat("and") {
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.eat("not") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err("a parenthesis is not closed".into());
            }
            return Ok(inner);
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Result<Filter, String> {
        let first = self.value()?;
        // `<value> in <selector>` and `<value> not in <selector>`
        let negated_in = self.peek_word() == Some("not")
            && matches!(self.tokens.get(self.at + 1), Some(Token::Word(w)) if w == "in");
        if negated_in || self.peek_word() == Some("in") {
            self.at += if negated_in { 2 } else { 1 };
            let selector = selector(&self.value()?)?;
            let m = Filter::Match {
                selector,
                test: Test::Contains(first),
            };
            return Ok(if negated_in {
                Filter::Not(Box::new(m))
            } else {
                m
            });
        }
        let selector = selector(&first)?;
        let mut negate = false;
        let test = if self.eat("==") {
            Test::Equal(self.value()?)
        } else if self.eat("!=") {
            negate = true;
            Test::Equal(self.value()?)
        } else if self.eat("is") {
            negate = self.eat("not");
            if !self.eat("empty") {
                return Err("expected empty after is".into());
            }
            Test::Empty
        } else {
            negate = self.eat("not");
            if self.eat("contains") {
                Test::Contains(self.value()?)
            } else if self.eat("matches") {
                let pattern = self.value()?;
                Test::Matches(
                    Regex::new(&pattern).map_err(|e| format!("bad regular expression: {e}"))?,
                )
            } else {
                return Err(format!(
                    "expected ==, !=, contains, in, is empty or matches after {first}"
                ));
            }
        };
        let m = Filter::Match { selector, test };
        Ok(if negate { Filter::Not(Box::new(m)) } else { m })
    }
}

fn selector(text: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("{text:?} is not a selector (like Service.Tags)"));
    }
    Ok(parts)
}

impl Filter {
    /// Parses an expression; the error says what is wrong, in Consul's words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let wrap = |why: String| format!("Failed to create boolean expression evaluator: {why}");
        let mut parser = Parser {
            tokens: tokens(text).map_err(wrap)?,
            at: 0,
        };
        let filter = parser.or().map_err(wrap)?;
        if parser.at != parser.tokens.len() {
            return Err(wrap(format!("unexpected {:?}", parser.tokens[parser.at])));
        }
        Ok(filter)
    }

    /// Whether `item` (one element of an answer, as JSON) passes.
    pub fn matches(&self, item: &Value) -> bool {
        match self {
            Self::And(a, b) => a.matches(item) && b.matches(item),
            Self::Or(a, b) => a.matches(item) || b.matches(item),
            Self::Not(a) => !a.matches(item),
            Self::Match { selector, test } => {
                let mut found = Vec::new();
                resolve(item, selector, &mut found);
                match test {
                    Test::Empty => found.iter().all(|v| is_empty(v)),
                    Test::Equal(want) => {
                        found.iter().any(|v| scalar(v).is_some_and(|s| s == *want))
                    }
                    Test::Contains(want) => found.iter().any(|v| contains(v, want)),
                    Test::Matches(re) => found
                        .iter()
                        .any(|v| scalar(v).is_some_and(|s| re.is_match(&s))),
                }
            }
        }
    }

    /// Keeps the elements of a list (or the values of a map) that pass.
    pub fn apply(&self, answer: Value) -> Value {
        match answer {
            Value::Array(items) => {
                Value::Array(items.into_iter().filter(|i| self.matches(i)).collect())
            }
            Value::Object(map) => {
                Value::Object(map.into_iter().filter(|(_, v)| self.matches(v)).collect())
            }
            other => other,
        }
    }
}

/// Every value at `path` under `v`, going through lists element by element.
fn resolve<'a>(v: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(v);
        return;
    };
    match v {
        Value::Object(map) => {
            let next = map.get(first).or_else(|| {
                map.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(first))
                    .map(|(_, v)| v)
            });
            if let Some(next) = next {
                resolve(next, rest, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                resolve(item, path, out);
            }
        }
        _ => {}
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn contains(v: &Value, want: &str) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| scalar(i).is_some_and(|s| s == want)),
        Value::Object(map) => map.contains_key(want),
        Value::String(s) => s.contains(want),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry() -> Value {
        json!({
            "Node": {"Node": "a", "Meta": {"env": "prod"}},
            "Service": {"Service": "web", "Tags": ["v1", "blue"], "Port": 80, "Meta": {}},
            "Checks": [{"Status": "passing"}, {"Status": "warning"}]
        })
    }

    #[test]
    fn the_common_forms() {
        let yes = [
            r#"Service.Service == web"#,
            r#"Service.Service == "web""#,
            r#"Service.Port == 80"#,
            r#"Service.Tags contains v1"#,
            r#""blue" in Service.Tags"#,
            r#""green" not in Service.Tags"#,
            r#"Node.Meta.env == prod and not (Node.Node == b)"#,
            r#"Checks.Status == warning"#,
            r#"Service.Meta is empty"#,
            r#"Node.Meta is not empty"#,
            r#"Service.Service matches "^w.b$""#,
            r#"Node.Node != b or Service.Port == 1"#,
            r#"service.tags contains v1"#,
        ];
        for f in yes {
            assert!(Filter::parse(f).unwrap().matches(&entry()), "{f}");
        }
        let no = [
            r#"Service.Service == db"#,
            r#"Service.Tags not contains v1"#,
            r#"Checks.Status == critical"#,
            r#"Node.Meta.env != prod"#,
            r#"Missing.Field == x"#,
        ];
        for f in no {
            assert!(!Filter::parse(f).unwrap().matches(&entry()), "{f}");
        }
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (f, why) in [
            ("Service.Tags", "expected =="),
            ("Service.Tags contains", "expected a value"),
            ("(a == b", "not closed"),
            ("a == \"b", "not closed"),
            ("a matches \"(\"", "regular expression"),
            ("a == b c", "unexpected"),
            ("a = b", "expected =="),
        ] {
            let err = Filter::parse(f).unwrap_err();
            assert!(
                err.starts_with("Failed to create boolean expression evaluator"),
                "{err}"
            );
            assert!(err.contains(why), "{f}: {err}");
        }
    }

    #[test]
    fn lists_and_maps_keep_what_passes() {
        let f = Filter::parse("Port == 80").unwrap();
        let list = json!([{"Port": 80}, {"Port": 81}]);
        assert_eq!(f.apply(list), json!([{"Port": 80}]));
        let map = json!({"a": {"Port": 80}, "b": {"Port": 81}});
        assert_eq!(f.apply(map), json!({"a": {"Port": 80}}));
    }
}
