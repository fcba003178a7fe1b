//! Printing an error with its causes, for logs, reports and the binary's exit message.
//!
//! Errors keep their cause as a typed `source()` and leave it out of their own message
//! (`"cannot open a stream to {peer}"`, its `OpenStreamError` as the source), so a plain `{}`
//! shows only the outermost context. Where an error reaches an operator it is printed with
//! [`chain`]: the message, then each cause, separated by `": "`.

use std::error::Error;
use std::fmt;

/// `error` and its chain of sources, for `{}`: `"outer: cause: root cause"`.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// An error displayed with its sources (see [`chain`]).
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            // Some errors (libp2p's among them) also end their own message with their cause's:
            // that cause is not printed twice.
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("root cause")]
    struct Root;

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] Root);

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("outer")]
        Context(#[source] Middle),
        #[error("inline: {0}")]
        Inline(#[source] Middle),
        #[error(transparent)]
        Transparent(Middle),
    }

    #[test]
    fn prints_every_cause_once() {
        let context = Outer::Context(Middle(Root));
        assert_eq!(chain(&context).to_string(), "outer: middle: root cause");
        // A cause already at the end of its parent's message is not repeated.
        let inline = Outer::Inline(Middle(Root));
        assert_eq!(chain(&inline).to_string(), "inline: middle: root cause");
        let transparent = Outer::Transparent(Middle(Root));
        assert_eq!(chain(&transparent).to_string(), "middle: root cause");
        assert_eq!(chain(&Root).to_string(), "root cause");
    }
}
