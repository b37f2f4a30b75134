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

/// The network of an IP address, safe to log: the /24 of an IPv4 address
/// (`203.0.113.0/24`), the /48 of an IPv6 one; `-` for anything else. A full IP is
/// personal data.
pub fn ip_prefix(ip: &str) -> String {
    ip.trim()
        .parse::<std::net::IpAddr>()
        .map_or_else(|_| "-".to_owned(), ip_network)
}

/// [`ip_prefix`] of an address already parsed.
pub fn ip_network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod ip_tests {
    use super::*;

    #[test]
    fn ips_are_truncated() {
        assert_eq!(ip_prefix("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(
            ip_prefix("2001:db8:85a3:8d3:1319:8a2e:370:7348"),
            "2001:db8:85a3::/48"
        );
        assert_eq!(ip_prefix("nonsense"), "-");
    }
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
