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

/// Whether `user_agent` is a known bot or headless browser.
pub fn is_bot(user_agent: &str) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    BOT_USER_AGENT_MARKERS.iter().any(|m| ua.contains(m))
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
}
