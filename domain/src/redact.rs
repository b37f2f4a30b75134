//! Scrubbing text that may quote personal data (CRM error messages quote the values
//! they refused) before it reaches an alert or a log.

/// Replaces every email-looking word of `text` with `[email]`.
pub fn emails(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let core = word.trim_matches(|c: char| !c.is_alphanumeric());
        if core.contains('@') && core.split('@').all(|p| !p.is_empty()) {
            out.push_str(&word.replace(core, "[email]"));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || c == '"' || c == '\'' || c == ',' || c == ';' {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts() {
        assert_eq!(
            super::emails("MERGEFAILED: The value u2@example.com is not valid; 'Ana@x.com.br'."),
            "MERGEFAILED: The value [email] is not valid; '[email]'."
        );
        assert_eq!(super::emails("no @ here, a@ b"), "no @ here, a@ b");
    }
}
