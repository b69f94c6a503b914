//! The terminal: reading lines and printing while the user types.
//!
//! When stdin is a terminal, a rustyline editor reads lines on its own thread
//! and everything the client prints goes through rustyline's external
//! printer, so incoming messages appear above the line being typed. When
//! stdin is not a terminal (scripts, pipes, tests), lines are read plainly
//! from stdin, no prompts are shown, and output is written to stdout one
//! flushed line at a time, so the client is scriptable.
//!
//! At a terminal, passwords are not shown: while a secret is read, the
//! editor draws the line as blanks of the same width. Tab completes
//! commands, user names and group ids ([`crate::complete`]).

use std::borrow::Cow;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use rustyline::completion::{Completer, Pair};
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{ColorMode, ExternalPrinter, Helper};
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthStr;

use crate::complete::{complete, SharedWords, Words};

/// One answer from the input side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line, without its terminator.
    Line(String),
    /// End of input (Ctrl-D, or stdin closed).
    Eof,
    /// Ctrl-C at the prompt.
    Interrupted,
}

struct Request {
    prompt: String,
    history: bool,
    secret: bool,
}

/// The line editor's helper: hides the line while a secret is typed, and
/// completes words otherwise.
#[derive(Default)]
struct Masking {
    on: bool,
    words: SharedWords,
}

impl Highlighter for Masking {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if self.on {
            Cow::Owned(" ".repeat(line.width()))
        } else {
            Cow::Borrowed(line)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, kind: CmdKind) -> bool {
        self.on && kind != CmdKind::MoveCursor
    }
}

impl Completer for Masking {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        if self.on {
            return Ok((pos, Vec::new()));
        }
        let words = self.words.lock().map(|w| w.clone()).unwrap_or_default();
        Ok(complete(&line[..pos], &words))
    }
}

impl Hinter for Masking {
    type Hint = String;
}

impl Validator for Masking {}

impl Helper for Masking {}

enum PrintJob {
    Text(String),
    Flush(std_mpsc::Sender<()>),
}

/// Prints lines, above the prompt when one is being edited. Cheap to clone.
#[derive(Clone)]
pub struct Printer {
    tty: Option<std_mpsc::Sender<PrintJob>>,
}

