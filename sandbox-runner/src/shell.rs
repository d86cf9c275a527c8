//! The `exec` command language: words, quotes, pipes, redirections and `;` / `&&` / `||` lists.
//!
//! It is deliberately small: no variables, globbing, command substitution, subshells or background
//! jobs. Anything outside the language is refused with a message rather than guessed at.

/// Longest command line accepted.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most words in one command line.
pub const MAX_WORDS: usize = 4096;
/// Most stages in one command line (over all pipelines).
pub const MAX_STAGES: usize = 64;

/// The built-in utilities of `exec` (the runner implements them; anything else is a tenant
/// command module run by the host, or "command not found").
pub const BUILTINS: &[&str] = &[
    "cat", "cp", "echo", "false", "find", "grep", "head", "ln", "ls", "mkdir", "mv", "pwd", "rm", "sort", "tail",
    "touch", "true", "uniq", "wc",
];

/// How a pipeline is joined to the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// `;` or a newline: always run.
    Always,
    /// `&&`: run if the previous pipeline succeeded.
    And,
    /// `||`: run if the previous pipeline failed.
    Or,
}

/// Where a stage's standard output goes besides the pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub path: String,
    pub append: bool,
}

/// One command of a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stage {
    pub argv: Vec<String>,
    /// `< path`
    pub stdin_from: Option<String>,
    /// `> path` / `>> path`
    pub stdout_to: Option<Redirect>,
}

/// `a | b | c`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub connector: Connector,
    pub stages: Vec<Stage>,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub pipelines: Vec<Pipeline>,
}

impl Script {
    pub fn stages(&self) -> impl Iterator<Item = &Stage> {
        self.pipelines.iter().flat_map(|p| p.stages.iter())
    }
}

/// A command line that is not in the language.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid command: {0}")]
pub struct ParseError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Pipe,
    And,
    Or,
    Semi,
    Out,
    Append,
    In,
}

fn tokenize(cmd: &str) -> Result<Vec<Tok>, ParseError> {
    let err = |m: &str| Err(ParseError(m.to_string()));
    let mut toks = Vec::new();
    let mut chars = cmd.chars().peekable();
    let mut word: Option<String> = None;
    let flush = |word: &mut Option<String>, toks: &mut Vec<Tok>| {
        if let Some(w) = word.take() {
            toks.push(Tok::Word(w));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' => flush(&mut word, &mut toks),
            '\n' | ';' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::Semi);
            }
            '|' => {
                flush(&mut word, &mut toks);
                if chars.peek() == Some(&'|') {
                    chars.next();
                    toks.push(Tok::Or);
                } else {
                    toks.push(Tok::Pipe);
                }
            }
            '&' => {
                flush(&mut word, &mut toks);
                if chars.next() != Some('&') {
                    return err("background jobs ('&') are not supported");
                }
                toks.push(Tok::And);
            }
            '>' => {
                flush(&mut word, &mut toks);
                if chars.peek() == Some(&'>') {
                    chars.next();
                    toks.push(Tok::Append);
                } else {
                    toks.push(Tok::Out);
                }
            }
            '<' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::In);
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return err("unterminated single quote"),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return err("unterminated double quote"),
                        },
                        Some('$' | '`') => {
                            return err("variables and command substitution are not supported");
                        }
                        Some(c) => w.push(c),
                        None => return err("unterminated double quote"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return err("trailing backslash"),
            },
            '$' | '`' => return err("variables and command substitution are not supported"),
            '(' | ')' => return err("subshells are not supported"),
            c => word.get_or_insert_with(String::new).push(c),
        }
        if toks.len() > MAX_WORDS {
            return err("too many words");
        }
    }
    flush(&mut word, &mut toks);
    Ok(toks)
}

