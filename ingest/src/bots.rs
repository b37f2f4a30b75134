//! Known bots and headless browsers, by `User-Agent`: their events are answered 202,
//! counted, and not stored (the same idea as RudderStack's bot filter).

/// Lower-case substrings of user agents that are not shoppers.
pub const BOT_USER_AGENT_MARKERS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "slurp",
    "headlesschrome",
    "headless",
    "phantomjs",
    "lighthouse",
    "pingdom",
    "uptimerobot",
    "facebookexternalhit",
    "bingpreview",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "scrapy",
    "puppeteer",
    "playwright",
    "selenium",
    "webdriver",
    "wget",
];

/// The markers as one automaton: a browser's user agent (~130 bytes) is read once,
/// without lower-casing a copy, instead of once per marker.
static MARKERS: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
    std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(BOT_USER_AGENT_MARKERS)
            .ok()
    });

/// Whether `user_agent` is a known bot or headless browser.
pub fn is_bot(user_agent: &str) -> bool {
    match MARKERS.as_ref() {
        Some(markers) => markers.is_match(user_agent),
        // The markers are constants: building cannot fail; if it did, the slow way.
        None => {
            let ua = user_agent.to_ascii_lowercase();
            BOT_USER_AGENT_MARKERS.iter().any(|m| ua.contains(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_and_shoppers() {
        assert!(is_bot(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        ));
        assert!(is_bot(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36"
        ));
        assert!(is_bot("python-requests/2.31.0"));
        assert!(!is_bot(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
        ));
        assert!(!is_bot(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
        ));
        assert!(!is_bot("curl/8.5.0"));
    }

    #[test]
    fn the_automaton_answers_as_a_search_per_marker() {
        let slow = |ua: &str| {
            let ua = ua.to_ascii_lowercase();
            BOT_USER_AGENT_MARKERS.iter().any(|m| ua.contains(m))
        };
        let mut agents: Vec<String> = vec![
            String::new(),
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36".into(),
            "Mozilla/5.0 (Linux; Android 14) Ünïcödé/1.0 Mobile Safari".into(),
            "ROBOT".into(),
            "b o t".into(),
        ];
        for m in BOT_USER_AGENT_MARKERS {
            agents.push((*m).to_owned());
            agents.push(m.to_ascii_uppercase());
            agents.push(format!("Mozilla/5.0 (compatible; x{m}y/1.0)"));
            agents.push(m[..m.len() - 1].to_owned());
        }
        for ua in &agents {
            assert_eq!(is_bot(ua), slow(ua), "{ua}");
        }
    }
}
