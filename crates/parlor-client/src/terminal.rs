//! Lines in, events out.
//!
//! On a terminal, lines come from `rustyline` (editing and history) and
//! events are printed above the prompt. Otherwise lines are read from stdin
//! as they come, so that scripts and tests can drive the client, and events
//! go to stdout one per line.
//!
//! Reading blocks, so it runs on its own thread, which reads ahead so that
//! nothing typed is lost. It stops after `\quit`: the client exits only
//! after `\quit` or the end of input, so it never exits with the terminal
//! left in the editor's raw mode.

use std::io::{BufRead, IsTerminal};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

use super::command::{self, UserCommand};
use super::event::UserEvent;

const PROMPT: &str = "> ";

pub(crate) struct Lines {
    lines: mpsc::UnboundedReceiver<String>,
}

impl Lines {
    /// The next line, or `None` at the end of input.
    pub(crate) async fn next(&mut self) -> Option<String> {
        self.lines.recv().await
    }
}

pub(crate) enum Printer {
    Stdout {
        json: bool,
    },
    Editor {
        json: bool,
        printer: Box<dyn ExternalPrinter + Send>,
    },
}

impl Printer {
    pub(crate) fn show(&mut self, event: &UserEvent) {
        let (json, editor) = match self {
            Printer::Stdout { json } => (*json, None),
            Printer::Editor { json, printer } => (*json, Some(printer)),
        };
        let line = if json {
            event.to_json()
        } else {
            match event.to_text() {
                Some(text) => text,
                None => return,
            }
        };
        match editor {
            Some(printer) => {
                if printer.print(format!("{line}\n")).is_err() {
                    println!("{line}");
                }
            }
            None => println!("{line}"),
        }
    }
}

/// Starts reading stdin.
pub(crate) fn start(json: bool) -> (Lines, Printer) {
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive {
        if let Ok(mut editor) = DefaultEditor::new() {
            if let Ok(printer) = editor.create_external_printer() {
                let lines = spawn_reader(move || match editor.readline(PROMPT) {
                    Ok(line) => {
                        let _ = editor.add_history_entry(line.as_str());
                        Some(line)
                    }
                    // Ctrl-C and Ctrl-D end the input, like `\quit`.
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) => None,
                    Err(err) => {
                        eprintln!("parlor client: cannot read the terminal: {err}");
                        None
                    }
                });
                let printer = Box::new(printer);
                return (lines, Printer::Editor { json, printer });
            }
        }
    }
    let stdin = std::io::stdin();
    let lines = spawn_reader(move || {
        let mut line = Vec::new();
        match stdin.lock().read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Some(String::from_utf8_lossy(line).into_owned())
            }
        }
    });
    (lines, Printer::Stdout { json })
}

fn spawn_reader(mut read_line: impl FnMut() -> Option<String> + Send + 'static) -> Lines {
    let (line_tx, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Some(line) = read_line() {
            let quit = command::parse(&line) == Ok(Some(UserCommand::Quit));
            if line_tx.send(line).is_err() || quit {
                return;
            }
        }
    });
    Lines { lines }
}
