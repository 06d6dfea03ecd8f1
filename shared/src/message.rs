//! One-line error messages for the binaries: an error and its causes, each message once.
//!
//! Library errors already include their cause's text, so a cause whose message is already shown
//! is not repeated; line breaks become spaces (invariant 5: a one-line error).

/// The error and its chain of causes on one line, each message once.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let m = err.to_string();
        if !m.is_empty() && !out.contains(&m) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&m);
        }
        cur = err.source();
    }
    out.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\ntext")]
    struct Inner;

    #[test]
    fn causes_once_on_one_line() {
        assert_eq!(one_line(&Outer(Inner)), "outer inner text");
        assert_eq!(one_line(&Inner), "inner text");
    }
}
