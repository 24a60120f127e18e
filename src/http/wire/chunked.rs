//! Following a chunked request body to its end, to find where the next head starts.
//!
//! The states and what each accepts are actix-http's (`h1/chunked.rs`), so the end found
//! here is the end actix-http finds. Bytes it would refuse make [`Chunked::advance`] answer
//! [`Step::Lost`]: the connection is then passed through unwatched and actix-http reports
//! the error as it always has.

/// Where in a chunked body the bytes so far have led.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeFirst,
    SizeRest,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// The chunk size being read, then the data bytes still to come.
    size: u64,
}

/// What [`Chunked::advance`] found in the bytes given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every byte belongs to the body, which goes on.
    More,
    /// The body ends after this many bytes.
    Done(usize),
    /// Not chunked framing actix-http accepts.
    Lost,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::SizeFirst,
            size: 0,
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

impl Chunked {
    pub fn advance(&mut self, bytes: &[u8]) -> Step {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Data {
                let take = self.size.min((bytes.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::SizeFirst, b) => match hex(b) {
                    Some(d) => {
                        self.size = d;
                        State::SizeRest
                    }
                    None => return Step::Lost,
                },
                (State::SizeRest, b'\t' | b' ') => State::SizeLws,
                (State::SizeRest, b';') => State::Extension,
                (State::SizeRest, b'\r') => State::SizeLf,
                (State::SizeRest, b) => {
                    match (hex(b), self.size.checked_mul(16)) {
                        (Some(d), Some(n)) => self.size = n + d,
                        _ => return Step::Lost,
                    }
                    State::SizeRest
                }
                (State::SizeLws, b'\t' | b' ') => State::SizeLws,
                (State::SizeLws, b';') => State::Extension,
                (State::SizeLws, b'\r') => State::SizeLf,
                (State::SizeLws, _) => return Step::Lost,
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, 0x00..=0x08 | 0x0a..=0x1f | 0x7f) => return Step::Lost,
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') if self.size > 0 => State::Data,
                (State::SizeLf, b'\n') => State::EndCr,
                (State::SizeLf, _) => return Step::Lost,
                (State::Data, _) => unreachable!("data is skipped above"),
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr, _) => return Step::Lost,
                (State::DataLf, b'\n') => State::SizeFirst,
                (State::DataLf, _) => return Step::Lost,
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::Trailer, _) => State::Trailer,
                (State::TrailerLf, b'\n') => State::EndCr,
                (State::TrailerLf, _) => return Step::Lost,
                (State::EndCr, b'\r') => State::EndLf,
                (State::EndCr, _) => State::Trailer,
                (State::EndLf, b'\n') => {
                    *self = Chunked::default();
                    return Step::Done(i);
                }
                (State::EndLf, _) => return Step::Lost,
            };
        }
        Step::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of every size from 1 up and checks the end is found at `end`.
    fn ends_at(body: &[u8], end: Option<usize>) {
        for piece in 1..=body.len().max(1) {
            let mut c = Chunked::default();
            let mut found = None;
            let mut at = 0;
            for part in body.chunks(piece) {
                match c.advance(part) {
                    Step::More => at += part.len(),
                    Step::Done(n) => {
                        found = Some(at + n);
                        break;
                    }
                    Step::Lost => panic!("lost in {body:?} with pieces of {piece}"),
                }
            }
            assert_eq!(found, end, "{body:?} in pieces of {piece}");
        }
    }

    #[test]
    fn finds_the_end() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1";
        ends_at(body, Some(body.len() - "GET / HTTP/1.1".len()));
        let body = b"3 \r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nnext";
        ends_at(body, Some(body.len() - 4));
        ends_at(b"0\r\n\r\n", Some(5));
        ends_at(b"ff\r\n", None);
    }

    #[test]
    fn loses_what_actix_http_refuses() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloX", b"5 5\r\n", b"5\rX", b"1\x01"] {
            assert_eq!(Chunked::default().advance(bad), Step::Lost, "{bad:?}");
        }
        let over = b"fffffffffffffffff\r\n";
        assert_eq!(Chunked::default().advance(over), Step::Lost);
    }
}
