//! The prompt's command language: one line in, one [`Command`] out.
//!
//! Owns: the words, their arguments and the hints for a wrong line, and
//! the help text that documents them. Pure: no I/O, no network.

/// What `help` prints.
pub const HELP: &str = "\
commands:
  list [FOLDER]      the files on the network (or under FOLDER), numbered
  where FILE         which peers hold which chunks of a file
  get FILE...        download files into the shared folder, in the background;
                     FOLDER/ (ending in /) means every file under it
  status             this peer's files, downloads in progress, uploads
  help               this text
  quit               stop unfinished downloads (a later get resumes them),
                     leave the network and exit (Ctrl-C and Ctrl-D too)
FILE is a name (the rest of the line: get my photo.jpg, get 2024),
#NUMBER for a file's number in the last `list` (get #2), or a name in
double quotes, exactly as written (get \" padded.txt\"; \\\" and \\\\ inside).
Several files: numbers and names in quotes (get #1 #4 \"b c.txt\" photos/).";

/// A file named on the command line, or its number in the last list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Number(usize),
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Every file, or those under a folder.
    List(Option<String>),
    Where(Target),
    Get(Vec<Target>),
    Status,
    Help,
    Quit,
}

/// Parses one line. `Ok(None)` for a blank line; `Err` carries the hint to
/// print. Names and numbers never look alike (see `target`).
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim_start();
    // Only the line end goes: spaces before it may be inside quotes.
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim_start()),
        None => (line, ""),
    };
    let word = word.to_ascii_lowercase();
    let bare = |c: Command| {
        if rest.trim().is_empty() {
            Ok(Some(c))
        } else {
            Err(format!("{word} takes nothing after it; type help"))
        }
    };
    match word.as_str() {
        "list" | "ls" => list(rest).map(|p| Some(Command::List(p))),
        "where" => target(&word, rest).map(|t| Some(Command::Where(t))),
        "get" => targets(&word, rest).map(|t| Some(Command::Get(t))),
        "status" => bare(Command::Status),
        "help" | "?" => bare(Command::Help),
        "quit" | "exit" | "leave" => bare(Command::Quit),
        _ => Err(format!(
            "unknown command {word:?}; the commands are list, where, get, status, help, quit"
        )),
    }
}

/// `name` as it must be typed after `get` or `where`: bare, or in quotes
/// when it starts with `#` or `"` or has spaces at either end.
pub fn as_typed(name: &str) -> String {
    let plain = !name.starts_with(['#', '"']) && name.trim() == name && !name.is_empty();
    if plain {
        return name.to_owned();
    }
    let mut s = String::from('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The file a command names. `#` and digits: a number from the last list.
/// A double quote: the name up to the closing quote, exactly (spaces kept;
/// `\"` and `\\` stand for a quote and a backslash). Anything else: the
/// rest of the line without surrounding spaces, as a name, whatever it
/// looks like (so a file named `2` is fetched with `get 2`).
fn target(word: &str, rest: &str) -> Result<Target, String> {
    let rest_trimmed = rest.trim();
    if rest_trimmed.is_empty() {
        return Err(format!(
            "{word} needs a file: {word} NAME, {word} \"NAME\", or {word} #NUMBER from the last list"
        ));
    }
    if let Some(num) = rest_trimmed.strip_prefix('#') {
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "#{num} is not a number from the list; a name starting with # goes in quotes: \
                 {word} \"{rest_trimmed}\""
            ));
        }
        return num
            .parse()
            .map(Target::Number)
            .map_err(|_| format!("#{num} is too large to be a number from the list"));
    }
    if let Some(quoted) = rest.strip_prefix('"') {
        return unquote(quoted).map(Target::Name);
    }
    Ok(Target::Name(rest_trimmed.to_owned()))
}

/// The folder after `list`, if any: the rest of the line, or a name in
/// quotes.
fn list(rest: &str) -> Result<Option<String>, String> {
    let t = rest.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match rest.strip_prefix('"') {
        Some(quoted) => unquote(quoted).map(Some),
        None => Ok(Some(t.to_owned())),
    }
}

/// The files a `get` names: one name as [`target`] reads it, or, when the
/// line starts with `#` or `"`, a list of `#NUMBER`s, names in quotes and
/// words without spaces (`get #1 #4 "b c.txt" photos/`).
fn targets(word: &str, rest: &str) -> Result<Vec<Target>, String> {
    let mut s = rest.trim();
    if !s.starts_with(['#', '"']) {
        return target(word, rest).map(|t| vec![t]);
    }
    let mut v = Vec::new();
    while !s.is_empty() {
        if let Some(quoted) = s.strip_prefix('"') {
            let (name, after) = unquote_one(quoted)?;
            if !after.is_empty() && !after.starts_with(char::is_whitespace) {
                return Err(format!("unexpected {after:?} after the closing quote"));
            }
            v.push(Target::Name(name));
            s = after.trim_start();
            continue;
        }
        let (tok, after) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        v.push(target(word, tok)?);
        s = after.trim_start();
    }
    Ok(v)
}

