//! SQL statement classification for policy matching (`match.sql_statement`): which kinds of
//! statement a query string contains. Pure and tolerant: comments, string literals, quoted
//! identifiers and dollar-quoted bodies are skipped, so `SELECT 'drop table x'` is a select.
//!
//! It classifies, it does not parse: a statement's kind is its leading keyword (after a `WITH`
//! clause), and `delete`/`update` are checked for a `WHERE` at the top nesting level.

use std::collections::BTreeSet;

/// Kinds of statement a rule can match (`sql_statement = [...]`).
pub const KINDS: &[&str] = &[
    "select",
    "insert",
    "update",
    "delete",
    "merge",
    "drop",
    "truncate",
    "alter",
    "create",
    "grant",
    "revoke",
    "copy",
    "call",
    "do",
    "begin",
    "commit",
    "rollback",
    "set",
    "other",
    "delete_without_where",
    "update_without_where",
];

/// The kinds of every statement in `text` (several when it holds `;`-separated statements).
pub fn classify(text: &str) -> BTreeSet<&'static str> {
    let mut kinds = BTreeSet::new();
    for statement in statements(text) {
        if let Some(kind) = statement_kind(&statement) {
            kinds.insert(kind);
            let has_where = statement.iter().any(|t| t.depth == 0 && t.word == "where");
            match kind {
                "delete" if !has_where => {
                    kinds.insert("delete_without_where");
                }
                "update" if !has_where => {
                    kinds.insert("update_without_where");
                }
                _ => {}
            }
        }
    }
    kinds
}

#[derive(Debug)]
struct Word {
    word: String,
    depth: u32,
}

fn statement_kind(words: &[Word]) -> Option<&'static str> {
    let first = words.first()?;
    let kind_of = |word: &str| -> Option<&'static str> {
        KINDS
            .iter()
            .find(|k| **k == word && !k.contains('_') && **k != "other")
            .copied()
    };
    if first.word == "with" {
        // The statement proper is the first top-level keyword after the CTE list.
        return words
            .iter()
            .skip(1)
            .filter(|w| w.depth == 0)
            .find_map(|w| match w.word.as_str() {
                "select" | "insert" | "update" | "delete" | "merge" => kind_of(&w.word),
                _ => None,
            })
            .or(Some("other"));
    }
    match first.word.as_str() {
        "start" => Some("begin"),
        "end" => Some("commit"),
        "table" | "values" | "explain" | "show" => Some("select"),
        word => kind_of(word).or(Some("other")),
    }
}

/// Splits `text` into statements of lower-cased bare words with their parenthesis depth.
fn statements(text: &str) -> Vec<Vec<Word>> {
    let bytes = text.as_bytes();
    let mut out = vec![Vec::new()];
    let mut depth: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // PostgreSQL block comments nest.
                let mut nesting = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        nesting += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        nesting -= 1;
                        i += 2;
                        if nesting == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' | b'"' | b'`' => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b {
                        if bytes.get(i + 1) == Some(&b) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => {
                // $tag$ … $tag$
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(end) = tag_end.filter(|e| bytes[*e] == b'$') {
                    let tag = &text[i..=end];
                    match text[end + 1..].find(tag) {
                        Some(close) => i = end + 1 + close + tag.len() - 1,
                        None => i = bytes.len(),
                    }
                }
            }
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b';' => {
                out.push(Vec::new());
                depth = 0;
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if let Some(current) = out.last_mut() {
                    current.push(Word {
                        word: text[start..i].to_ascii_lowercase(),
                        depth,
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        classify(text).into_iter().collect()
    }

    #[test]
    fn classifies_statements() {
        assert_eq!(kinds("SELECT 'drop table x' -- drop\n"), ["select"]);
        assert_eq!(kinds("drop table users"), ["drop"]);
        assert_eq!(kinds("DELETE FROM t"), ["delete", "delete_without_where"]);
        assert_eq!(kinds("delete from t where id = 1"), ["delete"]);
        assert_eq!(
            kinds("update t set a = (select 1 where true)"),
            ["update", "update_without_where"]
        );
        assert_eq!(kinds("/* a /* b */ */ truncate t"), ["truncate"]);
        assert_eq!(
            kinds("WITH x AS (SELECT 1) DELETE FROM t"),
            ["delete", "delete_without_where"]
        );
        assert_eq!(
            kinds("select 1; insert into t values (1)"),
            ["insert", "select"]
        );
        assert_eq!(kinds("select $$; drop table x; $$"), ["select"]);
        assert_eq!(kinds("VACUUM"), ["other"]);
        assert!(kinds("  ;; ").is_empty());
        assert_eq!(kinds("select \"drop\" from \"t\"\"x\""), ["select"]);
    }
}
