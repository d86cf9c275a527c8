//! A bound on how deeply JSON5 text nests, checked before the recursive parser sees it: a file of
//! nested `[` would otherwise overflow the stack and abort the process.
//!
//! The scan is linear and lexes just enough JSON5 to tell structure from text: strings in single
//! or double quotes (with backslash escapes) and `//` and `/* */` comments are skipped.

/// Deepest nesting of objects and arrays accepted; real configs and policy files nest under ten.
pub const MAX_NESTING: usize = 64;

/// Where the nesting went past `MAX_NESTING` (one-based line and column, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nested more than {MAX_NESTING} levels deep (line {}, column {})", self.line, self.column)
    }
}

/// Checks that `text` never nests deeper than `MAX_NESTING`. Syntax errors are left to the parser.
pub fn check(text: &str) -> Result<(), TooDeep> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        Str(char),
        Escape(char),
        LineComment,
        BlockComment,
        BlockCommentStar,
        Slash,
    }
    let (mut line, mut column) = (1, 0);
    let mut depth = 0usize;
    let mut state = State::Code;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            column = 0;
        } else {
            column += 1;
        }
        state = match (state, c) {
            (State::Slash, '/') => State::LineComment,
            (State::Slash, '*') => State::BlockComment,
            (State::Code | State::Slash, '"' | '\'') => State::Str(c),
            (State::Code | State::Slash, '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(TooDeep { line, column });
                }
                State::Code
            }
            (State::Code | State::Slash, ']' | '}') => {
                depth = depth.saturating_sub(1);
                State::Code
            }
            (State::Code, '/') => State::Slash,
            (State::Code | State::Slash, _) => State::Code,
            (State::Str(q), '\\') => State::Escape(q),
            (State::Str(q), c) if c == q => State::Code,
            (State::Str(q), _) | (State::Escape(q), _) => State::Str(q),
            (State::LineComment, '\n') => State::Code,
            (State::LineComment, _) => State::LineComment,
            (State::BlockComment | State::BlockCommentStar, '*') => State::BlockCommentStar,
            (State::BlockCommentStar, '/') => State::Code,
            (State::BlockComment | State::BlockCommentStar, _) => State::BlockComment,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_with_its_position() {
        let deep = format!("{{ a: \n  {}", "[".repeat(200_000));
        // The 64th `[` is depth 65 (the object is depth 1): line 2, column 2 + 64.
        assert_eq!(check(&deep), Err(TooDeep { line: 2, column: 2 + MAX_NESTING }));
        let ok = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert_eq!(check(&ok), Ok(()));
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let many = "[".repeat(1000);
        for text in [
            format!("{{ a: \"{many}\" }}"),
            format!("{{ a: '{many}' }}"),
            format!("{{ a: \"\\\"{many}\" }}"),
            format!("{{ // {many}\n a: 1 }}"),
            format!("{{ /* {many} */ a: 1 }}"),
            format!("{{ /* ** {many} **/ a: 1 }}"),
        ] {
            assert_eq!(check(&text), Ok(()), "{text:.40}");
        }
        // ...but brackets after a closed string or comment do.
        assert!(check(&format!("{{ a: \"x\" {many} }}")).is_err());
        assert!(check(&format!("{{ /* x */ {many} }}")).is_err());
        assert!(check(&format!("{{ // x\n{many} }}")).is_err());
    }
}
