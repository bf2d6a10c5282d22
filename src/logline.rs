//! The broker's log writer: one event, one line, whatever text the event carries.
//!
//! The broker escapes what members type before it logs it, but libraries log text a client
//! chose as it is (russh names an unknown channel request in a warning's message), and a
//! newline in it would start a line that looks like the broker's own. The formatter escapes
//! terminal escape sequences in an event's message (not in its other fields, which the
//! broker escapes itself); this writer escapes the other control characters (line breaks
//! above all) in each event it is given, keeping the event's final newline, and passes ESC
//! through for the formatter's own colours.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Makes [`OneLine`] writers around what `W` makes.
pub struct OneLineWriter<W>(pub W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for OneLineWriter<W> {
    type Writer = OneLine<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.0.make_writer())
    }
}

/// Writes each buffer it is given (the formatter gives one whole event per write) as one
/// line: control characters other than ESC and tab are escaped, except a final newline.
pub struct OneLine<W>(W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `event` with its control characters escaped, but for ESC, tab and a final newline.
fn one_line(event: &[u8]) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len());
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x1b | b'\t' => out.push(b),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        let forged = b"WARN unknown channel request x\n2026-12-04T00:00:00Z INFO approved\r\x00\n";
        assert_eq!(
            one_line(forged),
            b"WARN unknown channel request x\\n2026-12-04T00:00:00Z INFO approved\\r\\x00\n"
        );
        // Colour codes and tabs pass; text without a final newline gets none.
        assert_eq!(
            one_line(b"\x1b[33mWARN\x1b[0m\tx"),
            b"\x1b[33mWARN\x1b[0m\tx"
        );
        assert_eq!(one_line(b"caf\xc3\xa9\n"), b"caf\xc3\xa9\n");
    }

    #[test]
    fn the_formatter_writes_each_event_once() {
        // The escaping relies on the formatter giving a whole event per write.
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writes = sink.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(OneLineWriter(move || sink.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("unknown channel request {}", "x\nINFO forged line");
        });
        let writes = writes.lock().unwrap();
        assert_eq!(writes.len(), 1, "{writes:?}");
        let line = String::from_utf8_lossy(&writes[0]);
        assert!(
            line.ends_with("unknown channel request x\\nINFO forged line\n"),
            "{line}"
        );
    }
}