impl Printer {
    /// Prints one line (a trailing newline is added).
    pub fn line(&self, text: impl Into<String>) {
        let mut text = text.into();
        text.push('\n');
        if let Some(tx) = &self.tty {
            match tx.send(PrintJob::Text(text)) {
                Ok(()) => return,
                Err(std_mpsc::SendError(PrintJob::Text(t))) => text = t,
                Err(_) => return,
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// A printer that writes straight to stdout.
    #[cfg(test)]
    pub fn plain_for_tests() -> Printer {
        Printer { tty: None }
    }

    /// Waits (briefly) until everything printed so far is on the screen.
    fn flush(&self) {
        if let Some(tx) = &self.tty {
            let (done_tx, done_rx) = std_mpsc::channel();
            if tx.send(PrintJob::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_millis(500));
            }
        }
    }
}

/// The user's side of the client.
pub struct Ui {
    req: mpsc::UnboundedSender<Request>,
    resp: mpsc::UnboundedReceiver<Input>,
    pending: bool,
    out: Printer,
    interactive: bool,
    words: SharedWords,
}

impl Ui {
    /// Picks the line editor when stdin is a terminal, plain lines otherwise.
    pub fn new() -> Ui {
        if std::io::stdin().is_terminal() {
            match Self::terminal() {
                Ok(ui) => return ui,
                Err(e) => eprintln!("chat: line editing unavailable ({e}); reading plain lines"),
            }
        }
        Self::plain()
    }

    /// True when a person types at a terminal; false for scripts and pipes,
    /// which must fail fast rather than wait at a menu.
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// Sets what Tab completes after a command.
    pub fn set_words(&self, words: Words) {
        if let Ok(mut w) = self.words.lock() {
            if *w != words {
                *w = words;
            }
        }
    }

    /// A printer for output that may arrive at any time.
    pub fn printer(&self) -> Printer {
        self.out.clone()
    }

    fn plain() -> Ui {
        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<Request>();
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let stdin = std::io::stdin();
                let mut buf = Vec::new();
                // One line per request, so nothing is read ahead of need.
                while req_rx.blocking_recv().is_some() {
                    buf.clear();
                    let answer = match stdin.lock().read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => Input::Eof,
                        Ok(_) => {
                            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                                buf.pop();
                            }
                            Input::Line(String::from_utf8_lossy(&buf).into_owned())
                        }
                    };
                    let eof = answer == Input::Eof;
                    if resp_tx.send(answer).is_err() || eof {
                        break;
                    }
                }
            })
            .expect("cannot start the stdin thread");
        Ui {
            req: req_tx,
            resp: resp_rx,
            pending: false,
            out: Printer { tty: None },
            interactive: false,
            words: SharedWords::default(),
        }
    }

    fn terminal() -> Result<Ui, String> {
        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<Request>();
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let (setup_tx, setup_rx) = std_mpsc::channel();
        let words = SharedWords::default();
        let editor_words = words.clone();
        thread::Builder::new()
            .name("readline".into())
            .spawn(move || {
                let config = rustyline::Config::builder()
                    .auto_add_history(false)
                    .max_history_size(1000)
                    .map(|b| b.build());
                let editor = config.and_then(
                    rustyline::Editor::<Masking, rustyline::history::DefaultHistory>::with_config,
                );
                let mut editor = match editor {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = setup_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                // Without an external printer (stdout not a terminal) output
                // is written directly.
                let printer = editor.create_external_printer().ok();
                let _ = setup_tx.send(Ok(printer));
                editor.set_helper(Some(Masking {
                    on: false,
                    words: editor_words,
                }));
                while let Some(r) = req_rx.blocking_recv() {
                    if let Some(h) = editor.helper_mut() {
                        h.on = r.secret;
                    }
                    // The masked line is drawn as a highlight, which needs
                    // colours on even under NO_COLOR.
                    editor.set_color_mode(if r.secret {
                        ColorMode::Forced
                    } else {
                        ColorMode::Enabled
                    });
                    let answer = match editor.readline(&r.prompt) {
                        Ok(line) => {
                            if r.history && !line.trim().is_empty() {
                                let _ = editor.add_history_entry(line.as_str());
                            }
                            Input::Line(line)
                        }
                        Err(ReadlineError::Interrupted) => Input::Interrupted,
                        Err(_) => Input::Eof,
                    };
                    if resp_tx.send(answer).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let printer = setup_rx
            .recv()
            .map_err(|_| "the line editor thread failed".to_string())??;
        let tty = printer.map(|mut p| {
            let (tx, rx) = std_mpsc::channel::<PrintJob>();
            thread::Builder::new()
                .name("printer".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            PrintJob::Text(t) => {
                                if p.print(t.clone()).is_err() {
                                    let mut out = std::io::stdout().lock();
                                    let _ = out.write_all(t.as_bytes());
                                    let _ = out.flush();
                                }
                            }
                            PrintJob::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                })
                .expect("cannot start the printer thread");
            tx
        });
        Ok(Ui {
            req: req_tx,
            resp: resp_rx,
            pending: false,
            out: Printer { tty },
            interactive: true,
            words,
        })
    }

    /// Reads one line, showing `prompt` (at a terminal). Cancel-safe: when
    /// dropped while waiting, the next call gets the same line, whatever its
    /// prompt. `history` says whether the line may go to the editor's history
    /// (not for passwords).
    pub async fn read(&mut self, prompt: &str, history: bool) -> Input {
        self.read_as(prompt, history, false).await
    }

    /// Reads a secret (a password): not shown at a terminal, never kept in
    /// the history. Cancel-safe like [`Ui::read`].
    pub async fn read_secret(&mut self, prompt: &str) -> Input {
        self.read_as(prompt, false, true).await
    }

    async fn read_as(&mut self, prompt: &str, history: bool, secret: bool) -> Input {
        if !self.pending {
            let r = Request {
                prompt: prompt.to_owned(),
                history,
                secret,
            };
            if self.req.send(r).is_err() {
                return Input::Eof;
            }
            self.pending = true;
        }
        let answer = self.resp.recv().await.unwrap_or(Input::Eof);
        self.pending = false;
        answer
    }

    /// True while a line is being read (a prompt is on the screen) whose
    /// answer no one has taken yet.
    pub fn reading(&self) -> bool {
        self.pending
    }

    /// Lets pending output reach the screen before the program exits.
    pub fn finish(self) {
        self.out.flush();
    }
}

/// Makes text from the network safe to print: control characters other than
/// newline and tab are shown escaped, so a message cannot drive the terminal.
pub fn clean(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_terminal_controls() {
        assert_eq!(clean("hi 你好"), "hi 你好");
        assert_eq!(clean("a\nb\tc"), "a\nb\tc");
        assert_eq!(clean("\u{1b}[2Jx"), "\\u{1b}[2Jx");
        assert_eq!(clean("bell\u{7}"), "bell\\u{7}");
    }
}
