//! The prompt's command language: one line in, one [`Command`] out.
//!
//! Owns: the words, their arguments and the hints for a wrong line, and
//! the help text that documents them. Pure: no I/O, no network. A content
//! id (`get FILE --id ID`) is read by the command line's parser
//! ([`crate::ui::args`]) and refused for several files with `peer get`'s
//! message ([`crate::ui::get`]), so the prompt and `peer get` agree.

use crate::chunks::ContentId;
use crate::peer::download::batch::is_folder;
use crate::ui::args::parse_content_id;
use crate::ui::get::ID_ONE_FILE;

/// What `help` prints.
pub const HELP: &str = "\
commands:
  list [FOLDER]      the files on the network (or under FOLDER), numbered
  where FILE         which peers hold which chunks of a file
  get FILE...        download files into the shared folder, in the background;
                     FOLDER/ (ending in /) means every file under it
  get FILE --id ID   download FILE only if its content id is ID (40 hex digits,
                     as `peer list --long` shows); other content is refused
                     and nothing is written. One file, not a folder
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
    /// Files to download and, for one file, the content id it must have.
    Get {
        targets: Vec<Target>,
        id: Option<ContentId>,
    },
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
        "get" => get(&word, rest).map(Some),
        "status" => bare(Command::Status),
        "help" | "?" => bare(Command::Help),
        "quit" | "exit" | "leave" => bare(Command::Quit),
        _ => Err(format!(
            "unknown command {word:?}; the commands are list, where, get, status, help, quit"
        )),
    }
}

