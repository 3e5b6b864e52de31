//! The prompt's command language: one line in, one [`Command`] out.
//!
//! Owns: the words, their arguments and the hints for a wrong line, and
//! the help text that documents them. Pure: no I/O, no network.

/// What `help` prints.
pub const HELP: &str = "\
commands:
  list               the files on the network, numbered
  where NAME|NUMBER  which peers hold which chunks of a file
  get NAME|NUMBER    download a file into the shared folder, in the background
  status             this peer's files, downloads in progress, uploads
  help               this text
  quit               stop unfinished downloads (a later get resumes them),
                     leave the network and exit (Ctrl-C and Ctrl-D too)
NUMBER is a file's number in the last `list`.";

/// A file named on the command line, or its number in the last list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Number(usize),
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    List,
    Where(Target),
    Get(Target),
    Status,
    Help,
    Quit,
}

/// Parses one line. `Ok(None)` for a blank line; `Err` carries the hint to
/// print. A file name is the rest of the line (names may contain spaces);
/// all digits means a number from the last list.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let word = word.to_ascii_lowercase();
    let target = || -> Result<Target, String> {
        if rest.is_empty() {
            return Err(format!(
                "{word} needs a file: {word} NAME, or {word} NUMBER from the last list"
            ));
        }
        if rest.bytes().all(|b| b.is_ascii_digit()) {
            return rest
                .parse()
                .map(Target::Number)
                .map_err(|_| format!("{rest} is too large to be a number from the list"));
        }
        Ok(Target::Name(rest.to_owned()))
    };
    let bare = |c: Command| {
        if rest.is_empty() {
            Ok(Some(c))
        } else {
            Err(format!("{word} takes nothing after it; type help"))
        }
    };
    match word.as_str() {
        "list" | "ls" => bare(Command::List),
        "where" => target().map(|t| Some(Command::Where(t))),
        "get" => target().map(|t| Some(Command::Get(t))),
        "status" => bare(Command::Status),
        "help" | "?" => bare(Command::Help),
        "quit" | "exit" | "leave" => bare(Command::Quit),
        _ => Err(format!(
            "unknown command {word:?}; the commands are list, where, get, status, help, quit"
        )),
    }
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
        assert_eq!(parse("list\n"), Ok(Some(Command::List)));
        assert_eq!(parse("  LS "), Ok(Some(Command::List)));
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse("?"), Ok(Some(Command::Help)));
        assert_eq!(parse("quit"), Ok(Some(Command::Quit)));
        assert_eq!(parse("exit"), Ok(Some(Command::Quit)));
        assert_eq!(
            parse("get climbing.jpg"),
            Ok(Some(Command::Get(name("climbing.jpg"))))
        );
        assert_eq!(parse("get 2"), Ok(Some(Command::Get(Target::Number(2)))));
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

    #[test]
    fn bad_input_gets_a_hint() {
        for (line, hint) in [
            ("frobnicate", "unknown command"),
            ("get", "get needs a file"),
            ("where   ", "where needs a file"),
            ("list everything", "takes nothing"),
            ("get 99999999999999999999999", "too large"),
        ] {
            let e = parse(line).expect_err(line);
            assert!(e.contains(hint), "{line:?}: {e}");
        }
    }
}