/// The name inside quotes: `s` starts after the opening quote and must end
/// with the closing one (spaces after it are allowed).
fn unquote(s: &str) -> Result<String, String> {
    let (name, after) = unquote_one(s)?;
    if !after.trim().is_empty() {
        return Err(format!(
            "unexpected {:?} after the closing quote",
            after.trim()
        ));
    }
    Ok(name)
}

/// The name up to the closing quote (`s` starts after the opening one),
/// and what follows the closing quote.
fn unquote_one(s: &str) -> Result<(String, &str), String> {
    let mut name = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok((name, chars.as_str())),
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => name.push(e),
                _ => return Err("inside quotes, \\ goes before \" or \\ only".into()),
            },
            c => name.push(c),
        }
    }
    Err("the name has no closing quote (\")".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Target {
        Target::Name(s.into())
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \n"), Ok(None));
        assert_eq!(parse("list\n"), Ok(Some(Command::List(None))));
        assert_eq!(parse("  LS "), Ok(Some(Command::List(None))));
        assert_eq!(
            parse("list photos/2024 \n"),
            Ok(Some(Command::List(Some("photos/2024".into()))))
        );
        assert_eq!(
            parse("list \" a b/\""),
            Ok(Some(Command::List(Some(" a b/".into()))))
        );
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse("?"), Ok(Some(Command::Help)));
        assert_eq!(parse("quit"), Ok(Some(Command::Quit)));
        assert_eq!(parse("exit"), Ok(Some(Command::Quit)));
        assert_eq!(
            parse("get climbing.jpg"),
            Ok(Some(Command::Get(vec![name("climbing.jpg")])))
        );
        assert_eq!(
            parse("get #2"),
            Ok(Some(Command::Get(vec![Target::Number(2)])))
        );
        assert_eq!(
            parse("get  #2 \n"),
            Ok(Some(Command::Get(vec![Target::Number(2)])))
        );
        assert_eq!(
            parse("where  my photos/bear 1.jpg \r\n"),
            Ok(Some(Command::Where(name("my photos/bear 1.jpg"))))
        );
        assert_eq!(
            parse("where 2a"),
            Ok(Some(Command::Where(name("2a")))),
            "not all digits: a name"
        );
    }

    /// Names and numbers never look alike: a bare word is always a name,
    /// `#N` always a number, quotes keep a name exactly.
    #[test]
    fn names_and_numbers_have_distinct_syntax() {
        assert_eq!(parse("get 2"), Ok(Some(Command::Get(vec![name("2")]))));
        assert_eq!(
            parse("where 2024\r\n"),
            Ok(Some(Command::Where(name("2024"))))
        );
        assert_eq!(parse("get \"2\""), Ok(Some(Command::Get(vec![name("2")]))));
        assert_eq!(
            parse("get \"#2\""),
            Ok(Some(Command::Get(vec![name("#2")])))
        );
        assert_eq!(
            parse("get \"  padded name \"  \n"),
            Ok(Some(Command::Get(vec![name("  padded name ")])))
        );
        assert_eq!(
            parse(r#"get "say \"hi\" \\ bye""#),
            Ok(Some(Command::Get(vec![name(r#"say "hi" \ bye"#)])))
        );
        assert_eq!(
            parse("get a \"b\" c"),
            Ok(Some(Command::Get(vec![name("a \"b\" c")]))),
            "quotes only count at the start"
        );
        assert_eq!(
            parse("get #1  #4 \"b c.txt\" photos/\n"),
            Ok(Some(Command::Get(vec![
                Target::Number(1),
                Target::Number(4),
                name("b c.txt"),
                name("photos/")
            ])))
        );
        assert_eq!(
            parse("get \"a\" \"b\""),
            Ok(Some(Command::Get(vec![name("a"), name("b")])))
        );
        // The help text documents all three forms.
        for form in ["get 2024", "get #2", "double quotes"] {
            assert!(HELP.contains(form), "{form}");
        }
    }

    #[test]
    fn names_are_shown_as_they_must_be_typed() {
        for name in ["a.txt", "my photo.jpg", "#1", " pad ", "say \"hi\"", "a\\b"] {
            let typed = as_typed(name);
            assert_eq!(
                parse(&format!("get {typed}")),
                Ok(Some(Command::Get(vec![Target::Name(name.into())]))),
                "{name:?} typed as {typed}"
            );
        }
        assert_eq!(as_typed("2024"), "2024");
    }

    #[test]
    fn bad_input_gets_a_hint() {
        for (line, hint) in [
            ("frobnicate", "unknown command"),
            ("get", "get needs a file"),
            ("where   ", "where needs a file"),
            ("status now", "takes nothing"),
            ("get #99999999999999999999999", "too large"),
            ("get #", "not a number"),
            ("get #x", "goes in quotes: get \"#x\""),
            ("get \"a", "no closing quote"),
            ("get \"a\"b", "after the closing quote"),
            ("where \"a\" b", "after the closing quote"),
            ("get #1 #x", "goes in quotes: get \"#x\""),
            ("get \"a\\b\"", "inside quotes"),
        ] {
            let e = parse(line).expect_err(line);
            assert!(e.contains(hint), "{line:?}: {e}");
        }
    }
}