/// `name` as it must be typed after `get` or `where`: bare, or in quotes
/// when it starts with `#` or `"`, has spaces at either end or has a word
/// `--id` (which a bare `get` line would take for the option).
pub fn as_typed(name: &str) -> String {
    let plain = !name.starts_with(['#', '"'])
        && name.trim() == name
        && !name.is_empty()
        && !name.split_whitespace().any(|w| w == ID_OPTION);
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

/// The `get` line that fetches `name` (pinned to `id` if given), as the
/// user would type it: for hints such as "type get ... to resume".
pub fn get_line(name: &str, id: Option<ContentId>) -> String {
    match id {
        Some(id) => format!("get {} {ID_OPTION} {id}", as_typed(name)),
        None => format!("get {}", as_typed(name)),
    }
}

/// The option of `get` that pins a file's content.
const ID_OPTION: &str = "--id";

/// `get`'s files and its `--id ID`, which may come before or after them
/// (`get --id ID #3`, `get my photo.jpg --id ID`).
fn get(word: &str, rest: &str) -> Result<Command, String> {
    let (id, rest) = match leading_id(rest.trim())? {
        Some((id, after)) => (Some(id), after),
        None => (None, rest),
    };
    let (targets, later) = targets(word, rest)?;
    let id = match (id, later) {
        (Some(_), Some(_)) => return Err(format!("{ID_OPTION} is given twice")),
        (id, later) => id.or(later),
    };
    let id = id.map(parse_content_id).transpose()?;
    let one_file = match targets.as_slice() {
        [Target::Name(n)] => !is_folder(n),
        [Target::Number(_)] => true,
        _ => false,
    };
    if id.is_some() && !one_file {
        return Err(ID_ONE_FILE.into());
    }
    Ok(Command::Get { targets, id })
}

/// `--id ID` at the start of `s` (a word of its own: `--idea.txt` is a
/// name): the id as typed and what follows it.
fn leading_id(s: &str) -> Result<Option<(&str, &str)>, String> {
    let Some(after) = s.strip_prefix(ID_OPTION) else {
        return Ok(None);
    };
    if !after.is_empty() && !after.starts_with(char::is_whitespace) {
        return Ok(None);
    }
    let after = after.trim_start();
    if after.is_empty() {
        return Err(id_missing());
    }
    let (id, rest) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
    Ok(Some((id, rest.trim_start())))
}

/// `--id ID` as the last two words of a bare name line: the name before
/// it and the id as typed.
fn trailing_id(s: &str) -> Result<Option<(&str, &str)>, String> {
    let ends_with_option = |t: &str| {
        t.strip_suffix(ID_OPTION)
            .is_some_and(|b| b.is_empty() || b.ends_with(char::is_whitespace))
    };
    if ends_with_option(s) {
        return Err(id_missing());
    }
    let Some((before, id)) = s.rsplit_once(char::is_whitespace) else {
        return Ok(None);
    };
    let before = before.trim_end();
    if !ends_with_option(before) {
        return Ok(None);
    }
    let name = before.strip_suffix(ID_OPTION).unwrap_or(before).trim_end();
    Ok(Some((name, id)))
}

/// The hint for an `--id` without an id after it.
fn id_missing() -> String {
    format!(
        "{ID_OPTION} needs a content id (40 hex digits, as `peer list --long` shows): \
         get FILE {ID_OPTION} ID; a name with the word {ID_OPTION} in it goes in quotes"
    )
}

/// The hint for an `--id` in the middle of a name.
fn id_misplaced() -> String {
    format!(
        "{ID_OPTION} goes before or after the file: get FILE {ID_OPTION} ID; a name with the \
         word {ID_OPTION} in it goes in quotes"
    )
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

/// The files a `get` names, and the id of an `--id ID` among or after
/// them: one name as [`target`] reads it (an `--id ID` at its end taken
/// off), or, when the line starts with `#` or `"`, a list of `#NUMBER`s,
/// names in quotes and words without spaces (`get #1 #4 "b c.txt"
/// photos/`), an `--id ID` anywhere among them.
fn targets<'a>(word: &str, rest: &'a str) -> Result<(Vec<Target>, Option<&'a str>), String> {
    let mut s = rest.trim();
    if !s.starts_with(['#', '"']) {
        let (name, id) = match trailing_id(s)? {
            Some((name, id)) => (name, Some(id)),
            None => (rest, None),
        };
        // Not a name: most likely an option in the wrong place.
        if name.split_whitespace().any(|w| w == ID_OPTION) {
            return Err(id_misplaced());
        }
        return target(word, name).map(|t| (vec![t], id));
    }
    let (mut v, mut id) = (Vec::new(), None);
    while !s.is_empty() {
        if let Some((given, after)) = leading_id(s)? {
            if id.replace(given).is_some() {
                return Err(format!("{ID_OPTION} is given twice"));
            }
            s = after;
            continue;
        }
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
    Ok((v, id))
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

    fn gets(targets: Vec<Target>) -> Command {
        Command::Get { targets, id: None }
    }

    fn pinned(t: Target, id: &str) -> Result<Option<Command>, String> {
        Ok(Some(Command::Get {
            targets: vec![t],
            id: Some(ContentId::parse(id).unwrap()),
        }))
    }

    const ID: &str = "7ee56b99404705e8bc4bf98e582b92588daa2c55";

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
            Ok(Some(gets(vec![name("climbing.jpg")])))
        );
        assert_eq!(parse("get #2"), Ok(Some(gets(vec![Target::Number(2)]))));
        assert_eq!(parse("get  #2 \n"), Ok(Some(gets(vec![Target::Number(2)]))));
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
        assert_eq!(parse("get 2"), Ok(Some(gets(vec![name("2")]))));
        assert_eq!(
            parse("where 2024\r\n"),
            Ok(Some(Command::Where(name("2024"))))
        );
        assert_eq!(parse("get \"2\""), Ok(Some(gets(vec![name("2")]))));
        assert_eq!(parse("get \"#2\""), Ok(Some(gets(vec![name("#2")]))));
        assert_eq!(
            parse("get \"  padded name \"  \n"),
            Ok(Some(gets(vec![name("  padded name ")])))
        );
        assert_eq!(
            parse(r#"get "say \"hi\" \\ bye""#),
            Ok(Some(gets(vec![name(r#"say "hi" \ bye"#)])))
        );
        assert_eq!(
            parse("get a \"b\" c"),
            Ok(Some(gets(vec![name("a \"b\" c")]))),
            "quotes only count at the start"
        );
        assert_eq!(
            parse("get #1  #4 \"b c.txt\" photos/\n"),
            Ok(Some(gets(vec![
                Target::Number(1),
                Target::Number(4),
                name("b c.txt"),
                name("photos/")
            ])))
        );
        assert_eq!(
            parse("get \"a\" \"b\""),
            Ok(Some(gets(vec![name("a"), name("b")])))
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
                Ok(Some(gets(vec![Target::Name(name.into())]))),
                "{name:?} typed as {typed}"
            );
        }
        assert_eq!(as_typed("2024"), "2024");
    }

    /// `get FILE --id ID`: the id before or after one file, a name with
    /// spaces, a quoted name or a #NUMBER, either case of hex digits.
    #[test]
    fn get_takes_a_content_id() {
        let upper = ID.to_uppercase();
        for (line, t) in [
            (format!("get photo.jpg --id {ID}"), name("photo.jpg")),
            (
                format!("get  my photo.jpg  --id  {ID} \n"),
                name("my photo.jpg"),
            ),
            (format!("get --id {ID} my photo.jpg"), name("my photo.jpg")),
            (format!("get #3 --id {ID}"), Target::Number(3)),
            (format!("get --id {upper} #3\r\n"), Target::Number(3)),
            (format!("get \" a --id b\" --id {ID}"), name(" a --id b")),
            (format!("get --id {ID} \"--id\""), name("--id")),
            (format!("get --idea.txt --id {ID}"), name("--idea.txt")),
            (
                format!("get sub/f.bin --idx --id {ID}"),
                name("sub/f.bin --idx"),
            ),
        ] {
            assert_eq!(parse(&line), pinned(t, ID), "{line:?}");
        }
        // Not the option: part of a name.
        assert_eq!(
            parse("get --idea.txt"),
            Ok(Some(gets(vec![name("--idea.txt")])))
        );
        // The help text says how.
        assert!(HELP.contains("get FILE --id ID"), "{HELP}");
    }

    /// What `get_line` writes (the hints that say how to resume) is read
    /// back as the same file and id, whatever the name.
    #[test]
    fn get_lines_read_back_as_the_same_command() {
        let id = ContentId::parse(ID).unwrap();
        for n in [
            "a.txt",
            "my photo.jpg",
            "#1",
            " pad ",
            "say \"hi\"",
            "a\\b",
            "2024",
            "--id",
            "x --id",
            "--id x",
            "a --id b",
            "--idea",
            "folder/f",
        ] {
            for pin in [None, Some(id)] {
                let line = get_line(n, pin);
                assert_eq!(
                    parse(&line),
                    Ok(Some(Command::Get {
                        targets: vec![name(n)],
                        id: pin
                    })),
                    "{n:?} as {line}"
                );
            }
        }
        assert_eq!(get_line("a b", Some(id)), format!("get a b --id {ID}"));
    }

    /// `--id` pins one file: several files, a folder, a missing or twice
    /// given id, or one that is not 40 hex digits are refused, with the
    /// command line's messages.
    #[test]
    fn get_refuses_a_content_id_it_cannot_use() {
        for (line, hint) in [
            (format!("get #1 #2 --id {ID}"), ID_ONE_FILE),
            (format!("get --id {ID} \"a\" \"b\""), ID_ONE_FILE),
            (format!("get photos/ --id {ID}"), ID_ONE_FILE),
            (format!("get \"photos/\" --id {ID}"), ID_ONE_FILE),
            (format!("get --id {ID} photos/2024/"), ID_ONE_FILE),
            ("get a.txt --id".into(), "needs a content id"),
            ("get a b --id".into(), "goes in quotes"),
            ("get --id".into(), "needs a content id"),
            ("get #1 --id".into(), "needs a content id"),
            (format!("get --id {ID}"), "get needs a file"),
            (
                format!("get a --id {ID} b"),
                "goes before or after the file",
            ),
            (format!("get --id {ID} a --id {ID}"), "given twice"),
            (format!("get #1 --id {ID} --id {ID}"), "given twice"),
            ("get a.txt --id 12ab".into(), "not 40 hex digits"),
            (format!("get a.txt --id {ID}0"), "not 40 hex digits"),
            (format!("get #1 --id +{}", &ID[1..]), "not 40 hex digits"),
        ] {
            let e = parse(&line).expect_err(&line);
            assert!(e.contains(hint), "{line:?}: {e}");
        }
        // The very same message as `peer get NAME... --id ID`.
        assert_eq!(
            parse(&format!("get #1 #2 --id {ID}")),
            Err(ID_ONE_FILE.to_string())
        );
        assert_eq!(
            parse("get a --id 12ab"),
            Err(parse_content_id("12ab").unwrap_err())
        );
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
