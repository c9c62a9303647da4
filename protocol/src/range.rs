//! `Range: bytes=…` requests against an object of known size.

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No (usable) range: the whole object, 200.
    Whole,
    /// Bytes `first..=last`, 206.
    Part {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
    },
    /// Nothing of it can be served, 416.
    Unsatisfiable,
}

/// Parse a single `Range: bytes=…` against `size`. Several ranges, other
/// units and malformed values are ignored (the whole object is served), as
/// HTTP allows. Only HTTP's own whitespace (space, tab) is skipped: a value
/// with any other character, a Unicode space included, is malformed.
pub fn parse(header: Option<&str>, size: u64) -> Range {
    parse_spec(header, size).unwrap_or(Range::Whole)
}

/// `s` without HTTP's optional whitespace around it.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn parse_spec(header: Option<&str>, size: u64) -> Option<Range> {
    let header = header.filter(|h| h.is_ascii())?;
    let spec = trim_ows(header).strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (first, last) = match (trim_ows(a), trim_ows(b)) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 || size == 0 {
                return Some(Range::Unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size.saturating_sub(1)),
        (a, b) => {
            let (first, last) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
            if last < first {
                return None;
            }
            (first, last.min(size.saturating_sub(1)))
        }
    };
    Some(if first >= size { Range::Unsatisfiable } else { Range::Part { first, last } })
}

impl Range {
    /// Bytes the response body carries for an object of `size` bytes.
    pub fn length(&self, size: u64) -> u64 {
        match *self {
            Range::Whole => size,
            Range::Part { first, last } => last - first + 1,
            Range::Unsatisfiable => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        assert_eq!(parse(None, 10), Range::Whole);
        assert_eq!(parse(Some("bytes=0-4"), 10), Range::Part { first: 0, last: 4 });
        assert_eq!(parse(Some("bytes=5-"), 10), Range::Part { first: 5, last: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), Range::Part { first: 7, last: 9 });
        assert_eq!(parse(Some("bytes=8-100"), 10), Range::Part { first: 8, last: 9 });
        assert_eq!(parse(Some("bytes=10-"), 10), Range::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-1"), 0), Range::Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), Range::Whole);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Range::Whole);
        assert_eq!(parse(Some("items=0-1"), 10), Range::Whole);
        assert_eq!(Range::Part { first: 2, last: 4 }.length(10), 3);
        assert_eq!(parse(Some(" bytes=0-4\t"), 10), Range::Part { first: 0, last: 4 });
        // Unicode whitespace is not HTTP's: the whole object, as the tier answers.
        assert_eq!(parse(Some("bytes=0-4\u{a0}"), 10), Range::Whole);
        assert_eq!(parse(Some("\u{2003}bytes=0-4"), 10), Range::Whole);
        assert_eq!(parse(Some("bytes=\u{3000}0-4"), 10), Range::Whole);
    }
}