/// Quotes one word so that `parse` reads it back unchanged.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Parses a command line.
pub fn parse(cmd: &str) -> Result<Script, ParseError> {
    if cmd.len() > MAX_COMMAND_BYTES {
        return Err(ParseError(format!("command is {} bytes, the limit is {MAX_COMMAND_BYTES}", cmd.len())));
    }
    if cmd.contains('\0') {
        return Err(ParseError("command contains a NUL byte".into()));
    }
    let toks = tokenize(cmd)?;
    let mut pipelines: Vec<Pipeline> = Vec::new();
    let mut connector = Connector::Always;
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage = Stage::default();
    let mut count = 0usize;
    let mut it = toks.into_iter().peekable();
    let end_stage = |stage: &mut Stage, stages: &mut Vec<Stage>| -> Result<(), ParseError> {
        if stage.argv.is_empty() {
            return Err(ParseError("empty command in a pipeline or list".into()));
        }
        stages.push(std::mem::take(stage));
        Ok(())
    };
    while let Some(tok) = it.next() {
        match tok {
            Tok::Word(w) => stage.argv.push(w),
            Tok::Out | Tok::Append | Tok::In => {
                let Some(Tok::Word(path)) = it.next() else {
                    return Err(ParseError("a redirection needs a file name".into()));
                };
                match tok {
                    Tok::In => stage.stdin_from = Some(path),
                    _ => stage.stdout_to = Some(Redirect { path, append: tok == Tok::Append }),
                }
            }
            Tok::Pipe => end_stage(&mut stage, &mut stages)?,
            Tok::Semi | Tok::And | Tok::Or => {
                if tok == Tok::Semi && stage.argv.is_empty() && stages.is_empty() && stage.stdout_to.is_none() {
                    continue; // empty line or `;;`
                }
                end_stage(&mut stage, &mut stages)?;
                count += stages.len();
                pipelines.push(Pipeline { connector, stages: std::mem::take(&mut stages) });
                connector = match tok {
                    Tok::And => Connector::And,
                    Tok::Or => Connector::Or,
                    _ => Connector::Always,
                };
                if tok != Tok::Semi && it.peek().is_none() {
                    return Err(ParseError("a list ends with '&&' or '||'".into()));
                }
            }
        }
    }
    if !stage.argv.is_empty() || !stages.is_empty() || stage.stdout_to.is_some() || stage.stdin_from.is_some() {
        end_stage(&mut stage, &mut stages)?;
        count += stages.len();
        pipelines.push(Pipeline { connector, stages });
    }
    if pipelines.is_empty() {
        return Err(ParseError("empty command".into()));
    }
    if count > MAX_STAGES {
        return Err(ParseError(format!("{count} commands in one line, the limit is {MAX_STAGES}")));
    }
    Ok(Script { pipelines })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argvs(s: &Script) -> Vec<Vec<String>> {
        s.stages().map(|st| st.argv.clone()).collect()
    }

    #[test]
    fn parses_words_quotes_and_pipes() {
        let s = parse(r#"grep -i "a b" 'c d' | sort -r|uniq -c"#).unwrap();
        assert_eq!(
            argvs(&s),
            vec![vec!["grep", "-i", "a b", "c d"], vec!["sort", "-r"], vec!["uniq", "-c"]]
                .into_iter()
                .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert_eq!(s.pipelines.len(), 1);
    }

    #[test]
    fn parses_lists_and_redirections() {
        let s = parse("echo hi > a.txt && cat < a.txt >> b.txt; ls || echo no").unwrap();
        assert_eq!(s.pipelines.len(), 4);
        let c: Vec<Connector> = s.pipelines.iter().map(|p| p.connector).collect();
        assert_eq!(c, [Connector::Always, Connector::And, Connector::Always, Connector::Or]);
        let (echo, cat) = (&s.pipelines[0].stages[0], &s.pipelines[1].stages[0]);
        assert_eq!(echo.stdout_to, Some(Redirect { path: "a.txt".into(), append: false }));
        assert_eq!(cat.stdin_from.as_deref(), Some("a.txt"));
        assert_eq!(cat.stdout_to, Some(Redirect { path: "b.txt".into(), append: true }));
        assert_eq!(parse("find . -name *.rs").unwrap().pipelines[0].stages[0].argv[3], "*.rs");
    }

    #[test]
    fn quoting_round_trips() {
        for w in ["plain", "a b", "it's", "\"q\"", "$HOME", "a|b;c&&d", ""] {
            let s = parse(&format!("echo {}", quote(w))).unwrap();
            assert_eq!(s.pipelines[0].stages[0].argv[1], w);
        }
    }

    #[test]
    fn refuses_what_is_not_in_the_language() {
        for bad in [
            "",
            "echo $HOME",
            "echo `id`",
            "echo \"$(id)\"",
            "sleep 1 &",
            "(ls)",
            "ls |",
            "| ls",
            "ls &&",
            "echo 'x",
            "echo \"x",
            "ls >",
            "a\0b",
            "ls | | wc",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse(&"a ".repeat(40_000)).is_err());
        assert!(parse(&vec!["ls"; 100].join(" | ")).is_err());
    }
}
